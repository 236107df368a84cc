"""The documentation cannot rot: every Python block of the README and docs/ runs verbatim as a
script, the README's numbers match the code and the recorded benchmarks, and the tests say what
is missing when the shared folder is.

Each block is written to a file and run by a fresh interpreter, exactly as a reader would run it,
against ``agentloop sim`` (started the way the README says) through ``MOONSHOT_API_KEY`` and
``MOONSHOT_BASE_URL``, in a folder holding a copy of this repository's ``docs/`` (the README's
blocks run from the checkout). Shell blocks are the CI script's own commands (install, test) and
the CLI, which tests/test_cli.py runs as subprocesses.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentloop import Budget, KimiModel, OpenAIModel, RetryPolicy, tool
from agentloop import context as context_module
from agentloop import tools as tools_module

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
AGENTLOOP = str(Path(sys.executable).with_name("agentloop"))


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def section(title: str) -> str:
    """The README's ``## title`` section."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


BLOCKS = [
    pytest.param(path, number, id=f"{path.name}[{number + 1}]")
    for path in DOCS
    for number in range(len(python_blocks(path)))
]


def test_the_docs_have_python_blocks() -> None:
    assert len(python_blocks(README)) >= 3
    assert python_blocks(ROOT / "docs" / "transcripts.md")


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """``agentloop sim`` as the README starts it (on a free port)."""
    process = subprocess.Popen([AGENTLOOP, "sim", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://\S+/v1)", line)
        assert match, f"agentloop sim printed {line!r}"
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(("path", "number"), BLOCKS)
def test_every_python_block_runs_as_a_script(
    path: Path, number: int, sim_url: str, tmp_path: Path
) -> None:
    """Verbatim, in a fresh interpreter: top-level ``await`` or an undefined name fails here."""
    script = tmp_path / "block.py"
    script.write_text(python_blocks(path)[number])
    work = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", work / "docs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONSHOT_", "AGENTLOOP_"))}
    env |= {"MOONSHOT_API_KEY": "sk-sim", "MOONSHOT_BASE_URL": sim_url}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{path.name} block {number + 1}:\n{done.stderr[-3000:]}"


def test_the_readme_says_how_to_point_the_blocks_at_the_simulator() -> None:
    embedding = section("Embedding")
    assert "agentloop sim --port 8765" in embedding
    assert "MOONSHOT_API_KEY=sk-sim MOONSHOT_BASE_URL=http://127.0.0.1:8765/v1" in embedding


# -- numbers in the README come from the code --------------------------------------------------


def _default(fn: object, name: str) -> object:
    return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]


def test_the_context_list_the_readme_calls_the_default_is_the_default() -> None:
    text = section("Context management")
    assert "That list is the default" in text
    listed = re.search(r"context=(\[.*?\]),\n\)", text, re.DOTALL)
    assert listed, "no context=[...] in the Context management block"
    strategies = eval(listed.group(1), vars(context_module))
    assert strategies == context_module.default_strategies()


def test_the_browsecomp_comment_matches_the_preset() -> None:
    comment = re.search(
        r'Budget\.preset\("browsecomp"\),\s*# (\d+)K per step, (\d+)K total, '
        r"(\d+) steps",
        section("Context management"),
    )
    assert comment
    preset = Budget.preset("browsecomp")
    assert (preset.per_step_tokens, preset.total_tokens, preset.max_steps) == (
        int(comment[1]) * 1000,
        int(comment[2]) * 1000,
        int(comment[3]),
    )


def test_the_batch_task_count_is_the_examples_default() -> None:
    tree = ast.parse((ROOT / "examples" / "batch.py").read_text())
    default = next(
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "--tasks"
        for kw in node.keywords
        if kw.arg == "default" and isinstance(kw.value, ast.Constant)
    )
    claimed = re.findall(r"`examples/batch\.py` \((\d+) tasks", section("Examples"))
    assert claimed == [str(default)]


def _cost_gap() -> str:
    card = KimiModel(api_key="sk-x", base_url="http://x/v1").rate_card
    assert card is not None
    return f"{card.input_per_m - card.cached_input_per_m:.2f} $/M"


def _cached_share() -> str:
    card = KimiModel(api_key="sk-x", base_url="http://x/v1").rate_card
    assert card is not None
    return {6: "a sixth"}.get(round(card.input_per_m / card.cached_input_per_m), "?")


@tool
def _probe(x: int) -> int:
    """Probe.

    Args:
        x: a number.
    """
    return x


CLAIMS = {
    "thinking floor": lambda: (
        f"floor {KimiModel.thinking_floor:,}, default {_default(KimiModel, 'max_tokens'):,}"
    ),
    "counts the floor": lambda: f"so agentloop counts {KimiModel.thinking_floor:,}",
    "per-step default": lambda: f"({_default(KimiModel, 'max_tokens') // 1000}K for Kimi)",
    "tool timeout": lambda: f"({_probe.timeout_s:.0f} s by default",
    "max_failures": lambda: f"max_failures={_probe.max_failures})",
    "argument caps": lambda: (
        f"over {tools_module.MAX_ARGUMENT_CHARS:,} characters or nested over "
        f"{tools_module.MAX_ARGUMENT_DEPTH} levels"
    ),
    "default rpm": lambda: f"default {_default(KimiModel, 'rpm')} RPM",
    "kimi idle": lambda: f"{_default(KimiModel, 'idle_timeout'):.0f} s idle",
    "kimi first byte": lambda: (
        f"{_default(KimiModel, 'first_byte_timeout'):.0f} s to the first data"
    ),
    "openai timeouts": lambda: (
        "`OpenAIModel`: "
        f"{OpenAIModel('m', base_url='http://x/v1', api_key='k').idle_timeout:.0f} s each"
    ),
    "max_total_s": lambda: f"`max_total_s` ({RetryPolicy().max_total_s:.0f} s)",
    "generation rate": lambda: (
        "("
        f"{KimiModel(api_key='sk-x', base_url='http://x/v1').generation_tokens_per_s:.0f} tokens/s)"
    ),
    "evicted prefix": _cost_gap,
    "cached price": lambda: f"cached input at {_cached_share()} of the price",
}


@pytest.mark.parametrize("name", CLAIMS)
def test_a_readme_number_matches_the_code(name: str) -> None:
    expected = CLAIMS[name]()
    text = " ".join(README.read_text().split())
    assert expected in text, f"the README should say {expected!r} ({name})"


# -- benchmark figures come from the recorded run ----------------------------------------------

NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _figures(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def test_the_readme_benchmark_figures_are_the_recorded_ones() -> None:
    recorded = _figures((ROOT / "docs" / "benchmarks.md").read_text())
    rate = section("Rate limits and retries")
    rate_sentence = rate[
        rate.index("In a run of 200") : rate.index("(`python -m bench rate_limit`")
    ]
    for text in (section("Performance"), rate_sentence):
        missing = _figures(text) - recorded
        assert not missing, f"figures not in docs/benchmarks.md: {sorted(missing)}"


# -- the shared folder ---------------------------------------------------------------------------


def _run_mfjs_tests(tmp_path: Path, shared: str | None) -> subprocess.CompletedProcess[str]:
    """tests/test_mfjs.py from a copy of the tests with no ../shared beside it."""
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if k != "AGENTLOOP_SHARED"}
    if shared is not None:
        env["AGENTLOOP_SHARED"] = shared
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mfjs.py"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_the_shared_folder_the_tests_skip_naming_it_and_the_variable(
    tmp_path: Path,
) -> None:
    done = _run_mfjs_tests(tmp_path, None)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "skipped" in done.stdout
    assert f"{tmp_path}/shared/conformance/walle is missing" in done.stdout
    assert "AGENTLOOP_SHARED=/path/to/shared" in done.stdout
    assert "(0 + 0)" not in done.stdout


def test_a_wrong_agentloop_shared_fails_the_tests_naming_it(tmp_path: Path) -> None:
    done = _run_mfjs_tests(tmp_path, str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert f"{tmp_path}/nowhere/conformance/walle is missing" in done.stdout
    assert f"looked in AGENTLOOP_SHARED={tmp_path}/nowhere" in done.stdout
    assert "(0 + 0)" not in done.stdout


def test_ci_names_the_shared_folder_and_lints_everything() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'export AGENTLOOP_SHARED="${AGENTLOOP_SHARED:-$(cd .. && pwd)/shared}"' in ci
    assert re.search(r"^ruff check \.$", ci, re.MULTILINE), "CI must lint tools/ and tests/ too"
