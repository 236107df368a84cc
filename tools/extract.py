"""Main-content extraction: HTML to Markdown-ish text with trafilatura, PDF to text with pypdf.

Both are optional extras (``pip install "agentloop[web]"`` / ``"agentloop[pdf]"``) so the core
package stays light; a missing one raises ``ImportError`` saying what to install.
"""

from __future__ import annotations

import io


class ExtractionError(ValueError):
    """A document the extractor could not read (a damaged PDF, say); the message says why."""


def extract_html(html: str, url: str | None = None) -> tuple[str | None, str]:
    """(title, main text as Markdown) of an HTML page; boilerplate (navigation, footers, cookie
    banners) is dropped. Falls back to all visible text when no main content is found."""
    try:
        import trafilatura
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('reading HTML needs the web extra: pip install "agentloop[web]"') from exc
    text = trafilatura.extract(
        html,
        url=url,
        output_format="markdown",
        include_tables=True,
        include_links=False,
        include_comments=False,
        favor_recall=True,
    )
    if not text:
        text = trafilatura.html2txt(html) or ""
    metadata = trafilatura.extract_metadata(html)
    title = metadata.title if metadata is not None else None
    return title, text.strip()


def extract_pdf(data: bytes) -> tuple[str | None, str]:
    """(title, text) of a PDF, page by page."""
    try:
        from pypdf import PdfReader
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('reading PDF needs the pdf extra: pip install "agentloop[pdf]"') from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        title = reader.metadata.title if reader.metadata else None
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds of error on damaged files
        raise ExtractionError(f"cannot read the PDF: {type(exc).__name__}: {exc}") from exc
    return (str(title) if title else None), "\n\n".join(p.strip() for p in pages if p.strip())
