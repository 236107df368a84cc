"""Web fetch: a page's main content as text, in pages, with SSRF protection.

    fetcher = Fetcher()                      # refuses private, loopback, link-local, metadata
    agent = Agent(model, tools=[fetcher.tool()])

Every hop is checked: the host is resolved first, *every* address it resolves to must be public
(or inside ``allow``), and the connection goes to the checked address (the ``Host`` header and
TLS server name stay the original host), so a DNS answer cannot change between the check and the
connection. IPv6 addresses that carry an IPv4 address (IPv4-mapped and -compatible, NAT64, 6to4,
Teredo) are judged by the IPv4 address they carry. Redirects are followed by hand, each one checked
the same way; URLs with a user name or password are refused unless ``allow_credentials=True``.
Every refusal and failure raises ``FetchError``. Responses are capped
in bytes and time, only text, HTML, JSON, XML and PDF are read, and long pages come back one page
at a time (``fetch(url, offset)``; the page says the next offset).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import anyio
import httpx2

from agentloop import Tool, tool

from .extract import extract_html, extract_pdf
from .local_search import page_of

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

TEXT_TYPES = ("text/plain", "text/markdown", "application/json", "text/csv", "text/xml")
HTML_TYPES = ("text/html", "application/xhtml+xml")
XML_TYPES = ("application/xml", "application/rss+xml", "application/atom+xml")


class FetchError(Exception):
    """A fetch the tool refused or could not complete; the message is shown to the model."""


class BlockedAddressError(FetchError):
    pass


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``ip`` may carry, by the IPv6 forms that embed one; ``[]`` if none.

    IPv4-mapped ``::ffff:a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``, IPv4-compatible
    ``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48`` (whose operator may use any
    RFC 6052 prefix length, so every position the address could sit in is returned), 6to4
    ``2002::/16``, and Teredo ``2001::/32`` (the server and the de-obfuscated client)."""
    value = int(ip)
    low32 = ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if value >> 32 in (0, 0xFFFF_0000) or ip in _NAT64_WELL_KNOWN:
        return [low32]
    if ip in _NAT64_LOCAL_USE:
        found = [low32]  # /96
        if (value >> 56) & 0xFF == 0:  # bits 64-71 (the RFC 6052 "u" octet) are zero
            byte = [(value >> (120 - 8 * i)) & 0xFF for i in range(16)]  # byte[i] = bits 8i..
            for start in (6, 7, 9):  # /48, /56 and /64 prefixes (the u octet is byte 8)
                octets = [b for i, b in enumerate(byte[start:], start) if i != 8][:4]
                found.append(ipaddress.IPv4Address(bytes(octets)))
        return found
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(slots=True)
class Page:
    url: str
    title: str | None
    text: str
    content_type: str
    truncated: bool


