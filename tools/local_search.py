"""Local search: a folder of documents in an on-disk SQLite FTS5 index, ranked by BM25.

    index = LocalIndex("corpus.db")
    index.add_folder("docs/")            # incremental: only new or changed files are read
    agent = Agent(model, tools=index.tools())   # search(query, limit) and open(id, offset)

Text, Markdown and reStructuredText are read as they are; HTML goes through the same main-content
extractor as ``fetch`` (the ``web`` extra); PDF needs the ``pdf`` extra. SQLite (with FTS5) is in
Python's standard library, so the default needs nothing installed.

Chinese, Japanese, Korean, Thai and other text written without spaces is also indexed as
overlapping character pairs (and single characters) in a second FTS5 table, so ``北京`` finds
``北京是中国的首都。``; a query's runs of such text are searched the same way, the whole run as a
phrase too, so documents with the exact string rank first. English is searched and ranked as
before. A damaged file, a file over ``max_file_bytes`` and a symbolic link leading out of the
folder are skipped and listed in ``IndexReport.skipped``; a missing folder raises
``FolderNotFoundError``.
"""

from __future__ import annotations

import os
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
DEFAULT_MAX_FILE_BYTES = 20_000_000  # larger files are skipped (and reported), never read

# Scripts written without spaces between words: Han, kana, Hangul, Thai, Lao, Khmer, Myanmar
# (letters and marks only, so punctuation ends a run).
_UNSPACED = re.compile(
    "["
    "\u0e01-\u0e2e\u0e30-\u0e3a\u0e40-\u0e4e"  # Thai
    "\u0e81-\u0ecd"  # Lao
    "\u1000-\u1049"  # Myanmar
    "\u1100-\u11ff\u3131-\u318e\uac00-\ud7a3"  # Hangul
    "\u1780-\u17d3"  # Khmer
    "\u3005-\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"  # Han, kana
    "\U00020000-\U0003134f"  # Han extensions
    "]+"
)

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
-- text without spaces, as character pairs and single characters (see segment_unspaced)
CREATE VIRTUAL TABLE IF NOT EXISTS documents_cjk USING fts5(
    title, body, tokenize='unicode61 remove_diacritics 0'
);
"""


class FolderNotFoundError(FileNotFoundError):
    """``add_folder`` was given a folder that does not exist."""


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
        had_cjk = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'documents_cjk'"
        ).fetchone()
        self._db.executescript(_SCHEMA)
        if not had_cjk:  # an index from before CJK support: segment what it holds
            with self._db:
                for doc_id, title, body in self._db.execute(
                    "SELECT id, title, body FROM documents"
                ):
                    self._insert_unspaced(doc_id, title, body)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- indexing ----------------------------------------------------------------------------
    def add_folder(
        self,
        folder: str | Path,
        *,
        suffixes: Iterable[str] | None = None,
        follow_symlinks: bool = False,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> IndexReport:
        """Index every matching file under ``folder``; re-read only files whose size or mtime
        changed, and drop documents whose file under ``folder`` is gone.

        Files that cannot be read (undecodable text, a damaged PDF), files larger than
        ``max_file_bytes`` (never read) and symbolic links that lead outside ``folder`` are
        skipped and listed in ``IndexReport.skipped``; ``follow_symlinks=True`` follows such
        links. Links that stay inside ``folder`` are not followed either: what they point to is
        indexed under its own path. Raises ``FolderNotFoundError`` if ``folder`` does not exist
        and ``NotADirectoryError`` if it is a file."""
        given = Path(folder)
        root = given.resolve()
        if not root.exists():
            raise FolderNotFoundError(
                f"{given} does not exist: add_folder needs an existing folder of documents "
                f"(check the path; a relative one is taken from {Path.cwd()})"
            )
        if not root.is_dir():
            raise NotADirectoryError(
                f"{given} is not a folder: pass the folder that holds it, or index a single "
                "text with add_text"
            )
        wanted = set(suffixes) if suffixes else TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES
        report = IndexReport(skipped=[])
        seen: set[str] = set()
        files = _files_under(root, wanted, follow_symlinks, report.skipped)
        with self._lock, self._db:
            known = {
                row[0]: (row[1], row[2], row[3])
                for row in self._db.execute(
                    "SELECT path, id, mtime_ns, size FROM documents WHERE path LIKE ? ESCAPE '\\'",
                    (_like_prefix(str(root)),),
                )
            }
            for file in files:
                key = str(file)
                seen.add(key)
                try:
                    stat = file.stat()
                except OSError as exc:  # gone or unreadable since the walk
                    report.skipped.append((key, str(exc)))
                    continue
                old = known.get(key)
                if old and old[1] == stat.st_mtime_ns and old[2] == stat.st_size:
                    report.unchanged += 1
                    continue
                if stat.st_size > max_file_bytes:
                    report.skipped.append((key, _too_big(stat.st_size, max_file_bytes)))
                    continue
                try:
                    title, body = read_document(file, max_bytes=max_file_bytes)
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
        self._insert_unspaced(new_id, title, body)
        return new_id

    def _insert_unspaced(self, doc_id: int, title: str, body: str) -> None:
        title_terms, body_terms = segment_unspaced(title), segment_unspaced(body)
        if title_terms or body_terms:
            self._db.execute(
                "INSERT INTO documents_cjk (rowid, title, body) VALUES (?, ?, ?)",
                (doc_id, title_terms, body_terms),
            )

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
        self._db.execute("DELETE FROM documents_cjk WHERE rowid = ?", (doc_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM documents").fetchone()[0])

    # -- reading -----------------------------------------------------------------------------
    def search(self, query: str, limit: int = 10) -> list[Hit]:
        """BM25-ranked hits for the words of ``query`` (any of them; more matches rank higher).
        Free text is safe: it is turned into quoted terms, never parsed as FTS5 syntax. Runs of
        text without spaces (Chinese, Japanese, ...) match by character pairs, and the whole
        run as a phrase, so a document holding the exact string ranks above scattered pairs."""
        runs = list(dict.fromkeys(_UNSPACED.findall(query)))
        words = re.findall(r"\w+", _UNSPACED.sub(" ", query).lower())
        terms = [t for t in words if len(t) > 1]
        if not terms and not runs:
            return []
        match = " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))
        if not runs:  # the plain BM25 query
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
        # Both tables, BM25 each; a document's score is the sum. Documents with a whole match (an
        # exact run, or an English word) rank above those with only some pairs of a run.
        selects = {
            "whole": ("documents_cjk", _whole_match(runs), "NULL", 1),
            "part": ("documents_cjk", _pair_match(runs), "NULL", 0),
            "en": ("documents_fts", match, "snippet(documents_fts, 1, '**', '**', ' … ', 24)", 1),
        }
        ctes, params = [], []
        for name, (table, expression, snip, whole) in selects.items():
            if expression:
                ctes.append(
                    f"{name} AS MATERIALIZED (SELECT rowid AS id, bm25({table}, 5.0, 1.0) AS rank, "
                    f"{snip} AS snip, {whole} AS whole FROM {table} WHERE {table} MATCH ?)"
                )
                params.append(expression)
        hits = " UNION ALL ".join(f"SELECT * FROM {c.split()[0]}" for c in ctes)
        with self._lock:
            rows = self._db.execute(
                f"WITH {', '.join(ctes)} "
                "SELECT d.id, d.title, d.path, max(h.snip), sum(h.rank) AS score, "
                "CASE WHEN max(h.snip) IS NULL THEN d.body END "
                f"FROM ({hits}) h JOIN documents d ON d.id = h.id "
                "GROUP BY d.id ORDER BY max(h.whole) DESC, score LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [
            Hit(r[0], r[1], r[2], " ".join((r[3] or _unspaced_snippet(r[5], runs)).split()), -r[4])
            for r in rows
        ]

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


def read_document(file: Path, *, max_bytes: int | None = None) -> tuple[str, str]:
    """(title, text) of one file; ``ValueError`` if it is longer than ``max_bytes``."""
    suffix = file.suffix.lower()
    data = _read_bytes(file, max_bytes)
    if suffix in HTML_SUFFIXES:
        title, text = extract_html(data.decode("utf-8", errors="replace"))
        return title or file.stem, text
    if suffix in PDF_SUFFIXES:
        title, text = extract_pdf(data)
        return title or file.stem, text
    text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    return _first_heading(text) or file.stem, text


def segment_unspaced(text: str) -> str:
    """The runs of ``text`` written without spaces as index terms: each run's overlapping
    character pairs in order, then its single characters (``北京市`` -> ``北京 京市 北 京 市``)."""
    terms: list[str] = []
    for run in _UNSPACED.findall(text):
        terms.extend(run[i : i + 2] for i in range(len(run) - 1))
        terms.extend(run)
    return " ".join(terms)


def _pairs(run: str) -> list[str]:
    return [run[i : i + 2] for i in range(len(run) - 1)]


def _whole_match(runs: list[str]) -> str:
    """An FTS5 query matching any of ``runs`` exactly: a character, a pair, or a longer run as
    the phrase of its pairs."""
    return " OR ".join('"' + (" ".join(_pairs(run)) or run) + '"' for run in runs)


def _pair_match(runs: list[str]) -> str:
    """An FTS5 query matching any pair of the runs longer than two characters."""
    pairs = dict.fromkeys(p for run in runs if len(run) > 2 for p in _pairs(run))
    return " OR ".join(f'"{p}"' for p in pairs)


def _unspaced_snippet(body: str | None, runs: list[str], width: int = 64) -> str:
    """A snippet of ``body`` around the first whole run of the query (else the first pair),
    with the matches in ``**bold**``, like FTS5's snippet for spaced text."""
    body = body or ""
    wholes = sorted(runs, key=len, reverse=True)
    pairs = sorted({p for r in runs for p in _pairs(r)} - set(runs))
    found: list[int] = []
    for candidates in (wholes, pairs):
        found = [i for i in (body.find(c) for c in candidates) if i >= 0]
        if found:
            break
    start = max(0, min(found) - width // 4) if found else 0
    end = min(len(body), start + width)
    marked = body[start:end]
    if found:
        marked = re.sub("|".join(map(re.escape, candidates)), r"**\g<0>**", marked)
    return ("… " if start else "") + marked + (" …" if end < len(body) else "")


def _read_bytes(file: Path, max_bytes: int | None) -> bytes:
    with open(file, "rb") as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(_too_big(os.fstat(handle.fileno()).st_size, max_bytes))
    return data


def _too_big(size: int, limit: int) -> str:
    return (
        f"{size:,} bytes is over the {limit:,}-byte limit; "
        "add_folder(..., max_file_bytes=...) raises it"
    )


def _files_under(
    root: Path, wanted: set[str], follow_symlinks: bool, skipped: list[tuple[str, str]]
) -> list[Path]:
    """The files to index under ``root`` (resolved), sorted, each real file once. Symbolic links
    that lead inside ``root`` are ignored (the target has its own path); those that lead outside
    are listed in ``skipped`` or, with ``follow_symlinks``, followed (cycles are walked once)."""
    claimed: set[str] = set()  # real paths of the files taken
    files: list[Path] = []
    links: list[Path] = []

    def walk(top: Path, real_top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            base = Path(dirpath)
            for name in dirnames + filenames:
                path = base / name
                if path.is_symlink():
                    links.append(path)
                elif name in filenames and path.suffix.lower() in wanted and path.is_file():
                    real = real_top / path.relative_to(top)
                    if str(real) not in claimed:
                        claimed.add(str(real))
                        files.append(path)

    walk(root, root)
    visited = {root}
    links.sort()
    while links:
        link = links.pop(0)
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop of links
            continue
        if target == root or root in target.parents:
            continue
        if not follow_symlinks:
            if target.is_dir() or link.suffix.lower() in wanted:
                skipped.append(
                    (
                        str(link),
                        f"a symbolic link to {target}, outside the folder; "
                        "add_folder(..., follow_symlinks=True) follows it",
                    )
                )
            continue
        if target.is_dir():
            if target not in visited:
                visited.add(target)
                walk(link, target)
        elif link.suffix.lower() in wanted and target.is_file() and str(target) not in claimed:
            claimed.add(str(target))
            files.append(link)
    return sorted(files)


def _first_heading(text: str) -> str | None:
    for line in text.splitlines()[:20]:
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return None


def _like_prefix(root: str) -> str:
    escaped = root.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.rstrip("/") + "/%"


__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "FolderNotFoundError",
    "Hit",
    "IndexReport",
    "LocalIndex",
    "page_of",
    "read_document",
    "segment_unspaced",
]
