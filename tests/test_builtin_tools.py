"""The built-in tools (agentloop_tools): local search, fetch with SSRF protection, web search."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from agentloop_tools import BlockedAddressError, Fetcher, FetchError, LocalIndex, web_search

from agentloop import WEB_SEARCH, Agent, ConfigurationError
from agentloop.sim import ScriptedPolicy, ToolCall, Turn
from tests.conftest import kimi

pytestmark = pytest.mark.anyio


# -- local search ------------------------------------------------------------------------------
def corpus(root: Path) -> None:
    (root / "birds").mkdir(parents=True)
    (root / "birds" / "kiwi.md").write_text(
        "# The kiwi\n\nThe kiwi is a flightless bird endemic to New Zealand. Kiwi lay huge eggs.\n"
    )
    (root / "birds" / "albatross.txt").write_text(
        "Albatross\n\nThe wandering albatross has the longest wingspan of any living bird.\n"
    )
    (root / "rivers.html").write_text(
        "<html><head><title>Rivers</title></head><body><nav>Home | About | Contact</nav>"
        "<article><h1>Long rivers</h1><p>The Nile and the Amazon are the longest rivers on "
        "Earth; which is longer depends on where the source is measured from.</p>"
        "<p>The Amazon carries more water than any other river.</p></article>"
        "<footer>Copyright Example Corp</footer></body></html>"
    )
    (root / "long.txt").write_text("Ledger\n\n" + " ".join(f"entry{i}" for i in range(3000)))
    (root / "image.png").write_bytes(b"\x89PNG not indexed")


def test_index_and_search_rank_by_bm25_with_snippets(tmp_path: Path) -> None:
    corpus(tmp_path / "docs")
    index = LocalIndex(tmp_path / "index.db")
    report = index.add_folder(tmp_path / "docs")
    assert (report.added, report.updated, report.removed) == (4, 0, 0)
    hits = index.search("flightless bird New Zealand")
    assert hits[0].title == "The kiwi"
    assert "**flightless**" in hits[0].snippet
    assert index.search("longest wingspan")[0].title == "Albatross"
    rivers = index.search("Amazon river")
    assert rivers[0].title == "Long rivers" and "Amazon" in rivers[0].snippet
    assert all("Contact" not in h.snippet for h in rivers)  # navigation was not indexed
    # free text with FTS5 syntax in it is searched as words, never parsed as a query
    assert index.search('kiwi" OR NEAR(-bird* AND')[0].title == "The kiwi"
    assert index.search("zzzz qqqq") == [] and index.search("!!") == []
    assert len(index.search("the", limit=2)) == 2


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` (written by hand: no PDF writer is a dependency)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_pdf_documents_are_indexed(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "eggs.pdf").write_bytes(minimal_pdf("The kiwi lays a very large egg"))
    index = LocalIndex()
    assert index.add_folder(tmp_path / "docs").added == 1
    hit = index.search("large egg")[0]
    assert hit.title == "eggs" and "The kiwi lays a very large egg" in index.open(hit.id)


def test_open_pages_through_a_long_document(tmp_path: Path) -> None:
    corpus(tmp_path / "docs")
    index = LocalIndex(tmp_path / "index.db", page_chars=5_000)
    index.add_folder(tmp_path / "docs")
    doc = index.search("entry2999")[0]
    first = index.open(doc.id)
    assert "characters 0–" in first and "next offset" in first
    next_offset = int(first.split("next offset ")[1].split("]")[0])
    assert 2_500 < next_offset <= 5_000
    text = first.split("]\n", 1)[1]
    offset, pages = next_offset, [text]
    while True:
        page = index.open(doc.id, offset)
        pages.append(page.split("]\n", 1)[1])
        if "end of document" in page:
            break
        offset = int(page.split("next offset ")[1].split("]")[0])
    assert "".join(pages) == (tmp_path / "docs" / "long.txt").read_text()
    assert "past the end" in index.open(doc.id, 10**7)
    with pytest.raises(KeyError, match="use an id from search results"):
        index.open(9999)


def test_reindexing_reads_only_changed_files(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    corpus(docs)
    db = tmp_path / "index.db"
    LocalIndex(db).add_folder(docs)
    index = LocalIndex(db)  # a new process would see the same on-disk index
    kiwi_id = index.search("kiwi")[0].id
    assert index.add_folder(docs).unchanged == 4
    kiwi = docs / "birds" / "kiwi.md"
    kiwi.write_text("# The kiwi\n\nKiwi are nocturnal and sniff out invertebrates.\n")
    os.utime(kiwi, ns=(kiwi.stat().st_atime_ns, kiwi.stat().st_mtime_ns + 10**9))
    (docs / "birds" / "albatross.txt").unlink()
    (docs / "tui.md").write_text("# Tui\n\nThe tui is a noisy honeyeater.\n")
    report = index.add_folder(docs)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 2)
    assert index.search("nocturnal")[0].id == kiwi_id  # ids survive an update
    assert index.search("flightless") == []  # the old text is gone from the index
    assert index.search("wingspan") == []
    assert index.search("honeyeater")[0].title == "Tui"
    assert len(index) == 4


async def test_an_agent_searches_and_opens_over_http(tmp_path: Path, sim_factory: Any) -> None:
    corpus(tmp_path / "docs")
    index = LocalIndex(tmp_path / "index.db")
    index.add_folder(tmp_path / "docs")

    def open_first_hit(ctx: Any) -> Turn:
        first = ctx.tool_results()[-1].split("]")[0].lstrip("[")
        return Turn(tool_calls=[ToolCall("open", json.dumps({"id": int(first)}))])

    def answer(ctx: Any) -> Turn:
        return Turn(content="From the page: " + ctx.tool_results()[-1][-80:])

    policy = ScriptedPolicy(
        [
            Turn(tool_calls=[ToolCall("search", '{"query": "longest wingspan"}')]),
            open_first_hit,
            answer,
        ]
    )
    sim = await sim_factory(policy=policy)
    result = await Agent(kimi(sim), tools=index.tools()).run("Which bird has the longest wingspan?")
    assert result.stop_reason == "completed"
    assert "longest wingspan of any living bird" in result.output
    assert [c.name for s in result.steps for c in s.tool_calls] == ["search", "open"]


# -- fetch ---------------------------------------------------------------------------------------
ARTICLE = (
    "<html><head><title>Kiwi facts</title></head><body>"
    "<nav><a href='/'>Home</a> | <a href='/shop'>Shop</a> | Subscribe now</nav>"
    "<main><article><h1>The kiwi</h1>"
    + "".join(
        f"<p>Paragraph {i}: the kiwi is a flightless bird endemic to New Zealand, "
        "and it lays a very large egg for its size.</p>"
        for i in range(60)
    )
    + "</article></main><footer>Copyright 2026 Example Corp. Cookie policy.</footer></body></html>"
)

Route = tuple[int, dict[str, str], bytes]


class PageServer:
    """A tiny HTTP/1.1 server on loopback; records the Host header of each request."""

    def __init__(self, routes: dict[str, Route | Callable[[], Route]]) -> None:
        self.routes = routes
        self.hosts: list[str] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> PageServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode().split("\r\n")
        path = lines[0].split()[1]
        self.hosts.append(
            next(x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("host:"))
        )
        route = self.routes.get(path, (404, {"content-type": "text/plain"}, b"not found"))
        status, headers, body = route() if callable(route) else route
        out = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "connection: close"]
        out += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    html = {"content-type": "text/html; charset=utf-8"}
    routes: dict[str, Any] = {
        "/article": (200, html, ARTICLE.encode()),
        "/plain": (200, {"content-type": "text/plain"}, b"just text\n" * 3),
        "/image": (200, {"content-type": "image/png"}, b"\x89PNG...."),
        "/big": (200, {"content-type": "text/plain"}, b"x" * 50_000),
        "/to-article": (302, {"location": "/article"}, b""),
        "/to-metadata": (302, {"location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/to-intranet": (301, {"location": "http://intranet.example/admin"}, b""),
        "/loop": (302, {"location": "/loop"}, b""),
        "/missing": (404, {"content-type": "text/plain"}, b"nope"),
        "/paper.pdf": (
            200,
            {"content-type": "application/pdf"},
            minimal_pdf("Kiwi eggs are one fifth of the body weight"),
        ),
    }
    async with PageServer(routes) as server:
        yield server


async def fake_resolver(host: str, port: int) -> list[str]:
    table = {
        "intranet.example": ["10.0.0.7"],
        "mixed.example": ["93.184.216.34", "192.168.0.9"],
        "pages.test": ["127.0.0.1"],
    }
    if host not in table:
        raise OSError(f"unknown host {host}")
    return table[host]


def local_fetcher(**kwargs: Any) -> Fetcher:
    return Fetcher(allow=["127.0.0.1/32"], resolver=fake_resolver, **kwargs)


async def test_fetch_extracts_main_content_and_pages_it(pages: PageServer) -> None:
    fetcher = local_fetcher(page_chars=2_000)
    first = await fetcher.fetch(pages.url("/article"))
    assert first.startswith("The kiwi (http://127.0.0.1:")
    assert "flightless bird endemic to New Zealand" in first
    for boilerplate in ("Subscribe now", "Cookie policy", "Shop"):
        assert boilerplate not in first
    assert "next offset" in first
    offset = int(first.split("next offset ")[1].split("]")[0])
    second = await fetcher.fetch(pages.url("/article"), offset)
    assert f"characters {offset:,}–" in second
    assert len(pages.hosts) == 1  # paging reads the cached extraction, not the network


async def test_fetch_limits_and_content_types(pages: PageServer) -> None:
    fetcher = local_fetcher(max_bytes=10_000)
    assert "just text" in await fetcher.fetch(pages.url("/plain"))
    big = await fetcher.fetch(pages.url("/big"))
    assert "only the first 10,000 bytes were read" in big
    with pytest.raises(FetchError, match="image/png"):
        await fetcher.fetch(pages.url("/image"))
    with pytest.raises(FetchError, match="HTTP 404"):
        await fetcher.fetch(pages.url("/missing"))
    with pytest.raises(FetchError, match="redirects"):
        await fetcher.fetch(pages.url("/loop"))
    with pytest.raises(FetchError, match="only http and https"):
        await fetcher.fetch("file:///etc/passwd")
    assert "flightless" in await fetcher.fetch(pages.url("/to-article"))
    assert "one fifth of the body weight" in await fetcher.fetch(pages.url("/paper.pdf"))


async def test_fetch_connects_to_the_checked_address(pages: PageServer) -> None:
    # the name is resolved once, checked, and the connection goes to that address
    text = await local_fetcher().fetch(f"http://pages.test:{pages.port}/plain")
    assert "just text" in text
    assert pages.hosts == [f"pages.test:{pages.port}"]


class NoNetwork(httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"a refused address was connected to: {request.url}")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.8.9.10:8080/x",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://172.31.255.254/",
        "http://192.168.1.1/",
        "http://169.254.10.20/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://intranet.example/",
        "http://mixed.example/",
    ],
)
async def test_non_public_addresses_are_refused(url: str) -> None:
    fetcher = Fetcher(resolver=fake_resolver, transport=NoNetwork())
    with pytest.raises(BlockedAddressError, match="refused"):
        await fetcher.fetch(url)


async def test_a_name_resolving_to_loopback_is_refused_with_the_real_resolver() -> None:
    with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.1|::1"):
        await Fetcher(transport=NoNetwork()).fetch("http://localhost/")


def test_public_neighbours_of_private_ranges_are_allowed() -> None:
    fetcher = Fetcher()
    for address in ("172.15.255.255", "172.32.0.1", "11.0.0.1", "169.255.0.1", "93.184.216.34"):
        assert fetcher.permitted(address), address
    assert Fetcher(allow=["10.0.0.0/8"]).permitted("10.9.9.9")
    assert not Fetcher(allow=["10.0.0.0/8"]).permitted("192.168.0.1")


@pytest.mark.parametrize("path", ["/to-metadata", "/to-intranet"])
async def test_a_redirect_to_a_private_address_is_refused(pages: PageServer, path: str) -> None:
    with pytest.raises(BlockedAddressError, match=r"169\.254\.169\.254|10\.0\.0\.7"):
        await local_fetcher().fetch(pages.url(path))


async def test_fetch_as_a_tool_in_a_run_over_http(pages: PageServer, sim_factory: Any) -> None:
    url = pages.url("/article")
    policy = ScriptedPolicy(
        [
            Turn(tool_calls=[ToolCall("fetch", json.dumps({"url": "http://10.0.0.1/"}))]),
            Turn(tool_calls=[ToolCall("fetch", json.dumps({"url": url}))]),
            lambda ctx: Turn(content=ctx.tool_results()[-1][:200]),
        ]
    )
    sim = await sim_factory(policy=policy)
    result = await Agent(kimi(sim), tools=[local_fetcher().tool()]).run("read the kiwi page")
    refused, fetched = (c for s in result.steps for c in s.tool_calls)
    assert not refused.ok and fetched.ok
    tool_messages = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert "BlockedAddressError" in tool_messages[0] and "refused" in tool_messages[0]
    assert "flightless" in result.output


# -- web search ----------------------------------------------------------------------------------
def test_web_search_backend_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTLOOP_SEARCH_BACKEND", raising=False)
    monkeypatch.delenv("SEARXNG_URL", raising=False)
    with pytest.raises(ConfigurationError, match="AGENTLOOP_SEARCH_BACKEND"):
        web_search()
    with pytest.raises(ConfigurationError, match="SEARXNG_URL"):
        web_search("searxng")
    with pytest.raises(ConfigurationError, match="kimi, searxng"):
        web_search("bing")
    assert web_search("kimi") is WEB_SEARCH
    monkeypatch.setenv("AGENTLOOP_SEARCH_BACKEND", "searxng")
    monkeypatch.setenv("SEARXNG_URL", "http://127.0.0.1:9")
    assert web_search().name == "web_search"  # type: ignore[union-attr]


async def test_searxng_backend_over_http(sim_factory: Any) -> None:
    results = {
        "results": [
            {
                "title": "Kiwi - Wikipedia",
                "url": "https://en.wikipedia.org/wiki/Kiwi",
                "content": "Kiwi are  flightless birds",
            },
            {
                "title": "Kiwi bird facts",
                "url": "https://example.org/kiwi",
                "content": "Five species.",
            },
        ]
    }
    routes: dict[str, Any] = {
        "/search?q=kiwi+bird&format=json": (
            200,
            {"content-type": "application/json"},
            json.dumps(results).encode(),
        )
    }
    async with PageServer(routes) as server:
        search = web_search("searxng", endpoint=f"http://127.0.0.1:{server.port}/")
        policy = ScriptedPolicy(
            [
                Turn(tool_calls=[ToolCall("web_search", '{"query": "kiwi bird", "limit": 5}')]),
                lambda ctx: Turn(content=ctx.tool_results()[-1]),
            ]
        )
        sim = await sim_factory(policy=policy)
        result = await Agent(kimi(sim), tools=[search]).run("find kiwi pages")
    assert result.output.startswith("1. Kiwi - Wikipedia\n   https://en.wikipedia.org/wiki/Kiwi")
    assert "Kiwi are flightless birds" in result.output and "2. Kiwi bird facts" in result.output


async def test_kimi_web_search_builtin_in_a_run(sim_factory: Any) -> None:
    args = '{"search_result": {"search_id": "s-1"}, "usage": {"total_tokens": 1200}}'
    policy = ScriptedPolicy(
        [Turn(tool_calls=[ToolCall("$web_search", args)]), Turn(content="searched")]
    )
    sim = await sim_factory(policy=policy)
    result = await Agent(kimi(sim, thinking=False), tools=[web_search("kimi")]).run("news?")
    assert result.output == "searched"
    assert sim.stats.bodies[0]["tools"] == [
        {"type": "builtin_function", "function": {"name": "$web_search"}}
    ]
    echoed = [m for m in result.messages if m["role"] == "tool"]
    assert echoed[0]["content"] == args and echoed[0]["name"] == "$web_search"