class Fetcher:
    """Fetches pages for an agent. ``allow`` lists networks (``"127.0.0.1/32"``, ``"10.0.0.0/8"``)
    that may be reached even though they are not public; everything else non-public is refused."""

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        max_bytes: int = 3_000_000,
        timeout_s: float = 20.0,
        max_redirects: int = 5,
        page_chars: int = 8_000,
        user_agent: str = "agentloop-fetch/0.1 (+https://pypi.org/project/agentloop/)",
        resolver: Resolver | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        cache_pages: int = 32,
        allow_credentials: bool = False,
    ) -> None:
        self.allow = [ipaddress.ip_network(net, strict=False) for net in allow]
        self.allow_credentials = allow_credentials
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.page_chars = page_chars
        self.user_agent = user_agent
        self.resolver = resolver or system_resolver
        self._transport = transport
        self._cache: OrderedDict[str, Page] = OrderedDict()
        self._cache_pages = cache_pages

    # -- address policy ----------------------------------------------------------------------
    def permitted(self, address: str) -> bool:
        """Whether ``address`` may be connected to: public, or inside ``allow``. An IPv6 address
        that carries an IPv4 address (``::ffff:127.0.0.1``, ``64:ff9b::10.0.0.1``, 6to4,
        Teredo) is permitted only if every IPv4 address it may carry is."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if self._allowed(ip):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            carried = embedded_ipv4(ip)
            if carried:
                return all(self._allowed(v4) or _public(v4) for v4 in carried)
        return _public(ip)

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.allow)

    async def _checked_address(self, url: httpx2.URL) -> str:
        if url.scheme not in ("http", "https"):
            raise FetchError(f"only http and https URLs can be fetched, not {url.scheme!r}")
        if url.userinfo and not self.allow_credentials:
            raise FetchError(
                f"refused: {url.copy_with(username=None, password=None)} carries credentials "
                "(user:password@). Fetcher(allow_credentials=True) sends them."
            )
        host = url.raw_host.decode("ascii")  # IDNA-encoded
        if not host:
            raise FetchError(f"{url} has no host")
        port = url.port if url.port is not None else (443 if url.scheme == "https" else 80)
        if not 0 < port < 65536:
            raise FetchError(f"{url} has port {port}, which is not between 1 and 65535")
        try:
            literal = ipaddress.ip_address(host)
            addresses: Sequence[str] = [str(literal)]
        except ValueError:
            if not _valid_host_name(host):
                raise FetchError(f"{host!r} is not a valid host name") from None
            try:
                addresses = await self.resolver(host, port)
            except (OSError, ValueError) as exc:  # idna's UnicodeError is a ValueError
                raise FetchError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise FetchError(f"cannot resolve {host}")
        blocked = [a for a in addresses if not self.permitted(a)]
        if blocked:
            raise BlockedAddressError(
                f"refused: {host} resolves to {blocked[0]}, a private, loopback, link-local or "
                "otherwise non-public address. Fetcher(allow=[...]) permits chosen networks."
            )
        return addresses[0]

    # -- fetching ----------------------------------------------------------------------------
    async def get(self, url: str) -> Page:
        """Download and extract ``url`` (cached: paging through a page does not re-download)."""
        cached = self._cache.get(url)
        if cached is not None:
            self._cache.move_to_end(url)
            return cached
        try:
            with anyio.fail_after(self.timeout_s):
                page = await self._download(url)
        except FetchError:
            raise
        except (TimeoutError, httpx2.TimeoutException) as exc:
            raise FetchError(
                f"{_shown(url)}: no complete answer within {self.timeout_s:g} s"
            ) from exc
        except (
            httpx2.HTTPError,
            httpx2.InvalidURL,
            httpx2.StreamError,
            OSError,
            ValueError,
        ) as exc:
            # a malformed URL, a refused or reset connection, a protocol error, a damaged PDF
            raise FetchError(f"{_shown(url)}: {type(exc).__name__}: {exc}") from exc
        self._cache[url] = page
        while len(self._cache) > self._cache_pages:
            self._cache.popitem(last=False)
        return page

    async def _download(self, url: str) -> Page:
        current = httpx2.URL(url)
        async with httpx2.AsyncClient(
            transport=self._transport, timeout=self.timeout_s, trust_env=False
        ) as client:
            for _ in range(self.max_redirects + 1):
                address = await self._checked_address(current)
                target = current.copy_with(host=address)
                headers = {
                    "Host": current.netloc.decode("ascii"),
                    "User-Agent": self.user_agent,
                    "Accept": (
                        "text/html,application/xhtml+xml,text/plain,application/pdf;q=0.9,*/*;q=0.5"
                    ),
                }
                extensions = {"sni_hostname": current.host} if current.scheme == "https" else {}
                request = client.build_request(
                    "GET", target, headers=headers, extensions=extensions
                )
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(f"{current} redirected without a Location")
                        current = current.join(location)
                        continue
                    if response.status_code >= 400:
                        raise FetchError(f"{current} answered HTTP {response.status_code}")
                    return await self._read(current, response)
                finally:
                    await response.aclose()
        raise FetchError(f"{url}: more than {self.max_redirects} redirects")

    async def _read(self, url: httpx2.URL, response: httpx2.Response) -> Page:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        readable = HTML_TYPES + TEXT_TYPES + XML_TYPES + ("application/pdf",)
        if content_type and not (content_type in readable or content_type.startswith("text/")):
            raise FetchError(f"{url} is {content_type}, which this tool does not read")
        chunks: list[bytes] = []
        size = 0
        truncated = False
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= self.max_bytes:
                truncated = True
                break
        data = b"".join(chunks)[: self.max_bytes]
        if content_type == "application/pdf" or data.startswith(b"%PDF-"):
            if truncated:
                raise FetchError(f"{url}: the PDF is larger than {self.max_bytes:,} bytes")
            title, text = await anyio.to_thread.run_sync(extract_pdf, data)
        else:
            try:
                raw = data.decode(response.charset_encoding or "utf-8", errors="replace")
            except LookupError:  # a charset Python does not know
                raw = data.decode("utf-8", errors="replace")
            if content_type in HTML_TYPES or (not content_type and "<html" in raw[:2000].lower()):
                title, text = await anyio.to_thread.run_sync(extract_html, raw, str(url))
            else:
                title, text = None, raw
        return Page(str(url), title, text, content_type or "unknown", truncated)

    async def fetch(self, url: str, offset: int = 0) -> str:
        """The text of one page of ``url`` from ``offset``, headed with where it came from."""
        page = await self.get(url)
        header = f"{page.title or page.url} ({page.url})"
        if page.truncated:
            header += f" [only the first {self.max_bytes:,} bytes were read]"
        return page_of(page.text, offset, self.page_chars, header)

    def tool(self, name: str = "fetch") -> Tool:
        fetcher = self

        @tool(name=name, timeout_s=self.timeout_s + 5)
        async def fetch(url: str, offset: int = 0) -> str:
            """Fetch a web page and return its main text, one page at a time.

            Args:
                url: the http(s) address to read.
                offset: character offset to continue from (the previous page says the next one).
            """
            # a refusal or failure raises: the agent reports it to the model as an error
            return await fetcher.fetch(url, max(0, offset))

        return fetch


def _public(ip: IPAddress) -> bool:
    return ip.is_global and not ip.is_multicast


def _shown(url: str) -> str:
    """``url`` for messages, without any password in it."""
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        return url
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


def _valid_host_name(host: str) -> bool:
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 254 and all(_HOST_LABEL.fullmatch(label) for label in labels)


__all__ = [
    "BlockedAddressError",
    "FetchError",
    "Fetcher",
    "Page",
    "embedded_ipv4",
    "system_resolver",
]
