"""Local search: a folder of documents in an on-disk SQLite FTS5 index, ranked by BM25.

    index = LocalIndex("corpus.db")
    index.add_folder("docs/")            # incremental: only new or changed files are read
    agent = Agent(model, tools=index.tools())   # search(query, limit) and open(id, offset)

Text, Markdown and reStructuredText are read as they are; HTML goes through the same main-content
extractor as ``fetch`` (the ``web`` extra); PDF needs the ``pdf`` extra. SQLite (with FTS5) is in
Python's standard library, so the default needs nothing installed.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentloop import Tool, tool

from .extract import extract_html, extract_pdf

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text", ".py"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    title TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
    title, body, content='documents', content_rowid='id', tokenize='porter unicode61'
);
"""


@dataclass(slots=True)
class Hit:
    id: int
    title: str
    path: str
    snippet: str
    score: float


@dataclass(slots=True)
class IndexReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] | None = None  # (path, reason)


class LocalIndex:
    """An on-disk full-text index. Thread-safe (sync tools run in worker threads)."""

    def __init__(self, path: str | Path = ":memory:", *, page_chars: int = 6_000) -> None:
        self.path = str(path)
        self.page_chars = page_chars
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- indexing ----------------------------------------------------------------------------
    def add_folder(
        self, folder: str | Path, *, suffixes: Iterable[str] | None = None
    ) -> IndexReport:
        """Index every matching file under ``folder``; re-read only files whose size or mtime
        changed, and drop documents whose file under ``folder`` is gone."""
        root = Path(folder).resolve()
        wanted = set(suffixes) if suffixes else TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES
        report = IndexReport(skipped=[])
        seen: set[str] = set()
        with self._lock, self._db:
            known = {
                row[0]: (row[1], row[2], row[3])
                for row in self._db.execute(
                    "SELECT path, id, mtime_ns, size FROM documents WHERE path LIKE ? ESCAPE '\\'",
                    (_like_prefix(str(root)),),
                )
            }
            for file in sorted(root.rglob("*")):
                if not file.is_file() or file.suffix.lower() not in wanted:
                    continue
                key = str(file)
                seen.add(key)
                stat = file.stat()
                old = known.get(key)
                if old and old[1] == stat.st_mtime_ns and old[2] == stat.st_size:
                    report.unchanged += 1
                    continue
                try:
                    title, body = read_document(file)
                except (OSError, UnicodeDecodeError, ImportError, ValueError) as exc:
                    report.skipped.append((key, str(exc)))
                    continue
                if old:
                    self._delete(old[0])
                    report.updated += 1
                else:
                    report.added += 1
                self._insert(
                    key, title, body, stat.st_mtime_ns, stat.st_size, old[0] if old else None
                )
            for key, (doc_id, _, _) in known.items():
                if key not in seen:
                    self._delete(doc_id)
                    report.removed += 1
        return report

    def add_text(self, key: str, title: str, body: str) -> int:
        """Index one document that is not a file (``key`` identifies it; re-adding replaces)."""
        with self._lock, self._db:
            row = self._db.execute("SELECT id FROM documents WHERE path = ?", (key,)).fetchone()
            if row:
                self._delete(row[0])
            return self._insert(key, title, body, 0, len(body), row[0] if row else None)

    def _insert(
        self, key: str, title: str, body: str, mtime_ns: int, size: int, doc_id: int | None
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO documents (id, path, title, mtime_ns, size, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (doc_id, key, title, mtime_ns, size, body),
        )
        new_id = int(cursor.lastrowid or 0)
        self._db.execute(
            "INSERT INTO documents_fts (rowid, title, body) VALUES (?, ?, ?)", (new_id, title, body)
        )
        return new_id

    def _delete(self, doc_id: int) -> None:
        row = self._db.execute(
            "SELECT title, body FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        if row is None:
            return
        # external-content FTS5 tables are told what to forget with the special 'delete' row
        self._db.execute(
            "INSERT INTO documents_fts (documents_fts, rowid, title, body) "
            "VALUES ('delete', ?, ?, ?)",
            (doc_id, row[0], row[1]),
        )
        self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM documents").fetchone()[0])

    # -- reading -----------------------------------------------------------------------------
    def search(self, query: str, limit: int = 10) -> list[Hit]:
        """BM25-ranked hits for the words of ``query`` (any of them; more matches rank higher).
        Free text is safe: it is turned into quoted terms, never parsed as FTS5 syntax."""
        terms = [t for t in re.findall(r"\w+", query.lower()) if len(t) > 1]
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))
        with self._lock:
            rows = self._db.execute(
                "SELECT d.id, d.title, d.path, "
                "snippet(documents_fts, 1, '**', '**', ' … ', 24), "
                "bm25(documents_fts, 5.0, 1.0) AS rank "
                "FROM documents_fts JOIN documents d ON d.id = documents_fts.rowid "
                "WHERE documents_fts MATCH ? ORDER BY rank LIMIT ?",
                (match, limit),
            ).fetchall()
        return [Hit(r[0], r[1], r[2], " ".join(r[3].split()), -r[4]) for r in rows]

    def open(self, doc_id: int, offset: int = 0) -> str:
        """One page of a document, with where it sits in the whole and the next offset."""
        with self._lock:
            row = self._db.execute(
                "SELECT title, path, body FROM documents WHERE id = ?", (doc_id,)
            ).fetchone()
        if row is None:
            raise KeyError(f"there is no document {doc_id}; use an id from search results")
        title, path, body = row
        return page_of(body, offset, self.page_chars, f"[{doc_id}] {title} ({path})")

    def tools(self) -> list[Tool]:
        """``search(query, limit)`` and ``open(id, offset)`` as tools for an agent."""
        index = self

        @tool(name="search")
        def search(query: str, limit: int = 8) -> str:
            """Full-text search of the local document collection, best matches first.

            Args:
                query: words to look for.
                limit: how many hits to return (1-25).
            """
            hits = index.search(query, max(1, min(limit, 25)))
            if not hits:
                return "No documents match. Try other or fewer words."
            return "\n".join(f"[{h.id}] {h.title} — {h.snippet}" for h in hits)

        @tool(name="open")
        def open_document(id: int, offset: int = 0) -> str:
            """Read a document found by search, one page at a time.

            Args:
                id: the number in brackets from a search hit.
                offset: character offset to start from (the previous page says the next one).
            """
            return index.open(id, max(0, offset))

        return [search, open_document]


