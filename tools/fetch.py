"""Web fetch: a page's main content as text, in pages, with SSRF protection.

    fetcher = Fetcher()                      # refuses private, loopback, link-local, metadata
    agent = Agent(model, tools=[fetcher.tool()])

Every hop is checked: the host is resolved first, *every* address it resolves to must be public
(or inside ``allow``), and the connection goes to the checked address (the ``Host`` header and
TLS server name stay the original host), so a DNS answer cannot change between the check and the
connection. Redirects are followed by hand, each one checked the same way. Responses are capped
in bytes and time, only text, HTML, JSON, XML and PDF are read, and long pages come back one page
at a time (``fetch(url, offset)``; the page says the next offset).
"""

from __future__ import annotations

import ipaddress
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
    ) -> None:
        self.allow = [ipaddress.ip_network(net, strict=False) for net in allow]
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
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        if any(ip in net for net in self.allow):
            return True
        return ip.is_global and not ip.is_multicast

    async def _checked_address(self, url: httpx2.URL) -> str:
        if url.scheme not in ("http", "https"):
            raise FetchError(f"only http and https URLs can be fetched, not {url.scheme!r}")
        host = url.host
        if not host:
            raise FetchError(f"{url} has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            literal = ipaddress.ip_address(host)
            addresses: Sequence[str] = [str(literal)]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
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
        with anyio.fail_after(self.timeout_s):
            page = await self._download(url)
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
            charset = response.charset_encoding or "utf-8"
            raw = data.decode(charset, errors="replace")
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


__all__ = ["BlockedAddressError", "FetchError", "Fetcher", "Page", "system_resolver"]
