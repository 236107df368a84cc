"""Keeping the API key out of everything but the request itself.

``Secret`` holds a key; its ``repr`` and ``str`` show nothing of it, so a traceback with locals,
a debugger or an error tracker sees ``Secret('…')``. ``SecretHeaders`` is the request's header
mapping: the ``Authorization`` value is built from the secret only when the HTTP library reads
the mapping, and its ``repr`` redacts it. ``redact`` removes every key this process holds from a
text (a server may echo a key in its error message) before it becomes an exception, a result,
a log line, a span or a transcript.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import NoReturn

REDACTED = "[redacted key]"
_KNOWN: set[str] = set()
_KNOWN_LOCK = threading.Lock()


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= 8:  # shorter strings are not keys, and redacting them would garble text
            with _KNOWN_LOCK:
                _KNOWN.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('…')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not pickled: pass the key to the process that needs it")


class SecretHeaders(Mapping[str, str]):
    """Headers with ``Authorization: Bearer <key>`` made on reading, redacted in ``repr``."""

    __slots__ = ("_headers", "_secret")

    def __init__(self, headers: Mapping[str, str], secret: Secret | None) -> None:
        self._headers = dict(headers)
        self._secret = secret

    def __getitem__(self, name: str) -> str:
        if name == "Authorization" and self._secret is not None:
            return f"Bearer {self._secret.reveal()}"
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._headers
        if self._secret is not None:
            yield "Authorization"

    def __len__(self) -> int:
        return len(self._headers) + (self._secret is not None)

    def pairs(self) -> list[tuple[str, str]]:
        """The headers as (name, value) pairs, the key in them made now: what an HTTP library
        takes in one C call, rather than reading this mapping item by item."""
        pairs = list(self._headers.items())
        if self._secret is not None:
            pairs.append(("Authorization", f"Bearer {self._secret.reveal()}"))
        return pairs

    def __repr__(self) -> str:
        shown = dict(self._headers)
        if self._secret is not None:
            shown["Authorization"] = f"Bearer {REDACTED}"
        return f"SecretHeaders({shown!r})"

    __str__ = __repr__


def header_pairs(headers: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    """What a transport hands its HTTP library: ``SecretHeaders.pairs()``, any other mapping's
    items."""
    return headers.pairs() if isinstance(headers, SecretHeaders) else headers.items()


def redact(text: str) -> str:
    """``text`` with every API key this process holds replaced by ``[redacted key]``."""
    if not _KNOWN:
        return text
    for value in tuple(_KNOWN):  # a snapshot: another thread may be adding a key
        if value in text:
            text = text.replace(value, REDACTED)
    return text
