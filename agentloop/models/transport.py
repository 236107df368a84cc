"""The HTTP seam: the one place that knows which HTTP library carries our bytes.

Model clients call ``Transport.post`` and get status, headers and a body they can read whole or
iterate. ``Httpx2Transport`` is the default; another library (aiohttp, say) can be measured and
swapped in by implementing the same two methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import httpx2

from ..errors import APIConnectionError, StreamInterruptedError


class RawResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class Transport(Protocol):
    def post(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> AbstractAsyncContextManager[RawResponse]: ...

    async def aclose(self) -> None: ...


class _Httpx2Response:
    __slots__ = ("_response",)

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx2.TransportError as exc:
            raise StreamInterruptedError(
                f"the connection broke mid-stream ({type(exc).__name__}: {exc})"
            ) from None

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx2.TransportError as exc:
            raise APIConnectionError(
                f"the connection broke while reading the response ({type(exc).__name__})"
            ) from None


class Httpx2Transport:
    """httpx2 over a few independent connection pools ("shards").

    httpcore's pool scans all of its connections for every request, so one pool with N open
    connections costs O(N) CPU per request: at 500 concurrent runs that scan was 75% of the
    client's CPU. Each request goes to the shard with the fewest requests in flight (the first
    on ties, so sequential calls keep reusing one connection), which keeps every pool small.
    """

    def __init__(
        self,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_connections: int = 1024,
        shards: int = 16,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        if client is not None:
            self._clients = [client]
        else:
            shards = max(1, min(shards, max_connections))
            per_shard = max(1, max_connections // shards)
            tls = httpx2.create_ssl_context()  # one CA store (about 1 MB) for every shard
            self._clients = [
                httpx2.AsyncClient(
                    verify=tls,
                    timeout=httpx2.Timeout(timeout, connect=connect_timeout),
                    limits=httpx2.Limits(
                        max_connections=per_shard, max_keepalive_connections=per_shard
                    ),
                )
                for _ in range(shards)
            ]
        self._in_flight = [0] * len(self._clients)

    def _pick(self) -> int:
        loads = self._in_flight
        return loads.index(min(loads))

    @asynccontextmanager
    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> AsyncIterator[RawResponse]:
        shard = self._pick()
        client = self._clients[shard]
        self._in_flight[shard] += 1
        try:
            request = client.build_request("POST", url, headers=headers, content=body)
            try:
                response = await client.send(request, stream=True)
            except httpx2.TransportError as exc:
                # The message names the host, never the request headers (the key lives there).
                raise APIConnectionError(
                    f"could not reach {request.url.host}:{request.url.port} "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            try:
                yield _Httpx2Response(response)
            finally:
                await response.aclose()
        finally:
            self._in_flight[shard] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
