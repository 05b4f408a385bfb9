"""Readers: files on disk -> `Document` records, or a `ReadFailure` for whatever cannot be read.

Plain text, Markdown, HTML and PDF files hold one document each; JSONL and Parquet files are containers of many
records, one document each. Every reader returns text in one canonical form (`normalize_text`) and spans (`units`,
``meta["headings"]``, ``meta["pages"]``) that are exact character offsets into that text. No reader raises for bad
input: an unreadable file or record becomes a `ReadFailure` with a human reason, so one bad file never stops an ingest.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import re
import stat
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, BinaryIO

from bs4 import BeautifulSoup
from bs4.dammit import EncodingDetector
from bs4.element import NavigableString, PreformattedString, Tag
from charset_normalizer import from_bytes

from preprocess_model.document import Document, ReadFailure, Span, sha256_hex, stable_id


@dataclass(frozen=True)
class ReaderConfig:
    """Which files a folder walk picks, where container records keep their fields, and how large an input may be.

    Globs are fnmatch patterns, tried on a file's path relative to the walked folder and on its name.
    """

    include: tuple[str, ...] = ()  # globs a file found in a folder must match; empty: every supported file
    exclude: tuple[str, ...] = ()  # globs that skip a file found in a folder, or prune a subfolder; after include
    text_field: str = "text"  # JSONL key / Parquet column that holds a record's text
    id_field: str = "id"  # JSONL key / Parquet column of a record's id; without it, an id from the file and position
    title_field: str = "title"  # JSONL key / Parquet column of a record's title; without it, ""
    max_bytes: int = 50_000_000  # larger files (and container records) are skipped and reported, checked before reading


SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl", ".parquet"})
_CONTAINER_SUFFIXES = frozenset({".jsonl", ".parquet"})
_TITLE_MAX_CHARS = 200
_SMALL_FIELD_MAX_CHARS = 200  # longer string fields of a record are content, not metadata worth copying into meta
_CP1252_CHAOS_MARGIN = 0.05  # see _guess_decode; measured on short French, German, Spanish and Central European text
_SNIFF_BYTES = 8192  # how far to look for NUL bytes that mark a binary file
_PARQUET_BATCH_ROWS = 64  # bounds memory: at most this many records (each <= max_bytes) are decoded at once

# text, title, meta: what a single-document parser makes of a file's bytes
_Parsed = tuple[str, str, dict[str, Any]]


class _Unreadable(Exception):
    """Raised inside a reader with the human reason an input cannot be read; `read_file` turns it into a ReadFailure."""


# ---------------------------------------------------------------------------------------------------- text and spans

# Everything str.splitlines() treats as a line end becomes "\n", so that text.split("\n") and text.splitlines()
# agree and a form feed (a page break in text dumps) does not glue two lines together.
_LINE_BREAKS = re.compile(r"\r\n|[\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# Control characters but \t and \n; byte-order marks anywhere (stray ones appear where files were concatenated);
# lone surrogates (JSON "\ud800" escapes), which cannot be written as UTF-8.
_UNWANTED_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_BLANK_LINE_RUNS = re.compile(r"\n{3,}")


def normalize_text(s: str) -> str:
    """The one canonical form of document text.

    Strips byte-order marks, turns every line break into "\\n", drops control characters but "\\t" and "\\n", applies
    Unicode NFC, strips trailing whitespace from each line, leaves at most one blank line in a row and no blank line at
    either end. Idempotent; normalized blocks joined with "\\n" or "\\n\\n" are normalized text as well.
    """
    s = _LINE_BREAKS.sub("\n", s)
    # Unwanted characters go before NFC: removing one may bring a base letter and a combining mark together.
    s = unicodedata.normalize("NFC", _UNWANTED_CHARS.sub("", s))
    s = "\n".join(line.rstrip() for line in s.split("\n")).strip("\n")
    return _BLANK_LINE_RUNS.sub("\n\n", s)


def _line_spans(text: str) -> list[Span]:
    """The span of every non-empty line of ``text``."""
    spans: list[Span] = []
    start = 0
    for line in text.split("\n"):
        if line:
            spans.append((start, start + len(line)))
        start += len(line) + 1
    return spans


def _join_blocks(blocks: Iterable[str], sep: str) -> tuple[str, list[Span]]:
    """Normalize each block, join the non-empty ones with ``sep``, and say where each block landed in the result.

    Text and spans are built together so every span is exact; an empty block gets an empty span where it would be.
    """
    parts: list[str] = []
    spans: list[Span] = []
    end = 0
    for block in blocks:
        block = normalize_text(block)
        if block:
            start = end + len(sep) if parts else 0
            end = start + len(block)
            parts.append(block)
            spans.append((start, end))
        else:
            spans.append((end, end))
    return sep.join(parts), spans


def _clean_title(s: str) -> str:
    return " ".join(s.split())[:_TITLE_MAX_CHARS]


def _first_line(text: str) -> str:
    """Normalized text has no leading blank line, so its first line is its first non-empty one."""
    return _clean_title(text.partition("\n")[0])


# ---------------------------------------------------------------------------------------------------------- decoding

# UTF-32 comes first: its little-endian BOM begins with the UTF-16 one.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(raw: bytes, declared: str | None = None) -> str:
    """The text of a text-format file: by its byte-order mark, else strict UTF-8, else the encoding the file declares
    (an HTML ``<meta charset>``), else charset_normalizer's guess. Raises _Unreadable for binary or undecodable bytes.
    """
    for bom, codec in _BYTE_ORDER_MARKS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise _Unreadable(f"undecodable text: invalid {codec} after its byte-order mark: {exc.reason}") from exc
    if b"\0" in raw[:_SNIFF_BYTES]:
        raise _Unreadable(f"binary content: NUL bytes in the first {_SNIFF_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            return raw.decode(_browser_codec(declared))
        except (LookupError, UnicodeDecodeError):
            pass  # an unknown or wrong declaration: guess instead
    return _guess_decode(raw)


def _browser_codec(label: str) -> str:
    """Browsers decode pages labelled latin-1 or ASCII as windows-1252 (WHATWG Encoding standard); so do we, or the
    curly quotes and euro signs such pages hold in 0x80-0x9F would become control characters and be dropped."""
    name = codecs.lookup(label).name
    return "cp1252" if name in ("iso8859-1", "ascii") else name


def _guess_decode(raw: bytes) -> str:
    matches = from_bytes(raw)
    best = matches.best()
    if best is None:
        raise _Unreadable("undecodable text: no plausible character encoding")
    # On Western European text charset_normalizer scores cp1252 about level with cp1250 or cp1257 and often returns
    # one of those, turning "à" into "ŕ" or "ą". Prefer cp1252, by far the most common legacy encoding, when it scores
    # nearly as well; the price is Hungarian cp1250 text, which ties with cp1252 and is then misread in a few letters.
    for match in matches:
        close = match.chaos <= best.chaos + _CP1252_CHAOS_MARGIN and match.coherence >= best.coherence
        if close and "cp1252" in match.could_be_from_charset:
            return raw.decode("cp1252")
    return str(best)


# ----------------------------------------------------------------------------------------- single-document formats


def _parse_txt(raw: bytes) -> _Parsed:
    text = normalize_text(decode_text(raw))
    return text, _first_line(text), {"format": "txt"}


_ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_CODE_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def _parse_markdown(raw: bytes) -> _Parsed:
    text = normalize_text(decode_text(raw))
    headings = _markdown_headings(text)
    title = _clean_title(text[headings[0][0] : headings[0][1]]) if headings else _first_line(text)
    return text, title, {"format": "markdown", "headings": headings}


def _markdown_headings(text: str) -> list[list[int]]:
    """[start, end, level] of each heading's text: ATX ("## Title") and setext (a line underlined by === or ---).

    Lines inside fenced code blocks are skipped: a "# comment" in a shell snippet is not a heading. Only a one-line
    paragraph is taken for a setext heading, so that "---" under a long paragraph does not turn its last line into one.
    """
    lines = text.split("\n")
    headings: list[list[int]] = []
    fence = ""  # the marker of the open code fence, "" outside code blocks
    start = 0
    for i, line in enumerate(lines):
        line_start, start = start, start + len(line) + 1
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = ""
            continue
        if fence_match := _CODE_FENCE.match(line):
            fence = fence_match.group(1)
        elif atx := _ATX_HEADING.match(line):
            headings.append([line_start + atx.start(2), line_start + atx.end(2), len(atx.group(1))])
        elif (
            line.strip()
            and not line.startswith("    ")
            and not _SETEXT_UNDERLINE.match(line)
            and (i == 0 or not lines[i - 1])
            and i + 1 < len(lines)
            and (underline := _SETEXT_UNDERLINE.match(lines[i + 1]))
        ):
            indent = len(line) - len(line.lstrip())
            headings.append([line_start + indent, line_start + len(line), 1 if underline.group(1)[0] == "=" else 2])
    return headings


# Elements that never hold main text: code, styling, embedded objects, navigation and form controls.
_HTML_DROPPED = ["script", "style", "noscript", "template", "svg", "iframe", "object", "embed", "canvas", "nav"]
_HTML_DROPPED += ["input", "button", "select", "textarea"]
_HTML_CHROME = ["header", "footer", "aside"]  # page chrome, dropped when the page has no <main> or <article>
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HTML_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "hr", "html", "legend",
    "li", "main", "menu", "ol", "p", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "ul",
})


def _parse_html(raw: bytes) -> _Parsed:
    declared = EncodingDetector.find_declared_encoding(raw, is_html=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bs4 warns about input that looks like XML or a file name; it parses fine
        soup = BeautifulSoup(decode_text(raw, declared), "lxml")
    _decompose(soup.find_all(_HTML_DROPPED))
    title_tag = soup.find("title")
    title = _clean_title(title_tag.get_text()) if title_tag else ""
    if soup.head:
        soup.head.decompose()

    main = soup.find("main")
    roots = [main] if main else [a for a in soup.find_all("article") if a.find_parent("article") is None]
    if not roots:
        body = soup.body or soup
        _decompose(tag for tag in body.find_all(_HTML_CHROME) if tag.find_parent("section") is None)
        roots = [body]
    collector = _HtmlText()
    for root in roots:
        collector.walk(root)
        collector.flush()

    text, spans = _join_blocks((block for block, _ in collector.blocks), "\n")
    headings = [[s, e, level] for (s, e), (_, level) in zip(spans, collector.blocks) if level and e > s]
    if not title and (h1 := next((h for h in headings if h[2] == 1), None)):
        title = _clean_title(text[h1[0] : h1[1]])
    return text, title, {"format": "html", "headings": headings}


def _decompose(tags: Iterable[Tag]) -> None:
    for tag in list(tags):
        if not tag.decomposed:  # already gone with an ancestor
            tag.decompose()


class _HtmlText:
    """Collects the text of an HTML tree as blocks: one line per block element, inline text joined as a browser would.

    ``blocks`` holds (text, heading level), level 0 for text that is not a heading. List items start with "- "
    (indented two spaces per enclosing list item), table rows are their cells joined by " | ", <pre> keeps its lines.
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[str, int]] = []
        self._inline: list[str] = []  # the strings of the line being built
        self._prefix = ""  # the list marker that the next line starts with

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, PreformattedString):  # comments, doctype, CDATA, processing instructions
                    self._inline.append(str(child))
            elif child.name == "br":
                self.flush()
            elif child.name == "pre":
                self.add(child.get_text())
            elif child.name in _HTML_HEADINGS:
                self.add(_flat_text(child), _HTML_HEADINGS[child.name])
            elif child.name == "tr":
                cells = (_flat_text(cell) for cell in child.find_all(["td", "th"], recursive=False))
                self.add(" | ".join(cell for cell in cells if cell))
            elif child.name == "li":
                self.flush()
                self._prefix = "  " * len(child.find_parents("li")) + "- "
                self.walk(child)
                self.flush()
                self._prefix = ""
            elif child.name in _HTML_BLOCKS:
                self.flush()
                self.walk(child)
                self.flush()
            else:
                self.walk(child)

    def add(self, text: str, level: int = 0) -> None:
        """End the current line, then add ``text`` as a block of its own."""
        self.flush()
        if text.strip():
            self.blocks.append((text, level))

    def flush(self) -> None:
        """End the line being built; whitespace runs inside it collapse to one space, as a browser renders them."""
        line = " ".join("".join(self._inline).split())
        self._inline.clear()
        if line:
            self.blocks.append((self._prefix + line, 0))
            self._prefix = ""


