"""The ``agentloop`` command: ``run`` (an agent on a task, with a live view), ``sim`` (the Kimi API
simulator), ``demo`` (the offline main job) and ``replay`` (a saved transcript)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Sequence

import anyio
from rich.console import Console
from rich.live import Live

from . import events as ev
from .agent import Agent
from .budget import PRESETS, Budget
from .errors import ConfigurationError
from .live import RunView, plain_line, step_table
from .models.base import BuiltinTool
from .models.kimi import KimiModel
from .result import RunResult
from .sim import POLICIES, BrowsePolicy, FaultPlan, SimConfig, SimServer
from .tools import Tool, tool
from .transcript import TranscriptError, TranscriptWriter, event_to_dict
from .transcript import load as load_transcript


def _sim(args: argparse.Namespace) -> int:
    try:
        faults = FaultPlan.parse(args.faults or "", seed=args.seed)
    except ValueError as exc:
        print(f"agentloop sim: {exc}", file=sys.stderr)
        return 2
    config = SimConfig(
        policy=POLICIES[args.policy](),
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrency=args.concurrency,
        faults=faults,
        strict=args.strict,
        api_keys={args.key: "ai"},
    )
    server = SimServer(config, port=args.port)

    async def main() -> None:
        await server.start()
        print(
            f"Kimi API simulator on {server.base_url} (key {args.key!r}, policy {args.policy})",
            flush=True,
        )
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


EXIT_CODES = {
    "completed": 0,
    "error": 1,
    "max_steps": 3,
    "token_budget": 3,
    "cost_budget": 3,
    "deadline": 3,
    "loop_detected": 3,
    "reasoning_exhausted": 3,
    "empty_answer": 4,
    "refused": 4,
    "cancelled": 130,
}


def load_tools(specs: Sequence[str]) -> list[Tool | BuiltinTool]:
    """Tools from ``MODULE[:ATTR]`` specs: ATTR names a tool, a function or a list of them;
    without it, every tool defined at the module's top level."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # tool modules next to the user, like `python -m`
    found: list[Tool | BuiltinTool] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import tool module {module_name!r} ({exc}). Give an importable "
                "module name (run from its folder or set PYTHONPATH), e.g. --tools mytools or "
                "--tools mytools:search"
            ) from None
        if attr:
            if not hasattr(module, attr):
                raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
            value = getattr(module, attr)
            items = value if isinstance(value, list | tuple) else [value]
            for item in items:
                if isinstance(item, Tool | BuiltinTool):
                    found.append(item)
                elif callable(item):
                    found.append(tool(item))
                else:
                    raise ConfigurationError(f"{spec} is not a tool or a function")
        else:
            tools = [v for v in vars(module).values() if isinstance(v, Tool)]
            if not tools:
                raise ConfigurationError(
                    f"module {module_name!r} defines no @tool functions; name one with "
                    f"--tools {module_name}:NAME"
                )
            found.extend(tools)
    return found