def page_of(text: str, offset: int, size: int, header: str) -> str:
    """A page of ``text`` from ``offset``, headed with its place in the whole."""
    total = len(text)
    if offset >= total and total:
        return f"{header}\n[offset {offset} is past the end ({total:,} characters)]"
    end = min(total, offset + size)
    if end < total:  # end on a line or word boundary when one is close
        cut = max(text.rfind("\n", offset, end), text.rfind(" ", offset, end))
        if cut > offset + size // 2:
            end = cut + 1
    where = f"characters {offset:,}–{end:,} of {total:,}"
    more = f"; next offset {end}" if end < total else "; end of document"
    return f"{header}\n[{where}{more}]\n{text[offset:end]}"


def read_document(file: Path) -> tuple[str, str]:
    """(title, text) of one file."""
    suffix = file.suffix.lower()
    if suffix in HTML_SUFFIXES:
        raw = file.read_bytes().decode("utf-8", errors="replace")
        title, text = extract_html(raw)
        return title or file.stem, text
    if suffix in PDF_SUFFIXES:
        title, text = extract_pdf(file.read_bytes())
        return title or file.stem, text
    text = file.read_text(encoding="utf-8")
    return _first_heading(text) or file.stem, text


def _first_heading(text: str) -> str | None:
    for line in text.splitlines()[:20]:
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return None


def _like_prefix(root: str) -> str:
    escaped = root.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.rstrip("/") + "/%"


__all__ = ["Hit", "IndexReport", "LocalIndex", "page_of", "read_document"]