def _flat_text(tag: Tag) -> str:
    """A tag's text on one line (for headings and table cells): its blocks joined by spaces."""
    collector = _HtmlText()
    collector.walk(tag)
    collector.flush()
    return " ".join(" ".join(block.split()) for block, _ in collector.blocks)


def _parse_pdf(raw: bytes) -> _Parsed:
    # Imported here, like pyarrow, so that only reading a PDF pays for the import.
    from pypdf import PdfReader

    with _quiet_pypdf():
        reader = PdfReader(io.BytesIO(raw), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except Exception as exc:  # e.g. AES encryption without the optional `cryptography` package
                raise _Unreadable(f"encrypted PDF: cannot decrypt ({type(exc).__name__}: {exc})") from exc
            if not opened:
                raise _Unreadable("encrypted PDF: a password is needed to open it")
        page_texts = [page.extract_text() or "" for page in reader.pages]
        title = _pdf_title(reader)
    text, pages = _join_blocks(page_texts, "\n\n")
    if not text:
        raise _Unreadable("no extractable text (scanned PDF?)")
    return text, title or _first_line(text), {"format": "pdf", "pages": [list(page) for page in pages]}


def _pdf_title(reader: Any) -> str:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # noqa: BLE001 -- a broken info dictionary costs the title, not the document
        return ""
    return _clean_title(title) if isinstance(title, str) else ""


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """pypdf logs a warning for every small defect it repairs; a failure is reported as a ReadFailure anyway."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_PARSERS: dict[str, Callable[[bytes], _Parsed]] = {
    ".txt": _parse_txt, ".md": _parse_markdown, ".markdown": _parse_markdown, ".html": _parse_html, ".htm": _parse_html,
    ".pdf": _parse_pdf,
}


def _read_single(path: Path, size: int, parse: Callable[[bytes], _Parsed], config: ReaderConfig) -> Document:
    if size > config.max_bytes:
        raise _Unreadable(f"too large: {size} bytes > max_bytes {config.max_bytes}")
    with path.open("rb") as f:
        raw = f.read(config.max_bytes + 1)  # one byte more catches a file that grew after the stat
    if len(raw) > config.max_bytes:
        raise _Unreadable(f"too large: more than max_bytes {config.max_bytes} bytes")
    if not raw:
        raise _Unreadable("empty file")
    text, title, meta = parse(raw)
    if not text:
        raise _Unreadable("empty: no text left after extraction and normalization")
    return Document(file_doc_id(path), _resolved(path), text, sha256_hex(raw), title, meta, _line_spans(text))


# ------------------------------------------------------------------------------------------------------- containers


def _read_jsonl(path: Path, config: ReaderConfig) -> Iterator[Document | ReadFailure]:
    """One document per JSON object line, streamed: no more than one line (at most max_bytes) is held at a time."""
    source = _resolved(path)
    with path.open("rb") as f:
        for lineno, line in enumerate(iter(lambda: f.readline(config.max_bytes + 1), b""), start=1):
            where = f"{source}:{lineno}"
            if len(line) > config.max_bytes and not line.endswith(b"\n"):
                size = len(line) + _skip_rest_of_line(f)
                yield ReadFailure(where, f"too large: line of {size} bytes > max_bytes {config.max_bytes}")
                continue
            # The hash leaves out the line end, so that a record keeps its hash when the file's line ends change.
            record_bytes = line.rstrip(b"\r\n")
            if not record_bytes.strip():
                continue
            try:
                record = json.loads(record_bytes)
            except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
                yield ReadFailure(where, f"malformed JSON line: {exc}")
                continue
            yield _record_document(record, source, where, f"line{lineno}", record_bytes, "jsonl", config)


def _skip_rest_of_line(f: BinaryIO) -> int:
    """Read past the rest of the current line in 1 MiB steps, never holding it whole; returns the bytes skipped."""
    skipped = 0
    while chunk := f.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _read_parquet(path: Path, config: ReaderConfig) -> Iterator[Document | ReadFailure]:
    """One document per row, read in small batches of only the columns needed, so memory stays bounded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = _resolved(path)
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise _Unreadable(f"not a readable Parquet file: {exc}") from exc
    with parquet:
        names = parquet.schema_arrow.names
        if config.text_field not in names:
            raise _Unreadable(f"no text column {config.text_field!r}; columns: {', '.join(names)}")
        wanted = dict.fromkeys((config.text_field, config.id_field, config.title_field))
        row = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[c for c in wanted if c in names]):
            for record in batch.to_pylist():
                yield _record_document(record, source, f"{source}:row{row}", f"row{row}", None, "parquet", config)
                row += 1


