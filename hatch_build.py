"""Build hook: ship ./tools as the `agentloop_tools` package.

A wheel gets a copy of ./tools under that name. An editable install gets a one-file
`agentloop_tools` whose package path points at ./tools, so edits show up without reinstalling
and no top-level `tools` module ever becomes importable.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SHIM = '''"""Editable install of agentloop's built-in tools: the code lives in {src}."""
__path__ = [{src!r}]
__file__ = {init!r}
with open(__file__, encoding="utf-8") as _source:
    exec(compile(_source.read(), __file__, "exec"))
'''


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        src = os.path.join(self.root, "tools")
        if version == "editable":
            handle, shim = tempfile.mkstemp(suffix=".py")
            with os.fdopen(handle, "w") as out:
                out.write(SHIM.format(src=src, init=os.path.join(src, "__init__.py")))
            build_data["force_include_editable"][shim] = "agentloop_tools/__init__.py"
        else:
            build_data["force_include"][src] = "agentloop_tools"
