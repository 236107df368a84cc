"""The examples run offline against the simulator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_browse_agent_answers_from_the_stdlib_docs() -> None:
    browse = load("browse_agent")
    result = await browse.answer("How do I compute the median of a list of numbers?", True, False)
    assert result.stop_reason == "completed"
    assert "statistics.median" in result.output
    names = [c.name for s in result.steps for c in s.tool_calls]
    assert names[0] == "search" and "open" in names