def _record_document(
    record: Any, source: str, where: str, position: str, raw: bytes | None, fmt: str, config: ReaderConfig
) -> Document | ReadFailure:
    """One container record as a Document, or a ReadFailure located at ``where``.

    ``position`` ("line7", "row6") makes the id of a record without one; ``raw`` is the record's bytes for the hash,
    None where the format has no per-record bytes (Parquet): then text, id and title are hashed.
    """
    if not isinstance(record, dict):
        return ReadFailure(where, f"record is not a JSON object but {type(record).__name__}")
    given_id = record.get(config.id_field)
    doc_id = stable_id(source, position) if given_id in (None, "") else str(given_id)
    text = record.get(config.text_field)
    if not isinstance(text, str):
        return ReadFailure(where, f"missing or non-string text field {config.text_field!r}", doc_id)
    given_title = record.get(config.title_field)
    title = given_title if isinstance(given_title, str) else ""
    if raw is None:
        raw = f"{text}\x1f{doc_id}\x1f{title}".encode("utf-8", "surrogatepass")
        if len(raw) > config.max_bytes:
            return ReadFailure(where, f"too large: record of {len(raw)} bytes > max_bytes {config.max_bytes}", doc_id)
    body = normalize_text(text)
    if not body:
        return ReadFailure(where, "empty: no text left after normalization", doc_id)
    meta: dict[str, Any] = {"format": fmt}
    named = (config.text_field, config.id_field, config.title_field)
    fields = {key: value for key, value in record.items() if key not in named and _is_small_scalar(value)}
    if fields:
        meta["fields"] = fields
    return Document(doc_id, f"{source}#{doc_id}", body, sha256_hex(raw), _clean_title(title), meta, _line_spans(body))