def _budget(args: argparse.Namespace) -> Budget:
    budget = Budget.preset(args.preset) if args.preset else Budget()
    changes: dict[str, object] = {}
    for name in ("max_steps", "per_step_tokens", "total_tokens", "max_cost_usd"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return budget.with_(**changes) if changes else budget


async def show_run(
    agent: Agent,
    task: str,
    *,
    mode: str,
    transcript: str | None = None,
    show_reasoning: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Run ``agent`` on ``task``, showing it as ``mode`` ("live", "plain" or "json")."""
    console = console or Console(highlight=False)
    view = RunView(budget=agent.budget, show_reasoning=show_reasoning)
    writer = TranscriptWriter(transcript) if transcript else None
    live = Live(view.render(), console=console, refresh_per_second=8) if mode == "live" else None
    try:
        if live is not None:
            live.start()
        async with agent.stream(task) as stream:
            async for event in stream:
                if writer:
                    writer.write(event)
                view.feed(event)
                if live is not None:
                    live.update(view.render())
                elif mode == "json":
                    print(json.dumps(event_to_dict(event), ensure_ascii=False), flush=True)
                else:
                    line = plain_line(event)
                    if line:
                        print(line, flush=True)
    finally:
        if live is not None:
            live.stop()
        if writer:
            writer.close()
    assert stream.result is not None
    return stream.result


def _mode(args: argparse.Namespace) -> str:
    if args.json:
        return "json"
    if args.plain or not sys.stdout.isatty():
        return "plain"
    return "live"


def _run(args: argparse.Namespace) -> int:
    try:
        budget = _budget(args)
        tools = load_tools(args.tools or [])
        model = KimiModel(model=args.model, base_url=args.base_url, rpm=args.rpm)
    except ConfigurationError as exc:
        print(f"agentloop run: {exc}", file=sys.stderr)
        return 2
    agent = Agent(model, tools=tools, instructions=args.instructions, budget=budget)
    result = anyio.run(
        lambda: show_run(
            agent,
            args.task,
            mode=_mode(args),
            transcript=args.transcript,
            show_reasoning=args.show_reasoning,
        )
    )
    if result.error:
        print(f"agentloop run: {result.error}", file=sys.stderr)
    return EXIT_CODES.get(result.stop_reason, 1)


def _demo(args: argparse.Namespace) -> int:
    from agentloop_tools.stdlib_docs import stdlib_index

    async def main() -> int:
        index = stdlib_index()
        config = SimConfig(policy=BrowsePolicy(), strict=True)
        async with SimServer(config) as sim:
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
            agent = Agent(
                model,
                tools=index.tools(),
                instructions=(
                    "Answer questions about Python's standard library from its documentation: "
                    "search, open what looks right, and answer briefly."
                ),
                budget=Budget(max_steps=10),
            )
            result = await show_run(agent, args.task, mode=_mode(args), transcript=args.transcript)
            await model.aclose()
            return EXIT_CODES.get(result.stop_reason, 1)

    return anyio.run(main)


def _replay(args: argparse.Namespace) -> int:
    try:
        saved = load_transcript(args.file)
    except (OSError, TranscriptError) as exc:
        print(f"agentloop replay: {exc}", file=sys.stderr)
        return 2
    console = Console(highlight=False)
    view = RunView(show_reasoning=args.show_reasoning)
    for event in saved.events:
        view.feed(event)
        if not isinstance(event, ev.ReasoningDelta | ev.TextDelta) and not args.summary:
            line = plain_line(event)
            if line and args.plain:
                console.print(line, markup=False)
    if not args.plain:
        console.print(view.render())
    steps = [e for e in saved.events if isinstance(e, ev.StepFinished)]
    console.print(step_table(view, steps))
    if saved.result is None:
        console.print("the transcript ends before the run finished", style="yellow")
        return 1
    return 0


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON event per line")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    parser.add_argument("--show-reasoning", action="store_true", help="the whole reasoning pane")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sim", help="run the Kimi API simulator on loopback")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--policy", choices=sorted(POLICIES), default="tools")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--faults", help='e.g. "429@3,cut@7" or "500=0.05,reset=0.01"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="enforce the soft rules too")
    p.add_argument("--key", default="sk-sim", help="the API key the simulator accepts")
    p.set_defaults(func=_sim)
    r = sub.add_parser("run", help="run an agent on a task, with a live view")
    r.add_argument("task")
    r.add_argument("--tools", nargs="+", metavar="MODULE[:ATTR]", help="where the tools are")
    r.add_argument("--model", default="kimi-k2.6")
    r.add_argument("--base-url", help="the API's base URL (default: MOONSHOT_BASE_URL or Kimi's)")
    r.add_argument("--instructions", help="the system prompt")
    r.add_argument("--preset", metavar="NAME", help="budget preset: " + ", ".join(sorted(PRESETS)))
    r.add_argument("--max-steps", type=int)
    r.add_argument("--per-step-tokens", type=int)
    r.add_argument("--total-tokens", type=int)
    r.add_argument("--max-cost-usd", type=float)
    r.add_argument("--rpm", type=int, default=50, help="requests per minute allowed (default 50)")
    r.add_argument("--transcript", metavar="FILE", help="save the run as JSON Lines")
    _output_flags(r)
    r.set_defaults(func=_run)
    d = sub.add_parser("demo", help="a search agent over the stdlib docs, against the simulator")
    d.add_argument(
        "task", nargs="?", default="How do I shorten text to fit a width with a placeholder?"
    )
    d.add_argument("--transcript", metavar="FILE")
    _output_flags(d)
    d.set_defaults(func=_demo)
    p = sub.add_parser("replay", help="show a saved transcript and its per-step table")
    p.add_argument("file")
    p.add_argument("--plain", action="store_true", help="print every event as a line")
    p.add_argument("--summary", action="store_true", help="only the final view and the table")
    p.add_argument("--show-reasoning", action="store_true")
    p.set_defaults(func=_replay)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
