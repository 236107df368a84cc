"""The built-in tools under hostile or unusual input: SSRF through IPv6 forms that embed IPv4,
credentials in URLs, every failure a FetchError; damaged PDFs, CJK text, symlinks, missing folders
and huge files in the local index. Nothing here leaves loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from agentloop_tools import BlockedAddressError, Fetcher, FetchError, LocalIndex
from agentloop_tools import local_search as local_search_module
from agentloop_tools.local_search import DEFAULT_MAX_FILE_BYTES, FolderNotFoundError

from .test_builtin_tools import minimal_pdf

pytestmark = pytest.mark.anyio


# -- fetch: IPv6 forms that embed an IPv4 address ---------------------------------------------
class Recorder(httpx2.AsyncBaseTransport):
    """Answers every request with a short text page and records it (never touches a network)."""

    def __init__(self, body: bytes = b"public page", headers: dict[str, str] | None = None) -> None:
        self.requests: list[httpx2.Request] = []
        self.body = body
        self.headers = headers or {"content-type": "text/plain"}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return httpx2.Response(200, headers=self.headers, content=self.body)


def teredo(server: str, client: str) -> str:
    """A Teredo address (2001::/32): server IPv4 in bits 32-63, client IPv4 inverted at the end."""
    value = (0x2001_0000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFF_FFFF
    return str(ipaddress.IPv6Address(value))


PUBLIC_TEREDO_SERVER = "65.54.227.120"

EMBEDDED_IPV4 = [
    # IPv4-mapped ::ffff:0:0/96 and IPv4-translated ::ffff:0:0:0/96
    ("::ffff:127.0.0.1", False),
    ("::ffff:0:127.0.0.1", False),
    ("::ffff:0:10.0.0.1", False),
    ("::ffff:8.8.8.8", True),
    # IPv4-compatible ::/96 (deprecated, still routed by some stacks)
    ("::127.0.0.1", False),
    ("::10.1.2.3", False),
    ("::169.254.169.254", False),
    ("::192.168.0.1", False),
    ("::8.8.8.8", True),
    # NAT64 well-known prefix 64:ff9b::/96
    ("64:ff9b::127.0.0.1", False),
    ("64:ff9b::10.0.0.1", False),
    ("64:ff9b::169.254.169.254", False),
    ("64:ff9b::8.8.8.8", True),
    # NAT64 local-use prefix 64:ff9b:1::/48: the IPv4 address may sit at any RFC 6052 position
    ("64:ff9b:1::127.0.0.1", False),
    ("64:ff9b:1:ffff:ff:ff00:a00:1", False),  # /96 reading 10.0.0.1
    ("64:ff9b:1:7f00:1::", False),  # /48 reading 127.0.1.0
    ("64:ff9b:1::8.8.8.8", False),  # the /48 reading is 0.0.0.0
    ("64:ff9b:1:808:8:808:808:808", True),  # 8.8.8.8 at every position
    ("64:ff9b:1:ffff:ff01:ff00:808:808", True),  # u-octet set: only the /96 reading applies
    # 6to4 2002::/16
    ("2002:7f00:1::1", False),
    ("2002:a00:1::1", False),
    ("2002:a9fe:a9fe::1", False),
    ("2002:c0a8:1::1", False),
    ("2002:808:808::1", True),
    # Teredo 2001::/32: both the server and the (obfuscated) client must be public
    (teredo(PUBLIC_TEREDO_SERVER, "127.0.0.1"), False),
    (teredo(PUBLIC_TEREDO_SERVER, "10.0.0.1"), False),
    (teredo(PUBLIC_TEREDO_SERVER, "169.254.169.254"), False),
    (teredo("10.0.0.1", "8.8.8.8"), False),
    (teredo(PUBLIC_TEREDO_SERVER, "8.8.8.8"), True),
    # plain IPv6, for contrast
    ("2606:4700:4700::1111", True),
    ("::1", False),
]


@pytest.mark.parametrize(("address", "allowed"), EMBEDDED_IPV4)
async def test_ipv6_forms_that_embed_ipv4_are_checked_by_the_embedded_address(
    address: str, allowed: bool
) -> None:
    transport = Recorder()
    fetcher = Fetcher(transport=transport)
    url = f"http://[{address}]/page"
    if allowed:
        assert "public page" in await fetcher.fetch(url)
        [request] = transport.requests
        assert ipaddress.ip_address(request.url.host) == ipaddress.ip_address(address)
    else:
        with pytest.raises(BlockedAddressError, match="refused"):
            await fetcher.fetch(url)
        assert transport.requests == []
    assert fetcher.permitted(address) is allowed


async def test_embedded_addresses_from_the_resolver_and_the_allow_list() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return {"nat64.test": ["64:ff9b::a9fe:a9fe"], "sixtofour.test": ["2002:a00:1::1"]}[host]

    fetcher = Fetcher(resolver=resolver, transport=Recorder())
    for host in ("nat64.test", "sixtofour.test"):
        with pytest.raises(BlockedAddressError, match="refused"):
            await fetcher.fetch(f"http://{host}/")
    # an allowed private network stays allowed however it is written
    assert Fetcher(allow=["10.0.0.0/8"]).permitted("64:ff9b::10.0.0.1")
    assert Fetcher(allow=["10.0.0.0/8"]).permitted("2002:a00:1::1")
    assert not Fetcher(allow=["10.0.0.0/8"]).permitted("2002:7f00:1::1")
    assert Fetcher(allow=["64:ff9b:1::/48"]).permitted("64:ff9b:1::8.8.8.8")


# -- fetch: credentials in URLs ---------------------------------------------------------------
async def test_credentials_in_urls_are_refused_unless_allowed() -> None:
    transport = Recorder()
    fetcher = Fetcher(transport=transport)
    for url in ("http://user:hunter2@8.8.8.8/", "http://user@8.8.8.8/", "http://:hunter2@8.8.8.8/"):
        with pytest.raises(FetchError, match="credentials") as caught:
            await fetcher.fetch(url)
        assert "hunter2" not in str(caught.value)
    assert transport.requests == []

    # a redirect to a URL with credentials is refused the same way
    class Redirect(Recorder):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            self.requests.append(request)
            return httpx2.Response(302, headers={"location": "http://admin:pw@8.8.4.4/"})

    redirect = Redirect()
    with pytest.raises(FetchError, match="credentials"):
        await Fetcher(transport=redirect).fetch("http://8.8.8.8/")
    assert len(redirect.requests) == 1

    allowed = Recorder()
    page = await Fetcher(transport=allowed, allow_credentials=True).fetch(
        "http://user:hunter2@8.8.8.8/"
    )
    assert "public page" in page
    assert allowed.requests[0].headers["authorization"] == "Basic dXNlcjpodW50ZXIy"


# -- fetch: every refusal and failure is a FetchError -----------------------------------------
async def public_resolver(host: str, port: int) -> list[str]:
    return ["8.8.8.8"]


async def no_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host!r} should have been refused before it was resolved")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:abc/",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://[::1]:65536/",
        "http://[::1/",
        "http://[zz]/",
        "http://[1:2:3]/",
        "http://example.com/\x00",
        "http://exa mple.com/",
        "http://☃.net/",
        "http://" + "a" * 64 + ".com/",
        "http://" + "a." * 130 + "com/",
        "http://a..b/",
        "http://-a.com/",
        "http:// /",
        "http://%zz/",
        "http://a<b>/",
        "http:///path",
        "not a url",
        "",
        "//example.com/",
        "mailto:someone@example.com",
    ],
)
async def test_malformed_urls_raise_fetch_error_before_resolving(url: str) -> None:
    transport = Recorder()
    with pytest.raises(FetchError):
        await Fetcher(resolver=no_resolver, transport=transport).fetch(url)
    assert transport.requests == []


async def test_international_host_names_are_resolved_as_idna() -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["8.8.8.8"]

    transport = Recorder()
    assert "public page" in await Fetcher(resolver=resolver, transport=transport).fetch(
        "http://例え.jp/パス"
    )
    assert asked == ["xn--r8jz45g.jp"]
    assert transport.requests[0].headers["host"] == "xn--r8jz45g.jp"


class Failing(httpx2.AsyncBaseTransport):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise self.exc


@pytest.mark.parametrize(
    "transport",
    [
        Failing(httpx2.ConnectError("connection refused")),
        Failing(httpx2.ReadTimeout("slow")),
        Failing(httpx2.RemoteProtocolError("garbage")),
        Failing(ConnectionResetError("reset")),
        Recorder(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", {"content-type": "application/pdf"}),
        Recorder(b"caf\xe9", {"content-type": "text/plain; charset=no-such-charset"}),
    ],
    ids=["connect", "timeout", "protocol", "reset", "damaged-pdf", "unknown-charset"],
)
async def test_transport_and_content_failures_raise_fetch_error(transport: Any) -> None:
    fetcher = Fetcher(resolver=public_resolver, transport=transport)
    try:
        text = await fetcher.fetch("http://example.com/")
    except FetchError as exc:
        assert str(exc)
    else:  # an unknown charset may still be read, as UTF-8 with replacements
        assert "caf" in text


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A loopback server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_real_network_failures_raise_fetch_error(silent_server: int) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    fetcher = Fetcher(allow=["127.0.0.1/32"], timeout_s=0.5)
    with pytest.raises(FetchError, match=r"127\.0\.0\.1"):
        await fetcher.fetch(f"http://127.0.0.1:{closed_port}/")
    with pytest.raises(FetchError, match=r"0\.5 s"):
        await fetcher.fetch(f"http://127.0.0.1:{silent_server}/")
    with pytest.raises(FetchError):
        await fetcher.fetch("http://127.0.0.1:70000/")


# -- local index: damaged PDFs ----------------------------------------------------------------
def test_a_damaged_pdf_is_skipped_and_reported(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    good = minimal_pdf("The kiwi lays a very large egg")
    (docs / "good.pdf").write_bytes(good)
    (docs / "damaged.pdf").write_bytes(good[: len(good) // 2])
    (docs / "notes.txt").write_text("Notes\n\nThe takahe was rediscovered in 1948.\n")
    (docs / "latin1.txt").write_bytes(b"caf\xe9")
    index = LocalIndex(tmp_path / "index.db")
    report = index.add_folder(docs)
    assert report.added == 2
    skipped = dict(report.skipped or [])
    assert set(skipped) == {str(docs / "damaged.pdf"), str(docs / "latin1.txt")}
    assert "PDF" in skipped[str(docs / "damaged.pdf")]
    assert index.search("large egg")[0].title == "good"
    assert index.search("takahe")[0].title == "Notes"


# -- local index: text without spaces ---------------------------------------------------------
def cjk_corpus(root: Path) -> None:
    root.mkdir()
    (root / "beijing.txt").write_text("北京\n\n北京是中国的首都。人口超过两千万。\n")
    (root / "tokyo.txt").write_text("東京\n\n東京は日本の首都です。人口は約千四百万人です。\n")
    (root / "scattered.txt").write_text("杂记\n\n中国有很多城市，每个首都都有故事。\n")
    (root / "sejong.txt").write_text("세종\n\n서울은 대한민국의 수도입니다.\n")
    (root / "thai.txt").write_text("กรุงเทพ\n\nกรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย\n")
    (root / "kiwi.md").write_text("# The kiwi\n\nThe kiwi is a flightless bird of New Zealand.\n")
    (root / "long.txt").write_text("长文\n\n" + "这是一段很长的文字。" * 30 + "东京大学在东京。")
    (root / "split.txt").write_text("分开\n\n东京有很多大学。")


def test_cjk_and_other_unspaced_text_is_searchable(tmp_path: Path) -> None:
    cjk_corpus(tmp_path / "docs")
    index = LocalIndex(tmp_path / "index.db")
    assert index.add_folder(tmp_path / "docs").added == 8
    [hit] = index.search("北京")
    assert hit.title == "北京" and "**北京**" in hit.snippet and "首都" in hit.snippet
    assert [h.title for h in index.search("東京")] == ["東京"]
    assert index.search("日本の首都")[0].title == "東京"
    assert {h.title for h in index.search("京")} == {
        "北京",
        "東京",
        "长文",
        "分开",
    }  # one character
    assert [h.title for h in index.search("서울")] == ["세종"]
    assert [h.title for h in index.search("เมืองหลวง")] == ["กรุงเทพ"]
    # the whole word ranks above the same characters scattered through a document
    ranked = [h.title for h in index.search("中国的首都")]
    assert ranked[0] == "北京" and "杂记" in ranked
    # ... even when the exact string sits in a long document and the pairs in a short one
    [whole, scattered] = index.search("东京大学")
    assert (whole.title, scattered.title) == ("长文", "分开") and "**东京大学**" in whole.snippet
    # a mixed query adds both kinds of match; English alone is untouched
    assert index.search("kiwi 北京")[0].title in {"The kiwi", "北京"}
    assert {h.title for h in index.search("kiwi 北京")} == {"The kiwi", "北京"}
    assert [h.title for h in index.search("flightless")] == ["The kiwi"]
    assert index.search("上海") == []


def test_cjk_search_survives_updates_and_older_indexes(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "city.txt"
    page.write_text("城市\n\n北京是中国的首都。\n")
    db = tmp_path / "index.db"
    index = LocalIndex(db)
    index.add_folder(docs)
    page.write_text("城市\n\n上海是中国最大的城市。\n")
    index.add_folder(docs)
    assert index.search("北京") == [] and index.search("上海")[0].title == "城市"
    index.add_text("note", "备忘", "广州在南方。")
    assert index.search("广州")[0].title == "备忘"
    index.close()

    # an index written before CJK support: the documents are there, their CJK terms are not
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db_old:
        db_old.executescript(
            "CREATE TABLE documents (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, "
            "title TEXT NOT NULL, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, "
            "body TEXT NOT NULL);"
            "CREATE VIRTUAL TABLE documents_fts USING fts5(title, body, content='documents', "
            "content_rowid='id', tokenize='porter unicode61');"
            "INSERT INTO documents VALUES (1, 'note', '首都', 0, 9, '北京是中国的首都。');"
            "INSERT INTO documents_fts (rowid, title, body) "
            "VALUES (1, '首都', '北京是中国的首都。');"
        )
    db_old.close()
    assert LocalIndex(old).search("北京")[0].title == "首都"


# -- local index: symlinks, missing folders, huge files ---------------------------------------
def test_symlinks_outside_the_folder_are_not_followed_unless_asked(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("Secret\n\nThe launch code is swordfish.\n")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "inner.md").write_text("# Inner\n\nThe inner page mentions moa.\n")
    (docs / "leak.txt").symlink_to(outside / "secret.txt")
    (docs / "leakdir").symlink_to(outside, target_is_directory=True)
    (docs / "alias").symlink_to(docs / "sub", target_is_directory=True)  # inside: fine
    (docs / "sub" / "loop").symlink_to(docs, target_is_directory=True)  # a cycle inside
    index = LocalIndex(tmp_path / "index.db")
    report = index.add_folder(docs)
    assert index.search("swordfish") == []
    assert index.search("moa")[0].title == "Inner"
    skipped = dict(report.skipped or [])
    assert str(docs / "leak.txt") in skipped and str(docs / "leakdir") in skipped
    assert "follow_symlinks" in skipped[str(docs / "leak.txt")]

    followed = LocalIndex(tmp_path / "followed.db")
    followed.add_folder(docs, follow_symlinks=True)
    assert [h.title for h in followed.search("swordfish")] == ["Secret"]  # indexed once


def test_a_missing_folder_raises_a_clear_error(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Alpha\n\naardvark\n")
    index = LocalIndex(tmp_path / "index.db")
    index.add_folder(docs)
    with pytest.raises(FolderNotFoundError, match="does not exist") as caught:
        index.add_folder(tmp_path / "docz")
    assert isinstance(caught.value, FileNotFoundError)
    assert str(tmp_path / "docz") in str(caught.value)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        index.add_folder(docs / "a.txt")
    assert len(index) == 1  # nothing was dropped


def test_files_over_the_size_cap_are_skipped_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "small.txt").write_text("Small\n\nA short note about wetas.\n")
    (docs / "medium.txt").write_text("Medium\n\n" + "weta " * 400)
    with open(docs / "huge.txt", "wb") as huge:  # sparse: costs no disk
        huge.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    read: list[str] = []
    real_read = local_search_module.read_document

    def recording_read(file: Path, *args: Any, **kwargs: Any) -> tuple[str, str]:
        read.append(file.name)
        return real_read(file, *args, **kwargs)

    monkeypatch.setattr(local_search_module, "read_document", recording_read)
    index = LocalIndex(tmp_path / "index.db")
    report = index.add_folder(docs)
    assert report.added == 2 and "huge.txt" not in read
    skipped = dict(report.skipped or [])
    assert "max_file_bytes" in skipped[str(docs / "huge.txt")]
    assert DEFAULT_MAX_FILE_BYTES == 20_000_000

    capped = LocalIndex(tmp_path / "capped.db").add_folder(docs, max_file_bytes=1_000)
    assert capped.added == 1
    assert {Path(p).name for p, _ in capped.skipped or []} == {"huge.txt", "medium.txt"}
