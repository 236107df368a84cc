"""Web search with pluggable backends, chosen by configuration.

* ``"kimi"``: Kimi's builtin ``$web_search`` (the provider runs the search; the agent hands the
  call's arguments back unchanged, contract item 8). Needs a ``KimiModel``; Kimi turns thinking
  off for requests that carry it.
* ``"searxng"``: any SearxNG-compatible JSON endpoint (``/search?q=...&format=json``), given as
  ``endpoint=`` or ``SEARXNG_URL``.

``web_search()`` reads ``AGENTLOOP_SEARCH_BACKEND`` when no backend is named.
"""

from __future__ import annotations

import os
from typing import Any

import httpx2

from agentloop import WEB_SEARCH, BuiltinTool, ConfigurationError, Tool, tool

BACKENDS = ("kimi", "searxng")


def web_search(
    backend: str | None = None,
    *,
    endpoint: str | None = None,
    timeout_s: float = 15.0,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> Tool | BuiltinTool:
    """A web-search tool for ``Agent(tools=[...])`` from the chosen backend."""
    chosen = (backend or os.environ.get("AGENTLOOP_SEARCH_BACKEND") or "").strip().lower()
    if not chosen:
        raise ConfigurationError(
            "no web-search backend chosen: pass web_search('kimi') or web_search('searxng', "
            "endpoint=...), or set AGENTLOOP_SEARCH_BACKEND to one of: " + ", ".join(BACKENDS)
        )
    if chosen == "kimi":
        return WEB_SEARCH
    if chosen == "searxng":
        url = endpoint or os.environ.get("SEARXNG_URL")
        if not url:
            raise ConfigurationError(
                "the searxng backend needs its endpoint: web_search('searxng', "
                "endpoint='http://host:8080') or SEARXNG_URL"
            )
        return searxng_tool(url, timeout_s=timeout_s, transport=transport)
    raise ConfigurationError(
        f"unknown web-search backend {chosen!r}; choose one of: {', '.join(BACKENDS)}"
    )


def searxng_tool(
    endpoint: str, *, timeout_s: float = 15.0, transport: httpx2.AsyncBaseTransport | None = None
) -> Tool:
    base = endpoint.rstrip("/")
    if base.endswith("/search"):
        base = base[: -len("/search")]

    @tool(name="web_search", timeout_s=timeout_s + 5)
    async def search_web(query: str, limit: int = 8) -> str:
        """Search the web. Returns titles, addresses and snippets, best first.

        Args:
            query: what to search for.
            limit: how many results to return (1-20).
        """
        async with httpx2.AsyncClient(transport=transport, timeout=timeout_s) as client:
            response = await client.get(f"{base}/search", params={"q": query, "format": "json"})
        if response.status_code != 200:
            raise RuntimeError(f"the search endpoint answered HTTP {response.status_code}")
        results: list[dict[str, Any]] = response.json().get("results") or []
        if not results:
            return "No results."
        lines = []
        for rank, item in enumerate(results[: max(1, min(limit, 20))], 1):
            snippet = " ".join(str(item.get("content") or "").split())
            lines.append(f"{rank}. {item.get('title', '')}\n   {item.get('url', '')}\n   {snippet}")
        return "\n".join(lines)

    return search_web


__all__ = ["BACKENDS", "searxng_tool", "web_search"]
