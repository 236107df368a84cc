"""Every Python block of the README and docs/ runs, so the documentation cannot rot.

Blocks of one file run in order in one namespace (later blocks may use earlier names), with top-
level ``await`` allowed, in a temporary folder holding a small ``docs/`` corpus. Kimi is the
simulator: ``MOONSHOT_API_KEY`` and ``MOONSHOT_BASE_URL`` point at it, and the names the prose
assumes (``model``, ``search``) are provided. Shell blocks are the CI script's own commands
(install, test) and the CLI, which tests/test_cli.py runs as subprocesses.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from agentloop import KimiModel, tool
from agentloop.sim import SimServer, ToolLoopPolicy

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.anyio


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_the_docs_have_python_blocks() -> None:
    assert len(python_blocks(ROOT / "README.md")) >= 3
    assert python_blocks(ROOT / "docs" / "transcripts.md")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
async def test_every_python_block_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any
) -> None:
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip(f"{path.name} has no Python blocks")
    sim: SimServer = await sim_factory(policy=ToolLoopPolicy(steps=2))
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-sim")
    monkeypatch.setenv("MOONSHOT_BASE_URL", sim.base_url)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "kiwi.md").write_text("# Kiwi\n\nThe kiwi is a flightless bird.\n")

    @tool
    def search(query: str) -> str:
        """Search.

        Args:
            query: what to look for.
        """
        return f"results for {query}"

    namespace: dict[str, Any] = {
        "__name__": "__docs__",
        "model": KimiModel(rpm=None),
        "search": search,
    }
    for number, source in enumerate(blocks, 1):
        code = compile(
            source, f"{path.name}[block {number}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        outcome = eval(code, namespace)  # a coroutine when the block awaits
        if outcome is not None:
            await outcome
