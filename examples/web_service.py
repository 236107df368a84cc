"""An agent inside a small web service: POST /run {"task": ...} streams the run's events as
Server-Sent Events. A plain ASGI app (no framework), served here by uvicorn, which the examples
extra installs (from a checkout: ``pip install -e ".[examples]"``).

Offline, the simulator plays the model (no key needed):

    python examples/web_service.py

Online, against Kimi K2.6 (``MOONSHOT_BASE_URL`` too for a key from platform.moonshot.cn):

    MOONSHOT_API_KEY=sk-... python examples/web_service.py --online

Either serves on http://127.0.0.1:8000 (``--port N`` for another port); then, from another
terminal:

    curl -N -X POST localhost:8000/run -d '{"task": "count the words in hello world"}'

Under another ASGI server, ``app`` is the online service: with MOONSHOT_API_KEY set,
``uvicorn examples.web_service:app``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from agentloop import Agent, KimiModel, tool
from agentloop.transcript import event_to_dict

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@tool
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: the text.
    """
    return len(text.split())


def make_app(model: KimiModel) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    agent = Agent(model, tools=[word_count], instructions="Use the tools, then answer briefly.")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/run":
            await _plain(send, 404, b'POST /run with {"task": ...}\n')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            task = str(json.loads(body)["task"])
        except (ValueError, KeyError, TypeError):
            await _plain(send, 400, b'the body must be JSON like {"task": "..."}\n')
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        # Leaving the block however it is left (the client went away, say) stops the run and
        # releases its model call; a deadline never interrupts our own `await send(...)`.
        async with agent.stream(task) as run:
            async for event in run:
                data = json.dumps(event_to_dict(event), ensure_ascii=False)
                name = type(event).__name__
                chunk = f"event: {name}\ndata: {data}\n\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _plain(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": text})


if os.environ.get("MOONSHOT_API_KEY"):
    app = make_app(KimiModel())


def main() -> int:
    import argparse
    import sys
    from contextlib import ExitStack

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--online", action="store_true", help="use Kimi (MOONSHOT_API_KEY)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import uvicorn
    except ImportError:
        print(
            'examples/web_service.py needs uvicorn: pip install -e ".[examples]" '
            '(or pip install "agentloop[examples]")',
            file=sys.stderr,
        )
        return 2

    from agentloop.sim import SimServer

    with ExitStack() as stack:
        if args.online:
            model = KimiModel()  # MOONSHOT_API_KEY (and MOONSHOT_BASE_URL for the China region)
        else:
            sim = stack.enter_context(SimServer().run_in_thread())
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
        uvicorn.run(make_app(model), host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
