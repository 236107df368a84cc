"""agentloop's built-in tools, installed as ``agentloop_tools``.

* ``LocalIndex``: an on-disk BM25 full-text index of a folder; ``index.tools()`` gives the
  agent ``search(query, limit)`` and ``open(id, offset)``.
* ``Fetcher``: ``fetch(url, offset)`` with main-content extraction and SSRF protection.
* ``web_search(backend)``: Kimi's builtin ``$web_search`` or a SearxNG-compatible endpoint.

Every tool here is written with the public ``@tool`` API, like any user tool.
"""

from .fetch import BlockedAddressError, Fetcher, FetchError
from .local_search import Hit, IndexReport, LocalIndex
from .web_search import searxng_tool, web_search

__all__ = [
    "BlockedAddressError",
    "FetchError",
    "Fetcher",
    "Hit",
    "IndexReport",
    "LocalIndex",
    "searxng_tool",
    "web_search",
]