def _is_small_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _SMALL_FIELD_MAX_CHARS
    return isinstance(value, (bool, int, float))


# ------------------------------------------------------------------------------------------------------- public API


def is_container(path: Path) -> bool:
    """True for formats that hold many documents per file (JSONL, Parquet)."""
    return Path(path).suffix.lower() in _CONTAINER_SUFFIXES


def _resolved(path: Path) -> str:
    # os.path.realpath, unlike Path.resolve on Python < 3.13, does not raise on a symlink loop.
    return os.path.realpath(path)


def file_doc_id(path: Path) -> str:
    """The doc_id of a single-document file: derived from its absolute, symlink-free path (which is its `source`)."""
    return stable_id(_resolved(path))


def iter_files(paths: Iterable[str | Path], config: ReaderConfig = ReaderConfig()) -> Iterator[Path | ReadFailure]:
    """The files to read under ``paths``, each once.

    A file named directly is yielded whatever the globs (a ReadFailure if its type is unsupported). A folder is walked
    recursively in sorted order: hidden entries (".name") are skipped, symlinked folders are not followed, files of an
    unsupported type are ignored silently, and ``config.include`` / ``config.exclude`` select the rest.
    """
    seen: set[str] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found: Iterable[Path | ReadFailure] = _walk(path, path, config)
        elif not os.path.lexists(path):  # a symlink that leads nowhere is yielded, for read_file to say why
            found = [ReadFailure(_resolved(path), "no such file or directory")]
        elif path.suffix.lower() not in SUPPORTED_SUFFIXES:
            found = [ReadFailure(_resolved(path), f"unsupported file type {path.suffix or '(no suffix)'}")]
        else:
            found = [path]
        for item in found:
            if isinstance(item, Path):
                key = _resolved(item)
                if key in seen:
                    continue
                seen.add(key)
            yield item


