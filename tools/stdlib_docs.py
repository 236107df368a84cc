"""A real corpus that is on every machine: the installed Python standard library's docstrings.

``stdlib_index()`` puts one document per module, class and function (signature + docstring) into
a ``LocalIndex``. The demo and the browse/search example search it.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .local_search import LocalIndex

MODULES = (
    "abc argparse array asyncio base64 bisect calendar collections contextlib copy csv "
    "dataclasses datetime decimal difflib enum fnmatch fractions functools gettext glob gzip "
    "hashlib heapq hmac html http.client ipaddress itertools json logging math mimetypes "
    "operator os pathlib pickle pprint queue random re sched secrets shelve shlex shutil "
    "socket sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading "
    "time timeit tomllib traceback typing unicodedata urllib.parse uuid weakref zipfile zlib"
).split()


def _documents(module: ModuleType) -> Iterable[tuple[str, str, str]]:
    name = module.__name__
    yield name, f"module {name}", inspect.getdoc(module) or ""
    for attr, value in list(vars(module).items()):
        if attr.startswith("_") or getattr(value, "__module__", None) != name:
            continue
        if not (inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value)):
            continue
        qual = f"{name}.{attr}"
        yield qual, qual + _signature(value), inspect.getdoc(value) or ""
        if inspect.isclass(value):
            for method, member in list(vars(value).items()):
                if method.startswith("_") or not inspect.isfunction(member):
                    continue
                mq = f"{qual}.{method}"
                yield mq, mq + _signature(member), inspect.getdoc(member) or ""


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def stdlib_index(path: str | Path = ":memory:", modules: Iterable[str] = MODULES) -> LocalIndex:
    """An index of the standard library's docstrings (re-built documents replace old ones)."""
    index = LocalIndex(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for key, title, doc in _documents(module):
                if doc:
                    index.add_text(f"stdlib:{key}", title, f"{title}\n\n{doc}")
    return index


__all__ = ["MODULES", "stdlib_index"]
