"""The ``agentloop`` command: ``run`` (an agent on a task, with a live view), ``sim`` (the Kimi API
simulator), ``demo`` (the offline main job) and ``replay`` (a saved transcript)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import anyio
from rich.console import Console
from rich.live import Live

from . import events as ev
from .agent import Agent
from .budget import PRESETS, Budget
from .errors import ConfigurationError
from .live import PlainPrinter, RunView, step_table
from .models.base import BuiltinTool
from .models.kimi import CHINA, KimiModel
from .result import Decision, PendingCall, Rejected, RunResult
from .sim import POLICIES, BrowsePolicy, FaultPlan, SimConfig, SimServer
from .sim.profiles import PROFILES
from .tools import Tool, tool
from .transcript import TranscriptError, TranscriptWriter, event_to_dict
from .transcript import load as load_transcript

if TYPE_CHECKING:
    from .mcp import MCPServer


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
        profile=args.profile,
    )
    server = SimServer(config, port=args.port)
    what = "Kimi API" if args.profile == "kimi" else f"OpenAI-compatible server ({args.profile})"

    async def main() -> None:
        await server.start()
        print(
            f"{what} simulator on {server.base_url} (profile {args.profile}, key {args.key!r}, "
            f"policy {args.policy})\n"
            f"point a run at it: MOONSHOT_API_KEY={args.key} agentloop run TASK "
            f"--base-url {server.base_url}",
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
    "invalid_output": 4,
    "approval_required": 4,
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


class Interrupts:
    """SIGINT and SIGTERM during a run: the first stops the run through ``RunStream.cancel()``
    (it then finishes as usual, with ``stop_reason="cancelled"``), a second exits at once.
    ``exit_code`` is 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._cancel: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.live = False  # a live view hides the cursor: give it back on a hard exit

    @property
    def exit_code(self) -> int | None:
        return None if self.signal is None else 128 + self.signal

    def install(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel
        self._loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            self._loop.add_signal_handler(sig, self._received, sig)

    def uninstall(self) -> None:
        if self._loop is not None:
            for sig in self.SIGNALS:
                self._loop.remove_signal_handler(sig)
            self._loop = None

    def _received(self, sig: int) -> None:
        if self.signal is not None:
            if self.live:
                sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()
            print("agentloop: stopped at once", file=sys.stderr, flush=True)
            os._exit(128 + sig)
        self.signal = sig
        print(
            f"agentloop: {signal.Signals(sig).name}: stopping the run (again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        if self._cancel is not None:
            self._cancel()


async def show_run(
    agent: Agent,
    task: str,
    *,
    mode: str,
    transcript: str | None = None,
    show_reasoning: bool = False,
    console: Console | None = None,
    interrupts: Interrupts | None = None,
    show_error: bool = True,
    resume: RunResult | None = None,
    approvals: Mapping[str, Decision] | None = None,
) -> RunResult:
    """Run ``agent`` on ``task``, showing it as ``mode`` ("live", "plain" or "json").

    ``interrupts``: stop the run on SIGINT/SIGTERM (the command line). ``show_error=False``
    leaves the run's error out of the view, for a caller that reports it itself."""
    console = console or Console(highlight=False)
    view = RunView(budget=agent.budget, show_reasoning=show_reasoning, show_error=show_error)
    printer = PlainPrinter(show_reasoning=show_reasoning, show_error=show_error)
    writer = TranscriptWriter(transcript) if transcript else None
    live = Live(view.render(), console=console, refresh_per_second=8) if mode == "live" else None
    try:
        if live is not None:
            live.start()
        async with agent.stream(task or None, resume=resume, approvals=approvals) as stream:
            if interrupts is not None:
                interrupts.live = live is not None
                interrupts.install(stream.cancel)
            async for event in stream:
                if writer:
                    writer.write(event)
                view.feed(event)
                if live is not None:
                    if isinstance(event, ev.StepFinished):
                        # printed above the live view: every step stays visible, even a step
                        # shorter than a frame
                        live.console.print(view.step_summary(event))
                    live.update(view.render())
                elif mode == "json":
                    print(json.dumps(event_to_dict(event), ensure_ascii=False), flush=True)
                else:
                    for line in printer.lines(event):
                        print(line, flush=True)
        if live is not None:
            live.update(view.render(), refresh=True)  # the final frame, however short the run
    finally:
        if interrupts is not None:
            interrupts.uninstall()
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


# an error the server answered that means the configuration is wrong (key, region, model, URL)
_CONFIG_ERROR = re.compile(r"^(?:HTTP )?(?:401|403|404)\b")
_MISSING_KEY = (
    "MOONSHOT_API_KEY is not set. Create a key at https://platform.moonshot.ai (international) "
    "or https://platform.moonshot.cn (China) and `export MOONSHOT_API_KEY=sk-...`; keys are "
    f"region-bound: for a .cn key also pass --base-url {CHINA} (or set MOONSHOT_BASE_URL). "
    "Against the simulator (`agentloop sim`) any value works: "
    "MOONSHOT_API_KEY=sk-sim agentloop run TASK --base-url http://127.0.0.1:8765/v1"
)


def _exit_code(result: RunResult, interrupts: Interrupts, command: str) -> int:
    if result.stop_reason == "cancelled" and interrupts.exit_code is not None:
        return interrupts.exit_code
    if result.error:
        if _CONFIG_ERROR.match(result.error):
            print(
                f"agentloop {command}: {result.error}. On the command line: --base-url URL "
                "(or MOONSHOT_BASE_URL), the key in MOONSHOT_API_KEY, the model with --model",
                file=sys.stderr,
            )
            return 2
        print(f"agentloop {command}: {result.error}", file=sys.stderr)
    return EXIT_CODES.get(result.stop_reason, 1)


def _environment_ok(args: argparse.Namespace, command: str) -> bool:
    """The key is set and MOONSHOT_BASE_URL (when it is used) is a URL; else say which, once."""
    if not os.environ.get(KimiModel.api_key_env):
        print(f"agentloop {command}: {_MISSING_KEY}", file=sys.stderr)
        return False
    env_url = os.environ.get(KimiModel.base_url_env)
    if args.base_url is None and env_url and not _is_url(env_url):
        print(
            f"agentloop {command}: MOONSHOT_BASE_URL={env_url!r} is not an http(s) URL "
            "(e.g. https://api.moonshot.ai/v1); fix it or pass --base-url",
            file=sys.stderr,
        )
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    if not _environment_ok(args, "run"):
        return 2
    try:
        budget = _budget(args)
        tools = load_tools(args.tools or [])
        model = KimiModel(model=args.model, base_url=args.base_url, rpm=args.rpm)
    except ConfigurationError as exc:
        print(f"agentloop run: {exc}", file=sys.stderr)
        return 2
    interrupts = Interrupts()

    async def session() -> RunResult:
        """The run, and after each pause for approval the same run resumed with the person's
        decisions (``--yes``: approve everything)."""
        async with contextlib.AsyncExitStack() as stack:
            given = list(tools)
            for spec in args.mcp or []:
                server = await stack.enter_async_context(_mcp_server(spec))
                given.extend(server.tools())
            agent = Agent(model, tools=given, instructions=args.instructions, budget=budget)
            approve_all = bool(args.yes)
            paused: RunResult | None = None
            approvals: dict[str, Decision] | None = None
            while True:
                result = await show_run(
                    agent,
                    args.task if paused is None else "",
                    mode=_mode(args),
                    transcript=args.transcript,
                    show_reasoning=args.show_reasoning,
                    interrupts=interrupts,
                    show_error=False,
                    resume=paused,
                    approvals=approvals,
                )
                if result.stop_reason != "approval_required" or interrupts.signal is not None:
                    return result
                approvals = {}
                for call in result.pending:
                    if not approve_all:
                        answer = await anyio.to_thread.run_sync(_ask_approval, call)
                        approve_all = answer == "all"
                        if answer == "no":
                            approvals[call.call_id] = Rejected("the user said no")
                            continue
                    approvals[call.call_id] = True
                paused = result

    try:
        result = anyio.run(session)
    except ConfigurationError as exc:  # an MCP server that cannot start, or clashing names
        print(f"agentloop run: {exc}", file=sys.stderr)
        return 2
    return _exit_code(result, interrupts, "run")


def _mcp_server(spec: str) -> MCPServer:
    """``--mcp SPEC``: a URL (streamable HTTP) or a command line (stdio)."""
    try:
        from .mcp import MCPServer  # the optional extra, imported when used
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from None
    return MCPServer.parse(spec)


def _ask_approval(call: PendingCall) -> str:
    """'yes', 'no' or 'all' from the terminal (no answer, as at the end of piped input: no)."""
    arguments = call.arguments if len(call.arguments) <= 400 else call.arguments[:400] + "…"
    prompt = f"agentloop: {call.tool}({arguments}) needs approval — [y]es, [n]o, [a]ll: "
    while True:
        print(prompt, end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            print("(no answer: rejected)", file=sys.stderr)
            return "no"
        choice = line.strip().lower()
        if choice in ("y", "yes"):
            return "yes"
        if choice in ("n", "no"):
            return "no"
        if choice in ("a", "all"):
            return "all"


def _demo(args: argparse.Namespace) -> int:
    from agentloop_tools.stdlib_docs import stdlib_index

    interrupts = Interrupts()

    async def main() -> RunResult:
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
            try:
                return await show_run(
                    agent,
                    args.task,
                    mode=_mode(args),
                    transcript=args.transcript,
                    show_reasoning=args.show_reasoning,
                    interrupts=interrupts,
                    show_error=False,
                )
            finally:
                await model.aclose()

    return _exit_code(anyio.run(main), interrupts, "demo")


def _batch(args: argparse.Namespace) -> int:
    """``agentloop batch``: a task file, K runs per task, results appended (``batch.py``)."""
    from .batch import BatchSummary, prepare

    if not _environment_ok(args, "batch"):
        return 2
    mode = "json" if args.json else _mode(argparse.Namespace(json=False, plain=args.plain))
    try:
        job = prepare(
            args.tasks,
            args.out,
            model_name=args.model,
            base_url=args.base_url,
            tools=load_tools(args.tools or []),
            instructions=args.instructions,
            preset=args.preset,
            runs=args.runs,
            concurrency=args.concurrency,
            db=args.db,
            worker=args.worker,
            rpm=args.rpm,
            display="json" if mode == "json" else "plain" if mode == "plain" else "live",
        )
    except ConfigurationError as exc:
        print(f"agentloop batch: {exc}", file=sys.stderr)
        return 2
    interrupts = Interrupts()

    async def main() -> BatchSummary:
        interrupts.live = mode == "live"
        interrupts.install(job.cancel)
        try:
            return await job.run()
        finally:
            interrupts.uninstall()
            await job.agent.model.aclose()

    try:
        summary = anyio.run(main)
    except ConfigurationError as exc:
        print(f"agentloop batch: {exc}", file=sys.stderr)
        return 2
    if interrupts.exit_code is not None:
        print(
            f"agentloop batch: stopped; {summary.recorded}/{summary.pairs} runs are in "
            f"{summary.out}: run the same command again to do the rest",
            file=sys.stderr,
        )
        return interrupts.exit_code
    if summary.errors:
        print(
            f"agentloop batch: {summary.errors} run(s) ended with an error "
            f'(stop_reason "error" in {summary.out})',
            file=sys.stderr,
        )
        return 1
    return 0


def _replay(args: argparse.Namespace) -> int:
    try:
        saved = load_transcript(args.file)
    except (OSError, TranscriptError) as exc:
        print(f"agentloop replay: {exc}", file=sys.stderr)
        return 2
    console = Console(highlight=False)
    view = RunView(show_reasoning=args.show_reasoning)
    printer = PlainPrinter(show_reasoning=args.show_reasoning)
    for event in saved.events:
        view.feed(event)
        if not args.summary:  # the run as it went, one plain line per event (never wrapped)
            for line in printer.lines(event):
                print(line)
    if not args.summary:
        for line in printer.flush():
            print(line)
    sys.stdout.flush()
    if not args.plain:
        console.print(view.render())
    steps = [e for e in saved.events if isinstance(e, ev.StepFinished)]
    console.print(step_table(view, steps))
    if saved.result is None:
        console.print("the transcript ends before the run finished", style="yellow")
        return 1
    return 0


# -- argument types: a bad value is one line and exit 2, before anything runs ------------------
def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}; give at least {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0 picks a free one)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive amount")
    return value


def _is_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in text


def _url(text: str) -> str:
    if not _is_url(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL (e.g. https://api.moonshot.ai/v1 or the "
            "simulator's http://127.0.0.1:8765/v1)"
        )
    return text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (what is wrong, and where help is), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON event per line")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    parser.add_argument("--show-reasoning", action="store_true", help="the whole reasoning pane")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="agentloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sim", help="run the Kimi API simulator on loopback")
    p.add_argument("--port", type=_port, default=8765, help="0 picks a free port")
    p.add_argument("--policy", choices=sorted(POLICIES), default="tools")
    p.add_argument("--rpm", type=_at_least(1))
    p.add_argument("--tpm", type=_at_least(1))
    p.add_argument("--concurrency", type=_at_least(1))
    p.add_argument("--faults", help='e.g. "429@3,cut@7" or "500=0.05,reset=0.01"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="enforce the soft rules too")
    p.add_argument("--key", default="sk-sim", help="the API key the simulator accepts")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="kimi",
        help="which server to answer as: Kimi, or another OpenAI-compatible server's quirks "
        "(llamacpp: no usage in streams, [DONE] without finish_reason under concurrency, ...)",
    )
    p.set_defaults(func=_sim)
    r = sub.add_parser("run", help="run an agent on a task, with a live view")
    r.add_argument("task")
    r.add_argument(
        "--tools",
        action="append",
        metavar="MODULE[:ATTR]",
        help="a tool module (every @tool in it) or one attribute of it; repeat for more",
    )
    r.add_argument(
        "--mcp",
        action="append",
        metavar="COMMAND|URL",
        help='an MCP server\'s tools: a command line ("python -m mcp_server_time") or a '
        "streamable HTTP URL; repeat for more (needs agentloop[mcp])",
    )
    r.add_argument("--model", default="kimi-k2.6")
    r.add_argument(
        "--base-url", type=_url, help="the API's base URL (default: MOONSHOT_BASE_URL or Kimi's)"
    )
    r.add_argument("--instructions", help="the system prompt")
    r.add_argument("--preset", metavar="NAME", help="budget preset: " + ", ".join(sorted(PRESETS)))
    r.add_argument("--max-steps", type=_at_least(1))
    r.add_argument("--per-step-tokens", type=_at_least(1))
    r.add_argument("--total-tokens", type=_at_least(1))
    r.add_argument("--max-cost-usd", type=_positive_float)
    r.add_argument(
        "--rpm", type=_at_least(1), default=50, help="requests per minute allowed (default 50)"
    )
    r.add_argument("--transcript", metavar="FILE", help="save the run as JSON Lines")
    r.add_argument(
        "--yes", action="store_true", help="approve every tool call that needs approval"
    )
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
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--plain", action="store_true", help="the events as lines and the table")
    shown.add_argument("--summary", action="store_true", help="only the final view and the table")
    p.add_argument("--show-reasoning", action="store_true")
    p.set_defaults(func=_replay)
    b = sub.add_parser("batch", help="run a task file K times per task; results as JSON Lines")
    b.add_argument("tasks", metavar="TASKS.jsonl", help='{"id": ..., "task": ..., "answer": ...}')
    b.add_argument("--out", required=True, metavar="RESULTS.jsonl", help="appended; resumable")
    b.add_argument("--db", metavar="runs.db", help="durable runs: a SQLite file or postgresql://")
    b.add_argument(
        "--worker",
        metavar="NAME",
        help="this worker's name in a fleet sharing --db (default: <host>-<n>, the first free "
        "slot on this machine); a worker restarted under its name takes back its runs",
    )
    b.add_argument("--runs", type=_at_least(1), help="runs per task (default: the preset's)")
    b.add_argument("--concurrency", type=_at_least(1), default=4, help="runs at once (4)")
    b.add_argument(
        "--preset", metavar="NAME", help="benchmark preset: " + ", ".join(sorted(PRESETS))
    )
    b.add_argument("--tools", action="append", metavar="MODULE[:ATTR]", help="repeat for more")
    b.add_argument("--model", default="kimi-k2.6")
    b.add_argument("--base-url", type=_url, help="default: MOONSHOT_BASE_URL or Kimi's")
    b.add_argument("--instructions", help="the system prompt")
    b.add_argument("--rpm", type=_at_least(1), default=50, help="requests per minute (50)")
    b.add_argument("--json", action="store_true", help="one JSON summary object at the end")
    b.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    b.set_defaults(func=_batch)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # before or after a run (a run itself handles Ctrl-C)
        print("agentloop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