def _walk(root: Path, folder: Path, config: ReaderConfig) -> Iterator[Path | ReadFailure]:
    try:
        with os.scandir(folder) as entries:
            listing = sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        yield ReadFailure(_resolved(folder), f"cannot list folder: {exc.strerror or exc}")
        return
    for entry in listing:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix()
        if entry.is_dir(follow_symlinks=False):
            if not _matches(relative, entry.name, config.exclude):
                yield from _walk(root, path, config)
            continue
        selected = not config.include or _matches(relative, entry.name, config.include)
        selected = selected and not _matches(relative, entry.name, config.exclude)
        if selected and path.suffix.lower() in SUPPORTED_SUFFIXES:
            try:
                if entry.is_file():
                    yield path
            except OSError as exc:  # a symlink loop, say
                yield ReadFailure(_resolved(path), f"cannot read: {exc.strerror or exc}")


def _matches(relative: str, name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(relative, pattern) or fnmatch(name, pattern) for pattern in patterns)


def read_file(path: str | Path, config: ReaderConfig = ReaderConfig()) -> Iterator[Document | ReadFailure]:
    """The documents of one file: one for a single-document format, one per record for a container.

    Never raises for bad input: every problem (unsupported type, size, permissions, encoding, parser errors) is
    yielded as a ReadFailure with a human reason; a container yields its good records and a failure per bad one.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    container = suffix in _CONTAINER_SUFFIXES
    doc_id = None if container else file_doc_id(path)
    try:
        if suffix not in SUPPORTED_SUFFIXES:
            raise _Unreadable(f"unsupported file type {suffix or '(no suffix)'}")
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a folder, or a FIFO or device that could block forever
            raise _Unreadable("not a regular file")
        if container:
            yield from _read_container(path, config)
        else:
            yield _read_single(path, status.st_size, _PARSERS[suffix], config)
    except _Unreadable as exc:
        yield ReadFailure(_resolved(path), str(exc), doc_id)
    except OSError as exc:
        yield ReadFailure(_resolved(path), f"cannot read: {exc.strerror or exc}", doc_id)
    except Exception as exc:  # noqa: BLE001 -- a malformed file no parser anticipated: report it, never stop the caller
        yield ReadFailure(_resolved(path), f"unreadable {suffix[1:]} file: {type(exc).__name__}: {exc}", doc_id)


def _read_container(path: Path, config: ReaderConfig) -> Iterator[Document | ReadFailure]:
    records = _read_jsonl(path, config) if path.suffix.lower() == ".jsonl" else _read_parquet(path, config)
    empty = True
    for item in records:
        empty = False
        yield item
    if empty:
        raise _Unreadable("empty: no records")


def read_paths(paths: Iterable[str | Path], config: ReaderConfig = ReaderConfig()) -> Iterator[Document | ReadFailure]:
    """Every document under ``paths`` (files and folders, see `iter_files`), with a ReadFailure for each problem."""
    for item in iter_files(paths, config):
        if isinstance(item, ReadFailure):
            yield item
        else:
            yield from read_file(item, config)
