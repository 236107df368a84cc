"""``agentloop sim --profile NAME``: the simulator answers as another server (issue 13)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from agentloop.sim.profiles import PROFILES


def start(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """``agentloop sim --port 0 ARGS`` in a child: the process, its URL and its banner line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agentloop.cli", "sim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
    if match is None:
        process.kill()
        raise AssertionError(f"agentloop sim printed {line!r}: {process.communicate()[1]}")
    return process, match.group(1), line


@pytest.fixture
def llamacpp_sim() -> Iterator[tuple[str, str]]:
    process, url, banner = start("--profile", "llamacpp", "--policy", "echo")
    try:
        yield url, banner
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


def streamed(url: str, model: str) -> list[dict[str, object]]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 32,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        f"{url}/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer anything"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read().decode()
    assert raw.rstrip().endswith("data: [DONE]")
    return [
        json.loads(line[6:])
        for line in raw.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_the_llamacpp_profile_sends_no_usage_in_a_stream(llamacpp_sim: tuple[str, str]) -> None:
    url, banner = llamacpp_sim
    assert "profile llamacpp" in banner and "(llamacpp)" in banner
    chunks = streamed(url, "whatever-it-is-called")  # llama.cpp serves its one model by any name
    text = "".join(
        str(choice["delta"].get("content") or "")  # type: ignore[attr-defined]
        for chunk in chunks
        for choice in chunk["choices"]  # type: ignore[attr-defined]
    )
    assert text == "echo: hello"
    assert chunks and not any(chunk.get("usage") for chunk in chunks)


def test_the_default_profile_is_kimi_and_streams_usage() -> None:
    process, url, banner = start("--policy", "echo", "--key", "sk-sim")
    try:
        assert banner.startswith("Kimi API simulator on") and "profile kimi" in banner
        body = {
            "model": "kimi-k2.6",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 32,
            "stream": True,
            "thinking": {"type": "disabled"},
        }
        request = urllib.request.Request(
            f"{url}/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": "Bearer sk-sim"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read().decode()
        assert '"prompt_tokens"' in raw
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


def test_an_unknown_profile_is_refused_with_the_known_ones() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentloop.cli", "sim", "--profile", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--profile" in done.stderr and all(name in done.stderr for name in PROFILES)
