"""A canary key must appear in no output channel: results, exceptions (their str, repr and a
traceback with locals), log lines, spans, events, transcripts and the CLI. The simulator is set
to quote the key in its 401 message, as some OpenAI-compatible servers and proxies do."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentloop import Agent, AuthenticationError, KimiModel, tool
from agentloop._secret import Secret, SecretHeaders, redact
from agentloop.errors import ConfigurationError
from agentloop.models.base import ModelRequest, assemble
from agentloop.transcript import TranscriptWriter, event_to_dict

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
CANARY = "sk-canary-7f3a9c2e51d04b8e"


@tool
def lookup(query: str) -> str:
    """Look it up.

    Args:
        query: what.
    """
    return query


def canary_model(base_url: str) -> KimiModel:
    return KimiModel(api_key=CANARY, base_url=base_url, rpm=None)


async def test_a_key_the_server_echoes_reaches_no_output(
    sim_factory: SimFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await sim_factory(echo_key=True)
    model = canary_model(sim.base_url)
    # the raw exception, and a traceback with every frame's locals
    with pytest.raises(AuthenticationError) as raised:
        await assemble(model.stream(ModelRequest([{"role": "user", "content": "hi"}])))
    error = raised.value
    assert "Incorrect API key provided: [redacted key]" in str(error)
    rendered = "".join(
        traceback.TracebackException.from_exception(error, capture_locals=True).format()
    )
    assert "self =" in rendered  # the locals were rendered
    assert CANARY not in rendered and CANARY not in repr(error)
    # a run: its result, its events, its transcript and the log
    transcript = tmp_path / "run.jsonl"
    caplog.set_level(logging.DEBUG)
    events = []
    with TranscriptWriter(str(transcript)) as writer:
        async with Agent(model, tools=[lookup]).stream("go") as run:
            async for event in run:
                events.append(event)
                writer.write(event)
    result = run.result
    assert result is not None and result.stop_reason == "error"
    assert "[redacted key]" in (result.error or "")
    channels = {
        "result": repr(result),
        "events": json.dumps([event_to_dict(e) for e in events]),
        "transcript": transcript.read_text(),
        "log": caplog.text,
        "model": repr(model) + str(model.__dict__),
    }
    for name, text in channels.items():
        assert CANARY not in text, name
    # the key does go out where it must: in the request's Authorization header
    assert sim.stats.requests >= 2


async def test_the_key_reaches_no_span(sim_factory: SimFactory) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sim = await sim_factory(echo_key=True)
    result = await Agent(canary_model(sim.base_url)).run("go")
    assert result.stop_reason == "error"
    spans = exporter.get_finished_spans()
    assert spans
    dump = json.dumps(
        [
            {"attrs": dict(s.attributes or {}), "status": s.status.description, "name": s.name}
            for s in spans
        ]
    )
    assert CANARY not in dump


def test_the_cli_never_prints_the_key() -> None:
    from agentloop.sim import SimConfig, SimServer

    with SimServer(SimConfig(echo_key=True)).run_in_thread() as sim:
        env = {**os.environ, "MOONSHOT_API_KEY": CANARY, "MOONSHOT_BASE_URL": sim.base_url}
        for mode in ("--plain", "--json"):
            done = subprocess.run(
                [sys.executable, "-m", "agentloop.cli", "run", "go", mode],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr  # a rejected key is configuration
            assert "[redacted key]" in done.stdout + done.stderr
            assert CANARY not in done.stdout + done.stderr


def test_a_secret_shows_nothing_of_itself() -> None:
    secret = Secret(CANARY)
    headers = SecretHeaders({"Accept": "text/event-stream"}, secret)
    assert CANARY not in repr(secret) + str(secret) + repr(headers) + str(headers)
    assert dict(headers)["Authorization"] == f"Bearer {CANARY}"  # what the transport reads
    assert headers.pairs() == list(dict(headers).items())  # the same, in one call
    assert SecretHeaders({"A": "b"}, None).pairs() == [("A", "b")]
    assert redact(f"bad key {CANARY}!") == "bad key [redacted key]!"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


@pytest.mark.parametrize("key", [f"{CANARY}\n", f"  {CANARY}\t"])
def test_a_key_read_with_surrounding_whitespace_is_stripped(key: str) -> None:
    assert dict(KimiModel(api_key=key)._headers)["Authorization"] == f"Bearer {CANARY}"


@pytest.mark.parametrize("key", [f"{CANARY[:6]}\n{CANARY[6:]}", f"{CANARY}\x00", f"{CANARY}é"])
def test_a_key_no_http_library_would_send_is_refused_without_showing_it(key: str) -> None:
    """httpx2 refuses such a header later in an error that quotes it, key and all (found in
    review): the model client refuses it first, naming nothing of it."""
    with pytest.raises(ConfigurationError) as caught:
        KimiModel(api_key=key)
    assert CANARY[:8] not in str(caught.value) + repr(caught.value)
