"""Training data for the segmentation model: documents of known structure, rendered as real sources show them.

The segmentation model labels every unit of a document (`preprocess_model.units`: lines, or the sentences of long
lines) ``continue``, ``boundary``, ``heading`` or ``noise``. This module makes examples whose labels are known by
construction, never taken from the labels of an evaluation set:

1. **Structured documents.** A `StructuredDoc` is a title and `Block` s (headings, paragraphs, lists, tables, code),
   extracted from Markdown (`from_markdown`), HTML (`from_html`, which keeps the text of navigation, headers and
   footers aside as realistic noise) or paragraph corpora such as SQuAD (`from_paragraphs`); `structured_docs` walks
   files and reports what it cannot parse.
2. **Rendering.** `render` lays a document out as flat text with augmentations drawn once per document from
   `SynthConfig`: blank lines between blocks kept, removed or random; paragraphs hard-wrapped at a random width,
   sometimes hyphenated; pages with running headers and page numbers; navigation and boilerplate lines in English or
   French; headings as plain lines, ``## Markdown``, numbered ``2.1``, ALL CAPS or with a colon; lists with several
   markers; tables as pipe rows or aligned columns. Every line is created together with its role (content of segment
   *k*, heading, noise, blank), so label positions are exact however wrapping or hyphenation changed the text;
   nothing is searched for in the text afterwards.
3. **Labels.** The text is normalized by construction (``normalize_text(text) == text``, checked) and cut into units
   by `text_units`, exactly as at inference. A unit on a heading line is HEADING, on a noise line NOISE; a unit of
   segment content is BOUNDARY where it starts at the segment's first character, else CONTINUE. A segment is a
   paragraph; a list or table, with the short lead-in line ending in ":" just before it; a code block; or a run of
   very short paragraphs merged into one (so the model does not learn that every line is a boundary). A heading ends
   the segment before it. Gold segments are character spans from a segment's first to its last content character; a
   span may enclose noise lines (a page footer inside a paragraph), whose units stay NOISE.
4. **Datasets.** `make_examples` yields one row per (document, variant), seeded by ``(seed, doc_id, variant)`` so a
   row never depends on the order or presence of other documents; `write_dataset` writes Parquet with the config in
   its metadata; `split_by_doc` holds out whole documents; `label_counts` summarizes.

Example::

    failures: list[ReadFailure] = []
    rows = make_examples(structured_docs(["corpus/"], failures), SynthConfig(), seed=0, variants=4)
    train, held_out = split_by_doc(rows, held_out_fraction=0.1, seed=0)
    write_dataset(train, "data/segmentation/train.parquet", SynthConfig(), seed=0)
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from bs4 import BeautifulSoup
from bs4.dammit import EncodingDetector
from bs4.element import NavigableString, PreformattedString, Tag

from preprocess_model.document import ReadFailure, Span, stable_id
from preprocess_model.readers import ReaderConfig, decode_text, file_doc_id, iter_files, normalize_text
from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, LABELS, NOISE, text_units

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ structured records

BlockKind = Literal["heading", "paragraph", "list", "table", "code"]
_BLOCK_KINDS = ("heading", "paragraph", "list", "table", "code")


def _inline(s: str) -> str:
    """Text that lives on one line (a paragraph, heading, list item, table cell): normalized, whitespace collapsed."""
    return " ".join(normalize_text(s).split())


@dataclass(frozen=True)
class Block:
    """One structural element of a document; its text is cleaned on construction.

    kind:  "heading", "paragraph", "list", "table" or "code".
    text:  a heading's or paragraph's text (one line, whitespace collapsed), or a code block's lines (indentation kept).
    items: a list's items, each one line; empty items are dropped.
    rows:  a table's rows of cells; rows without any text are dropped.
    level: a heading's level, 1 (title) to 6; 0 for the other kinds.
    """

    kind: BlockKind
    text: str = ""
    items: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    level: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _BLOCK_KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; expected one of {_BLOCK_KINDS}")
        if self.kind == "heading" and not 1 <= self.level <= 6:
            raise ValueError(f"a heading's level must be 1 to 6, got {self.level}")
        # The dataclass is frozen so that a rendered document cannot change under its labels; cleaning happens once.
        object.__setattr__(self, "text", normalize_text(self.text) if self.kind == "code" else _inline(self.text))
        object.__setattr__(self, "items", tuple(item for item in map(_inline, self.items) if item))
        rows = (tuple(_inline(cell) for cell in row) for row in self.rows)
        object.__setattr__(self, "rows", tuple(row for row in rows if any(row)))

    @property
    def empty(self) -> bool:
        return not (self.text or self.items or self.rows)

    @property
    def chars(self) -> int:
        """The amount of text the block holds, for the short-paragraph rules."""
        return len(self.text) + sum(map(len, self.items)) + sum(len(cell) for row in self.rows for cell in row)

    def plain_lines(self) -> list[str]:
        """The block as plain lines: a list's items, a table's rows joined by " | ", a code block's lines."""
        if self.kind == "list":
            return list(self.items)
        if self.kind == "table":
            return [" | ".join(cell for cell in row if cell) for row in self.rows]
        return [line for line in self.text.split("\n") if line.strip()]


@dataclass
class StructuredDoc:
    """A document whose structure is known: the input of `render`.

    title:  one line (cleaned on construction); shown in running headers and breadcrumbs.
    chrome_top / chrome_bottom: lines of the page around the content (an HTML page's navigation and header, its footer
    and asides), used as realistic noise when the document is rendered as a web page; cleaned like the title.
    """

    doc_id: str
    title: str
    blocks: list[Block]
    source: str = ""
    chrome_top: tuple[str, ...] = ()
    chrome_bottom: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.title = _inline(self.title)
        self.chrome_top = tuple(line for line in map(_inline, self.chrome_top) if line)
        self.chrome_bottom = tuple(line for line in map(_inline, self.chrome_bottom) if line)


# ---------------------------------------------------------------------------------------------------------- Markdown

_MD_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_MD_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_MD_BREAK = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_MD_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_MD_ITEM = re.compile(r"[ \t]*(?:[-*+•]|\d{1,9}[.)])[ \t]+(\S.*)$")
# As in CommonMark, an ordered item interrupts a paragraph only if it is numbered 1: "1999. was a year" wraps.
_MD_ORDERED_NOT_ONE = re.compile(r"[ \t]*(?!1[.)])\d{1,9}[.)]")
_MD_TABLE_SEP = re.compile(r" {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_MD_QUOTE = re.compile(r" {0,3}>[ \t]?")
_MD_FRONT_MATTER_KEY = re.compile(r"[A-Za-z_][\w-]*:")
_MD_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def from_markdown(text: str, doc_id: str, title: str | None = None, source: str = "") -> StructuredDoc:
    """The blocks of a Markdown (or plain) text.

    ATX ("## Title") and setext (a one-line paragraph underlined by === or ---) headings; paragraphs separated by
    blank lines, their hard-wrapped lines joined; consecutive list items ("-", "*", "+", "•", "1.", "1)"), nested or
    loose, as one list; pipe tables (a row, then a |---| separator); fenced and indented code; block quotes as
    paragraphs; YAML front matter and thematic breaks skipped. Inline markup is kept, as a reader of the file keeps it.
    ``title``: given, else the first level-1 heading, else the first heading, else "".
    """
    lines = _strip_front_matter(normalize_text(text).split("\n"))
    blocks: list[Block] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            _append(blocks, Block("paragraph", " ".join(paragraph)))
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
        elif fence := _MD_FENCE.match(line):
            flush()
            i = _md_fenced_code(lines, i, fence.group(1), blocks)
        elif atx := _MD_ATX.match(line):
            flush()
            _append(blocks, Block("heading", atx.group(2), level=len(atx.group(1))))
            i += 1
        elif paragraph and _MD_SETEXT.match(line):
            if len(paragraph) == 1:  # a longer paragraph over "---" is a paragraph and a thematic break
                _append(blocks, Block("heading", paragraph[0], level=1 if line.strip()[0] == "=" else 2))
                paragraph.clear()
            flush()
            i += 1
        elif _MD_BREAK.match(line):
            flush()
            i += 1
        elif _MD_ITEM.match(line) and not (paragraph and _MD_ORDERED_NOT_ONE.match(line)):
            flush()
            i = _md_list(lines, i, blocks)
        elif "|" in line and i + 1 < len(lines) and "|" in lines[i + 1] and _MD_TABLE_SEP.match(lines[i + 1]):
            flush()
            i = _md_table(lines, i, blocks)
        elif not paragraph and line.startswith(("    ", "\t")):
            i = _md_indented_code(lines, i, blocks)
        else:
            quote = _MD_QUOTE.match(line)
            paragraph.append(line[quote.end() :] if quote else line)
            i += 1
    flush()
    return StructuredDoc(doc_id, _title(title, blocks), blocks, source)


def _append(blocks: list[Block], block: Block) -> None:
    if not block.empty:
        blocks.append(block)


def _title(given: str | None, blocks: Sequence[Block]) -> str:
    if given is not None:
        return given
    headings = [block for block in blocks if block.kind == "heading"]
    top = next((h for h in headings if h.level == 1), headings[0] if headings else None)
    return top.text if top else ""


def _strip_front_matter(lines: list[str]) -> list[str]:
    """Lines without a leading YAML front matter block (``---``, ``key: value`` lines, ``---`` or ``...``)."""
    if len(lines) < 3 or lines[0] != "---" or not _MD_FRONT_MATTER_KEY.match(lines[1]):
        return lines
    for end in range(2, len(lines)):
        if lines[end] in ("---", "..."):
            return lines[end + 1 :]
    return lines


def _md_fenced_code(lines: list[str], i: int, marker: str, blocks: list[Block]) -> int:
    """Add the code block opened at ``lines[i]``; returns the index after its closing fence (or the end)."""
    body: list[str] = []
    for j in range(i + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(marker) and not stripped.strip(marker[0]):
            _append(blocks, Block("code", "\n".join(body)))
            return j + 1
        body.append(lines[j])
    _append(blocks, Block("code", "\n".join(body)))  # an unclosed fence runs to the end, as in CommonMark
    return len(lines)


def _md_indented_code(lines: list[str], i: int, blocks: list[Block]) -> int:
    body: list[str] = []
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith(("    ", "\t"))):
        body.append(lines[i][4:] if lines[i].startswith("    ") else lines[i][1:])
        i += 1
    _append(blocks, Block("code", "\n".join(body)))
    return i


def _md_starts_block(line: str) -> bool:
    return bool(_MD_ATX.match(line) or _MD_FENCE.match(line) or _MD_BREAK.match(line) or _MD_QUOTE.match(line))


def _md_list(lines: list[str], i: int, blocks: list[Block]) -> int:
    """Add the list starting at ``lines[i]`` as one block; returns the index after it.

    Nested items become items of the same list; indented lines, and unindented ones right after an item, continue the
    item; a blank line ends the list unless an item or an indented line follows it.
    """
    items: list[str] = []
    after_blank = False
    while i < len(lines):
        line = lines[i]
        if item := _MD_ITEM.match(line):
            items.append(item.group(1))
        elif not line.strip():
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if not (_MD_ITEM.match(following) or following.startswith(("  ", "\t"))):
                break
            after_blank = True
            i += 1
            continue
        elif line.startswith(("  ", "\t")) or not (after_blank or _md_starts_block(line)):
            items[-1] = f"{items[-1]} {line.strip()}"
        else:
            break
        after_blank = False
        i += 1
    _append(blocks, Block("list", items=tuple(items)))
    return i


def _md_table(lines: list[str], i: int, blocks: list[Block]) -> int:
    """Add the pipe table whose header is ``lines[i]`` (its separator is the next line); returns the index after it."""
    rows = [_md_cells(lines[i])]
    i += 2
    while i < len(lines) and lines[i].strip() and "|" in lines[i]:
        rows.append(_md_cells(lines[i]))
        i += 1
    _append(blocks, Block("table", rows=tuple(rows)))
    return i


def _md_cells(line: str) -> tuple[str, ...]:
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return tuple(cell.replace("\\|", "|") for cell in _MD_CELL_SPLIT.split(row))


# -------------------------------------------------------------------------------------------------------------- HTML

# Never text: code, styling, embedded objects, form controls.
_HTML_SKIPPED = ["script", "style", "noscript", "template", "svg", "iframe", "object", "embed", "canvas"]
_HTML_SKIPPED += ["input", "button", "select", "textarea"]
# Page chrome: nav and aside always; header and footer unless they belong to an article, main content or section.
_HTML_CHROME = ["nav", "aside", "header", "footer"]
_HTML_CHROME_TOP = frozenset({"nav", "header"})
_HTML_CONTENT_ROOTS = ["article", "main", "section"]
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HTML_LISTS = ("ul", "ol")
_HTML_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "hr", "html", "legend",
    "li", "main", "menu", "ol", "p", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
})
_CHROME_MAX_LINES = 40  # more lines of navigation than this are a site map, not a page's chrome


def from_html(html: bytes | str, doc_id: str, title: str | None = None, source: str = "") -> StructuredDoc:
    """The blocks of an HTML page: h1-h6 headings, paragraphs (<p>, and loose text of other block elements), <ul>/<ol>
    lists (one block each, nested items flattened into it), tables (rows of <td>/<th> cells) and <pre> code.

    Navigation and page chrome (<nav>, <aside>, and <header>/<footer> outside <article>, <main> or <section>) are not
    blocks: their lines become ``chrome_top`` (nav, header) and ``chrome_bottom`` (footer, aside), noise for `render`.
    Bytes are decoded as the readers decode them (binary or undecodable bytes raise). ``title``: given, else <title>,
    else the first heading's text.
    """
    if isinstance(html, bytes):
        html = decode_text(html, EncodingDetector.find_declared_encoding(html, is_html=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bs4 warns about input that looks like XML or a file name; it parses fine
        soup = BeautifulSoup(html, "lxml")
    _decompose(soup.find_all(_HTML_SKIPPED))
    page_title = _inline(soup.title.get_text()) if soup.title else ""
    if soup.head:
        soup.head.decompose()
    top: list[str] = []
    bottom: list[str] = []
    for tag in soup.find_all(_HTML_CHROME):
        if tag.decomposed or (tag.name in ("header", "footer") and tag.find_parent(_HTML_CONTENT_ROOTS)):
            continue
        (top if tag.name in _HTML_CHROME_TOP else bottom).extend(_chrome_lines(tag))
        tag.decompose()
    blocks = _HtmlBlocks().collect(soup.body or soup)
    title = title if title is not None else page_title or None
    return StructuredDoc(doc_id, _title(title, blocks), blocks, source, _unique(top), _unique(bottom))


def _decompose(tags: Iterable[Tag]) -> None:
    for tag in list(tags):
        if not tag.decomposed:  # already gone with an ancestor
            tag.decompose()


def _chrome_lines(tag: Tag) -> list[str]:
    return [line for block in _HtmlBlocks().collect(tag) for line in block.plain_lines()]


def _unique(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(line for line in lines if line))[:_CHROME_MAX_LINES]


def _raw_text(node: Tag, skip: tuple[str, ...] = ()) -> str:
    """The text of ``node`` as a browser shows it on one line, before whitespace is collapsed: <br> and block
    elements separate words; subtrees of tags named in ``skip`` are left out."""
    parts: list[str] = []
    for child in node.children:
        if isinstance(child, NavigableString):
            if not isinstance(child, PreformattedString):  # comments, doctype, CDATA, processing instructions
                parts.append(str(child))
        elif child.name in skip:
            continue
        elif child.name == "br":
            parts.append(" ")
        elif child.name in _HTML_BLOCK_TAGS:
            parts.append(f" {_raw_text(child, skip)} ")
        else:
            parts.append(_raw_text(child, skip))
    return "".join(parts)


def _html_items(lst: Tag) -> list[str]:
    """The items of a <ul>/<ol>, each followed by the items of the lists nested in it."""
    items: list[str] = []
    for li in lst.find_all("li", recursive=False):
        items.append(_raw_text(li, skip=_HTML_LISTS))
        for sub in li.find_all(_HTML_LISTS):
            if sub.find_parent(_HTML_LISTS) is lst:  # directly nested, not inside a deeper list
                items.extend(_html_items(sub))
    return items


def _html_rows(table: Tag) -> tuple[tuple[str, ...], ...]:
    """The rows of a table, not those of tables nested in its cells."""
    rows = (tr for tr in table.find_all("tr") if tr.find_parent("table") is table)
    return tuple(tuple(_raw_text(cell) for cell in tr.find_all(["td", "th"], recursive=False)) for tr in rows)


class _HtmlBlocks:
    """Walks an HTML tree in document order and collects its `Block` s; loose text between block elements (a <div>
    with text, text split by <br>) becomes paragraphs."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._inline: list[str] = []

    def collect(self, root: Tag) -> list[Block]:
        self._walk(root)
        self._flush()
        return self.blocks

    def _walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, PreformattedString):
                    self._inline.append(str(child))
            elif child.name in _HTML_HEADINGS:
                self._add(Block("heading", _raw_text(child), level=_HTML_HEADINGS[child.name]))
            elif child.name == "p":
                self._add(Block("paragraph", _raw_text(child)))
            elif child.name in _HTML_LISTS:
                self._add(Block("list", items=tuple(_html_items(child))))
            elif child.name == "table":
                self._add(Block("table", rows=_html_rows(child)))
            elif child.name == "pre":
                self._add(Block("code", child.get_text()))
            elif child.name == "br" or child.name in _HTML_BLOCK_TAGS:
                self._flush()
                self._walk(child)
                self._flush()
            else:
                self._walk(child)

    def _add(self, block: Block) -> None:
        self._flush()
        _append(self.blocks, block)

    def _flush(self) -> None:
        _append(self.blocks, Block("paragraph", "".join(self._inline)))
        self._inline.clear()


# ------------------------------------------------------------------------------------------------ paragraph corpora


def from_paragraphs(
    doc_id: str, title: str, paragraphs: Sequence[str], headings: Mapping[int, str] | None = None, source: str = ""
) -> StructuredDoc:
    """A document made of a title and its paragraphs (SQuAD-style corpora): the title as a level-1 heading (when not
    empty), then each paragraph as a block of its own; ``headings[i]`` is a level-2 heading put before paragraph i."""
    blocks: list[Block] = []
    _append(blocks, Block("heading", title, level=1))
    for i, paragraph in enumerate(paragraphs):
        if headings and i in headings:
            _append(blocks, Block("heading", headings[i], level=2))
        _append(blocks, Block("paragraph", paragraph))
    return StructuredDoc(doc_id, title, blocks, source)


# ---------------------------------------------------------------------------------------------------- walking files

STRUCTURED_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".jsonl")


def structured_docs(
    paths: Iterable[str | Path], failures: list[ReadFailure] | None = None, max_bytes: int = ReaderConfig.max_bytes
) -> Iterator[StructuredDoc]:
    """The structured documents of files and folders (walked like `preprocess_model.readers.iter_files`).

    - ``.md`` / ``.markdown``: `from_markdown`; ``.html`` / ``.htm``: `from_html`; doc_id from the file's path.
    - ``.jsonl``: one document per line, a JSON object with an optional ``"id"`` and ``"title"`` and either
      ``"paragraphs"`` (a list of strings: `from_paragraphs`) or ``"text"`` (a string, blank-line separated paragraphs
      or Markdown: `from_markdown`).

    Never raises for bad input: a file or record that cannot be read, parsed, or holds no block, is skipped, logged,
    and appended to ``failures`` (when given) as a `ReadFailure` with the reason.
    """
    include = tuple(f"*{suffix}" for suffix in STRUCTURED_SUFFIXES)
    for item in iter_files(paths, ReaderConfig(include=include, max_bytes=max_bytes)):
        if isinstance(item, ReadFailure):
            _report(failures, item)
            continue
        source = os.path.realpath(item)
        try:
            for doc in _file_docs(item, source, max_bytes, failures):
                if doc.blocks:
                    yield doc
                else:
                    _report(failures, ReadFailure(doc.source or source, "no text blocks", doc.doc_id))
        except _Skip as exc:
            _report(failures, ReadFailure(source, str(exc)))
        except OSError as exc:
            _report(failures, ReadFailure(source, f"cannot read: {exc.strerror or exc}"))
        except Exception as exc:  # noqa: BLE001 -- a malformed file no parser anticipated: report it, go on
            _report(failures, ReadFailure(source, f"unparsable {item.suffix[1:]} file: {type(exc).__name__}: {exc}"))


class _Skip(Exception):
    """Raised with the human reason a file is skipped."""


def _report(failures: list[ReadFailure] | None, failure: ReadFailure) -> None:
    logger.warning("skipped %s: %s", failure.source, failure.reason)
    if failures is not None:
        failures.append(failure)


def _file_docs(
    path: Path, source: str, max_bytes: int, failures: list[ReadFailure] | None
) -> Iterator[StructuredDoc]:
    suffix = path.suffix.lower()
    if suffix not in STRUCTURED_SUFFIXES:
        raise _Skip(f"unsupported file type {suffix or '(no suffix)'} for structured documents")
    if path.stat().st_size > max_bytes:
        raise _Skip(f"too large: more than max_bytes {max_bytes} bytes")
    if suffix == ".jsonl":
        yield from _jsonl_docs(path, source, failures)
        return
    raw = path.read_bytes()
    if suffix in (".html", ".htm"):
        text = _decoded(raw, EncodingDetector.find_declared_encoding(raw, is_html=True))
        yield from_html(text, file_doc_id(path), source=source)
    else:
        yield from_markdown(_decoded(raw), file_doc_id(path), source=source)


def _decoded(raw: bytes, declared: str | None = None) -> str:
    try:
        return decode_text(raw, declared)
    except Exception as exc:  # the readers' reason ("binary content: NUL bytes ...") is the human one
        raise _Skip(str(exc)) from exc


def _jsonl_docs(path: Path, source: str, failures: list[ReadFailure] | None) -> Iterator[StructuredDoc]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{source}:{lineno}"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:
                _report(failures, ReadFailure(where, f"malformed JSON line: {exc}"))
                continue
            doc = _record_doc(record, source, lineno) if isinstance(record, dict) else None
            if doc is None:
                _report(failures, ReadFailure(where, 'not an object with "paragraphs" (strings) or "text" (a string)'))
            else:
                yield doc


def _record_doc(record: dict[str, Any], source: str, lineno: int) -> StructuredDoc | None:
    given_id = record.get("id")
    doc_id = stable_id(source, f"line{lineno}") if given_id in (None, "") else str(given_id)
    title = record.get("title") if isinstance(record.get("title"), str) else ""
    paragraphs, text = record.get("paragraphs"), record.get("text")
    if isinstance(paragraphs, list) and all(isinstance(p, str) for p in paragraphs):
        return from_paragraphs(doc_id, title, paragraphs, source=f"{source}#{doc_id}")
    if isinstance(text, str):
        return from_markdown(text, doc_id, title=title or None, source=f"{source}#{doc_id}")
    return None


# ------------------------------------------------------------------------------------------------------ configuration

_LIST_MARKERS = ("-", "*", "•", "1.", "1)", "a)")


@dataclass(frozen=True)
class SynthConfig:
    """How documents are rendered. Each ``*_prob`` is drawn once per rendered document (a document is laid out one
    way throughout, as a real source is) unless its comment says otherwise. The rendering is fully determined by the
    config, the seed, the doc_id and the variant (see `make_examples`)."""

    blank_lines_removed_prob: float = 0.25  # no blank line between blocks (PDF extractions, some HTML dumps)
    blank_lines_random_prob: float = 0.25  # each gap between blocks gets 0 or 1 blank line; otherwise always 1
    wrap_prob: float = 0.35  # paragraphs and list items hard-wrapped, as PDF, e-mail and fixed-width text are
    wrap_min_width: int = 40  # the wrap width is drawn per document in [min, max] characters
    wrap_max_width: int = 110
    hyphenate_prob: float = 0.3  # of wrapped documents, those that split words at line ends ("segmen-" / "tation")
    hyphen_word_prob: float = 0.5  # in a hyphenating document, the chance a word that does not fit is split
    page_break_prob: float = 0.3  # pages: running headers (title, chapter, URL, date) and page numbers as NOISE
    page_min_lines: int = 20  # the page length is drawn per document in [min, max] rendered lines
    page_max_lines: int = 60
    boilerplate_prob: float = 0.4  # web page chrome: navigation, breadcrumbs, share, cookies, copyright as NOISE
    boilerplate_inline_prob: float = 0.15  # per heading of such a page: a "Back to top"-like line before it
    page_chrome_prob: float = 0.7  # chrome from the page itself (HTML nav, footer) rather than phrasebook lines
    french_prob: float = 0.4  # language of phrasebook noise: French (administrative pages are a target), else English
    heading_markdown_prob: float = 0.25  # headings as "## Title"
    heading_numbered_prob: float = 0.25  # headings numbered "2." and "2.1" (a lone opening title stays unnumbered)
    heading_caps_prob: float = 0.15  # headings in capitals
    heading_colon_prob: float = 0.1  # headings end with ":"
    list_markers: tuple[str, ...] = _LIST_MARKERS  # drawn per list; "1." and "1)" count up, "a)" goes a), b), ...
    table_pipe_prob: float = 0.5  # per table: "| a | b |" rows, else aligned columns
    table_rule_prob: float = 0.5  # per pipe table: a "|---|" rule under its first row, as Markdown writes one
    table_tab_prob: float = 0.5  # per aligned table: cells separated by tabs, else padded with spaces
    code_fence_prob: float = 0.5  # per code block: between ``` fences (part of the code's segment)
    short_paragraph_chars: int = 120  # paragraphs shorter than this may merge; lead-ins shorter than this join lists
    merge_short_prob: float = 1.0  # per pair of consecutive short paragraphs: one segment. Below 1 it is label noise
    merged_max_chars: int = 480  # a run of merged short paragraphs stops growing at this many characters

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")
        if self.blank_lines_removed_prob + self.blank_lines_random_prob > 1.0:
            raise ValueError("blank_lines_removed_prob + blank_lines_random_prob must be at most 1")
        if not 1 <= self.wrap_min_width <= self.wrap_max_width:
            raise ValueError("need 1 <= wrap_min_width <= wrap_max_width")
        if not 1 <= self.page_min_lines <= self.page_max_lines:
            raise ValueError("need 1 <= page_min_lines <= page_max_lines")
        if not self.list_markers or not set(self.list_markers) <= set(_LIST_MARKERS):
            raise ValueError(f"list_markers must be a non-empty subset of {_LIST_MARKERS}")
        if self.short_paragraph_chars < 0 or self.merged_max_chars < 0:
            raise ValueError("short_paragraph_chars and merged_max_chars must not be negative")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SynthConfig:
        """A config from its ``dataclasses.asdict`` form (as `write_dataset` saves it); unknown keys are refused."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown SynthConfig fields: {', '.join(sorted(unknown))}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


# -------------------------------------------------------------------------------------------------------- phrasebooks


@dataclass(frozen=True)
class _Phrasebook:
    """The boilerplate of one language that web pages and printed documents add around their text.

    Formats take ``{title}``, ``{section}``, ``{year}``, ``{org}``, ``{date}``, ``{n}`` (page) and ``{total}`` (pages).
    """

    skip: tuple[str, ...]
    banners: tuple[str, ...]
    menu: tuple[str, ...]
    sections: tuple[str, ...]
    breadcrumbs: tuple[str, ...]
    back_to_top: tuple[str, ...]
    share: tuple[str, ...]
    updated: tuple[str, ...]
    cookies: tuple[str, ...]
    legal: tuple[str, ...]
    copyright: tuple[str, ...]
    orgs: tuple[str, ...]
    domains: tuple[str, ...]
    page_numbers: tuple[str, ...]
    months: tuple[str, ...]
    dates: tuple[str, ...]  # formats with {d}, {dd}, {mm}, {month}, {y}


_ENGLISH = _Phrasebook(
    skip=("Skip to content", "Skip to main content", "Jump to navigation"),
    banners=("Menu", "Search", "Sign in | Register", "An official website of the United States government"),
    menu=("Home", "Products", "Solutions", "Pricing", "Docs", "Blog", "About us", "Contact", "Support", "Careers"),
    sections=("Docs", "Guides", "Help Center", "Resources", "News", "Services"),
    breadcrumbs=("Home > {section} > {title}", "Home / {section} / {title}",
                 "You are here: Home » {section} » {title}"),
    back_to_top=("Back to top", "↑ Top", "Return to top", "Was this page helpful? Yes No"),
    share=("Share | Tweet | Email", "Share this page: Facebook Twitter LinkedIn", "Print this page", "Share"),
    updated=("Last updated: {date}", "Published {date}", "Page last reviewed: {date}"),
    cookies=(
        "We use cookies to improve your experience. By continuing to browse this site you agree to our use of "
        "cookies. Accept | Learn more",
        "This website uses cookies. Accept all | Reject all | Manage preferences",
    ),
    legal=("Privacy policy | Terms of use | Accessibility | Sitemap", "Privacy | Terms | Cookie settings"),
    copyright=("© {year} {org}. All rights reserved.", "Copyright {year} {org}", "© {org} {year}"),
    orgs=("Example Corp", "Acme Inc.", "City of Springfield", "Northwind Traders"),
    domains=("www.example.com", "docs.example.org", "help.acme.com"),
    page_numbers=("Page {n} of {total}", "Page {n}", "{n}", "— {n} —", "- {n} -", "{n}/{total}", "{n} | {title}"),
    months=("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
            "November", "December"),
    dates=("{month} {d}, {y}", "{y}-{mm}-{dd}", "{mm}/{dd}/{y}"),
)

_FRENCH = _Phrasebook(
    skip=("Aller au contenu", "Passer au contenu principal", "Aller au menu", "Aller à la recherche"),
    banners=("Liberté Égalité Fraternité", "République française", "Menu", "Rechercher", "Mon espace"),
    menu=("Accueil", "Particuliers", "Professionnels", "Associations", "Démarches", "Actualités", "Contact",
          "Se connecter", "Publications", "Nous contacter"),
    sections=("Démarches", "Vos droits", "Services", "Actualités", "Documentation", "Aide"),
    breadcrumbs=("Accueil > {section} > {title}", "Vous êtes ici : Accueil › {section} › {title}",
                 "Accueil / {section} / {title}"),
    back_to_top=("Haut de page", "Retour en haut", "Cette page vous a-t-elle été utile ? Oui Non"),
    share=("Partager | Facebook | X | Courriel", "Partager la page", "Imprimer la page", "Partager sur LinkedIn"),
    updated=("Mis à jour le {date}", "Publié le {date}", "Vérifié le {date} - Direction de l'information légale"),
    cookies=(
        "Ce site utilise des cookies pour améliorer votre expérience. En poursuivant votre navigation, vous acceptez "
        "leur utilisation. Tout accepter | Tout refuser | Personnaliser",
        "Gestion des cookies : OK, tout accepter | Personnaliser",
    ),
    legal=("Mentions légales | Accessibilité : partiellement conforme | Données personnelles | Gestion des cookies",
           "Plan du site | Mentions légales | Accessibilité"),
    copyright=("© {year} {org}. Tous droits réservés.", "© {org} {year}", "Copyright {year} - {org}"),
    orgs=("Service-Public.fr", "Ministère de l'Intérieur", "Mairie de Lyon", "Préfecture du Rhône"),
    domains=("www.service-public.fr", "www.exemple.gouv.fr", "www.mairie-exemple.fr"),
    page_numbers=("Page {n} sur {total}", "Page {n}", "{n}", "— {n} —", "{n}/{total}", "p. {n}"),
    months=("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
            "novembre", "décembre"),
    dates=("{d} {month} {y}", "{dd}/{mm}/{y}"),
)

# Within a block of phrasebook boilerplate, the odds that each kind of line appears (the menu and the copyright line
# always do): enough variety that no single line marks every noisy page.
_TOP_ODDS = {"skip": 0.5, "banner": 0.3, "menu_one_per_line": 0.5, "breadcrumb": 0.6}
_BOTTOM_ODDS = {"back_to_top": 0.4, "share": 0.4, "updated": 0.4, "cookies": 0.3, "legal": 0.5}
_MENU_SEPARATORS = (" | ", " · ", "  ", " / ")
_RUNNING_HEADERS = ("none", "title", "chapter", "url", "date")
_NAME_MAX_CHARS = 60  # a title in a breadcrumb or running header is cut here, as sites and printers cut them


def _date(book: _Phrasebook, rng: random.Random) -> str:
    d, m, y = rng.randint(1, 28), rng.randint(1, 12), rng.randint(2015, 2025)
    return rng.choice(book.dates).format(d=d, dd=f"{d:02}", mm=f"{m:02}", month=book.months[m - 1], y=y)


def _short(name: str) -> str:
    return name if len(name) <= _NAME_MAX_CHARS else name[: _NAME_MAX_CHARS - 1].rstrip() + "…"


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")[:_NAME_MAX_CHARS] or "page"


def _top_noise(name: str, book: _Phrasebook, rng: random.Random) -> list[str]:
    lines: list[str] = []
    if rng.random() < _TOP_ODDS["skip"]:
        lines.append(rng.choice(book.skip))
    if rng.random() < _TOP_ODDS["banner"]:
        lines.append(rng.choice(book.banners))
    menu = rng.sample(book.menu, rng.randint(3, 7))
    if rng.random() < _TOP_ODDS["menu_one_per_line"]:
        lines.extend(menu)
    else:
        lines.append(rng.choice(_MENU_SEPARATORS).join(menu))
    if rng.random() < _TOP_ODDS["breadcrumb"]:
        section = rng.choice(book.sections)
        lines.append(rng.choice(book.breadcrumbs).format(section=section, title=_short(name or section)))
    return lines


def _bottom_noise(book: _Phrasebook, rng: random.Random) -> list[str]:
    lines: list[str] = []
    if rng.random() < _BOTTOM_ODDS["back_to_top"]:
        lines.append(rng.choice(book.back_to_top))
    if rng.random() < _BOTTOM_ODDS["share"]:
        lines.append(rng.choice(book.share))
    if rng.random() < _BOTTOM_ODDS["updated"]:
        lines.append(rng.choice(book.updated).format(date=_date(book, rng)))
    if rng.random() < _BOTTOM_ODDS["cookies"]:
        lines.append(rng.choice(book.cookies))
    if rng.random() < _BOTTOM_ODDS["legal"]:
        lines.append(rng.choice(book.legal))
    org, year = rng.choice(book.orgs), rng.randint(2015, 2025)
    lines.append(rng.choice(book.copyright).format(year=year, org=org))
    return lines


# ----------------------------------------------------------------------------------------------------------- layout

Role = Literal["content", "heading", "noise", "blank"]


@dataclass(frozen=True)
class _Line:
    """One rendered line and what produced it.

    segment: the index of the segment a content line belongs to (-1 for other roles).
    chapter: the section heading in force where the line was rendered, for running page headers.
    """

    text: str
    role: Role
    segment: int = -1
    chapter: str = ""


_BLANK = _Line("", "blank")


def _make_line(text: str, role: Role, segment: int = -1, chapter: str = "") -> _Line:
    """A line made normalized on its own (NFC, no trailing whitespace); such lines joined by "\\n" stay normalized."""
    text = unicodedata.normalize("NFC", text).rstrip()
    return _Line(text, role, segment, chapter) if text else _BLANK


class _Layout:
    """The rendered lines of a document, in order, each with its role; segments are numbered as they open."""

    def __init__(self) -> None:
        self.lines: list[_Line] = []
        self.segments = 0
        self.chapter = ""

    def new_segment(self) -> int:
        self.segments += 1
        return self.segments - 1

    def add(self, text: str, role: Role, segment: int = -1) -> None:
        self.lines.append(_make_line(text, role, segment, self.chapter))

    def gap(self, blank: bool) -> None:
        if blank:
            self.lines.append(_BLANK)


@dataclass(frozen=True)
class _Style:
    """The rendering choices drawn once for a document from `SynthConfig`."""

    blank_lines: Literal["keep", "remove", "random"]
    wrap_width: int  # 0: no wrapping
    hyphen_word_prob: float  # 0: words are never split at a line end
    page_lines: int  # 0: no page breaks
    boilerplate: bool
    book: _Phrasebook
    heading_markdown: bool
    heading_numbered: bool
    heading_caps: bool
    heading_colon: bool

    def blank(self, rng: random.Random) -> bool:
        """Whether a gap between two blocks gets a blank line."""
        return self.blank_lines == "keep" or (self.blank_lines == "random" and rng.random() < 0.5)


def _draw_style(rng: random.Random, cfg: SynthConfig) -> _Style:
    # Every draw happens whatever the probabilities, so that changing one of them leaves the others' draws alone.
    u = rng.random()
    blank_lines = ("remove" if u < cfg.blank_lines_removed_prob
                   else "random" if u < cfg.blank_lines_removed_prob + cfg.blank_lines_random_prob else "keep")
    wrap, width = rng.random() < cfg.wrap_prob, rng.randint(cfg.wrap_min_width, cfg.wrap_max_width)
    hyphenate = rng.random() < cfg.hyphenate_prob
    pages, page_lines = rng.random() < cfg.page_break_prob, rng.randint(cfg.page_min_lines, cfg.page_max_lines)
    return _Style(
        blank_lines=blank_lines,
        wrap_width=width if wrap else 0,
        hyphen_word_prob=cfg.hyphen_word_prob if wrap and hyphenate else 0.0,
        page_lines=page_lines if pages else 0,
        boilerplate=rng.random() < cfg.boilerplate_prob,
        book=_FRENCH if rng.random() < cfg.french_prob else _ENGLISH,
        heading_markdown=rng.random() < cfg.heading_markdown_prob,
        heading_numbered=rng.random() < cfg.heading_numbered_prob,
        heading_caps=rng.random() < cfg.heading_caps_prob,
        heading_colon=rng.random() < cfg.heading_colon_prob,
    )


# ---------------------------------------------------------------------------------------------------------- wrapping

_MIN_HYPHEN_PART = 3  # letters kept on each side of a hyphenation point
_MIN_ITEM_WIDTH = 20  # a list item's wrap width after its marker, however narrow the document


def _is_wide(ch: str) -> bool:
    """CJK and other wide characters: text in them wraps between any two characters, without a hyphen."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _split_point(word: str, room: int, hyphen_word_prob: float, rng: random.Random) -> int:
    """Where to split a ``word`` that does not fit in ``room`` characters, 0 for nowhere.

    Wide-character text breaks at ``room``; other words are hyphenated (the head and "-" fit in ``room``) between two
    letters, never before a combining mark, with probability ``hyphen_word_prob``.
    """
    if _is_wide(word[0]):
        return room if room > 0 else 0
    if room <= _MIN_HYPHEN_PART or len(word) < 2 * _MIN_HYPHEN_PART or not rng.random() < hyphen_word_prob:
        return 0
    for cut in range(min(room - 1, len(word) - _MIN_HYPHEN_PART), _MIN_HYPHEN_PART - 1, -1):
        if word[cut - 1].isalpha() and word[cut].isalpha() and not unicodedata.combining(word[cut]):
            return cut
    return 0


def _wrap(text: str, width: int, hyphen_word_prob: float, rng: random.Random) -> list[str]:
    """Greedy hard wrap of one-line ``text`` at ``width`` characters; a word longer than a line that cannot be split
    stays whole on a line of its own."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        while word:
            room = width - len(line) - (1 if line else 0)
            if len(word) <= room:
                line, word = (f"{line} {word}" if line else word), ""
                continue
            cut = _split_point(word, room, hyphen_word_prob, rng)
            if cut:
                head = word[:cut] if _is_wide(word[0]) else f"{word[:cut]}-"
                lines.append(f"{line} {head}" if line else head)
                line, word = "", word[cut:]
            elif line:
                lines.append(line)
                line = ""
            else:
                line, word = word, ""
    if line:
        lines.append(line)
    return lines


# -------------------------------------------------------------------------------------------------- block rendering


def _paragraph_lines(block: Block, style: _Style, rng: random.Random, cfg: SynthConfig) -> list[str]:
    return _wrap(block.text, style.wrap_width, style.hyphen_word_prob, rng) if style.wrap_width else [block.text]


def _marker(kind: str, j: int) -> str:
    """The marker of item ``j`` (from 0) of a list whose marker kind is ``kind``, with its trailing space."""
    if kind in ("1.", "1)"):
        return f"{j + 1}{kind[1]} "
    if kind == "a)":
        return f"{chr(ord('a') + j)}) " if j < 26 else f"{j + 1}) "
    return f"{kind} "


def _list_lines(block: Block, style: _Style, rng: random.Random, cfg: SynthConfig) -> list[str]:
    kind = rng.choice(cfg.list_markers)
    lines: list[str] = []
    for j, item in enumerate(block.items):
        marker = _marker(kind, j)
        width = max(style.wrap_width - len(marker), _MIN_ITEM_WIDTH)
        wrapped = _wrap(item, width, style.hyphen_word_prob, rng) if style.wrap_width else [item]
        lines.append(marker + wrapped[0])
        lines.extend(" " * len(marker) + rest for rest in wrapped[1:])  # a hanging indent, as word processors do
    return lines


def _table_lines(block: Block, style: _Style, rng: random.Random, cfg: SynthConfig) -> list[str]:
    pipe, tabs = rng.random() < cfg.table_pipe_prob, rng.random() < cfg.table_tab_prob
    rows = block.rows
    if pipe:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        if len(rows) > 1 and rng.random() < cfg.table_rule_prob:
            lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
        return lines
    if tabs:
        return ["\t".join(row) for row in rows]
    widths = [max(len(row[c]) for row in rows if c < len(row)) for c in range(max(map(len, rows)))]
    sep = " " * rng.randint(2, 4)
    return [sep.join(cell.ljust(widths[c]) for c, cell in enumerate(row)) for row in rows]


def _code_lines(block: Block, style: _Style, rng: random.Random, cfg: SynthConfig) -> list[str]:
    lines = block.text.split("\n")
    return ["```", *lines, "```"] if rng.random() < cfg.code_fence_prob else lines


_BLOCK_RENDERERS: dict[str, Callable[[Block, _Style, random.Random, SynthConfig], list[str]]] = {
    "paragraph": _paragraph_lines, "list": _list_lines, "table": _table_lines, "code": _code_lines,
}


def _heading_numbers(blocks: Sequence[Block]) -> dict[int, str]:
    """Section numbers ("1.", "2.1") of the heading blocks by index; a lone top-level heading that opens the document
    is its title and stays unnumbered."""
    headings = [(i, block.level) for i, block in enumerate(blocks) if block.kind == "heading"]
    if headings and headings[0][0] == 0 and [level for _, level in headings].count(headings[0][1]) == 1:
        if headings[0][1] == min(level for _, level in headings):
            headings = headings[1:]
    if not headings:
        return {}
    top = min(level for _, level in headings)
    counters = [0] * 7
    numbers: dict[int, str] = {}
    for i, level in headings:
        counters[level] += 1
        counters[level + 1 :] = [0] * (6 - level)
        number = ".".join(str(max(c, 1)) for c in counters[top : level + 1])
        numbers[i] = f"{number}." if level == top else number
    return numbers


def _heading_text(block: Block, number: str | None, style: _Style) -> str:
    text = block.text.upper() if style.heading_caps else block.text
    if number:
        text = f"{number} {text}"
    if style.heading_colon and text[-1] not in ".:;?!":
        text += ":"
    return f"{'#' * block.level} {text}" if style.heading_markdown else text


def _joins(prev: Block | None, block: Block, segment_chars: int, rng: random.Random, cfg: SynthConfig) -> bool:
    """Whether ``block`` continues the segment of ``prev`` (the block just before it, with no heading between)."""
    if prev is None or prev.kind != "paragraph" or len(prev.text) >= cfg.short_paragraph_chars:
        return False
    if block.kind in ("list", "table"):  # a short lead-in ending with ":" belongs to what it introduces
        return prev.text.endswith(":")
    return (
        block.kind == "paragraph"
        and len(block.text) < cfg.short_paragraph_chars
        and segment_chars + block.chars <= cfg.merged_max_chars
        and rng.random() < cfg.merge_short_prob
    )


def _render_blocks(
    blocks: Sequence[Block], layout: _Layout, style: _Style, rng: random.Random, cfg: SynthConfig
) -> None:
    numbers = _heading_numbers(blocks) if style.heading_numbered else {}
    segment, segment_chars = -1, 0
    prev: Block | None = None
    for i, block in enumerate(blocks):
        layout.gap(style.blank(rng))
        if block.kind == "heading":
            if style.boilerplate and i and rng.random() < cfg.boilerplate_inline_prob:
                layout.add(rng.choice(style.book.back_to_top), "noise")
                layout.gap(style.blank(rng))
            if block.level <= 2:
                layout.chapter = block.text
            layout.add(_heading_text(block, numbers.get(i), style), "heading")
            prev = None  # a heading ends the segment before it
            continue
        if not _joins(prev, block, segment_chars, rng, cfg):
            segment, segment_chars = layout.new_segment(), 0
        segment_chars += block.chars
        for line in _BLOCK_RENDERERS[block.kind](block, style, rng, cfg):
            layout.add(line, "content", segment)
        prev = block


def _paginate(lines: list[_Line], name: str, style: _Style, rng: random.Random) -> list[_Line]:
    """Lines cut into pages of ``style.page_lines`` with a running header (title, chapter, URL or date; on the first
    page or not) and a page number as NOISE; a page break may fall inside a paragraph, which then goes on after it."""
    book = style.book
    size = style.page_lines
    pages = [lines[i : i + size] for i in range(0, len(lines), size)]
    number, header = rng.choice(book.page_numbers), rng.choice(_RUNNING_HEADERS)
    header_on_first_page = rng.random() < 0.5
    url = f"https://{rng.choice(book.domains)}/{_slug(name)}"
    date = _date(book, rng)
    around = [_BLANK] if rng.random() < 0.5 else []
    out: list[_Line] = []
    for n, page in enumerate(pages, start=1):
        chapter = next((line.chapter for line in page if line.chapter), "") or name
        running = {"none": "", "title": name, "chapter": chapter, "url": url, "date": date}[header]
        if running and (n > 1 or header_on_first_page):
            out += [_make_line(_short(running), "noise"), *around]
        out += page
        out += [*around, _make_line(number.format(n=n, total=len(pages), title=_short(name)), "noise")]
    return out


# ---------------------------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """A rendered document with its labels.

    text:     normalized text (``normalize_text(text) == text``).
    units:    ``text_units(text)``, character spans.
    labels:   one of `preprocess_model.units.LABELS` indices per unit.
    segments: gold segments as character spans, in order, disjoint; each from its first to its last content character.
    """

    text: str
    units: list[Span] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    segments: list[Span] = field(default_factory=list)


def _assemble(lines: Sequence[_Line]) -> Example:
    """Join rendered lines into normalized text (blank lines at most one in a row, none at either end) and label its
    units from the lines' roles."""
    kept: list[_Line] = []
    for line in lines:
        if line.role != "blank" or (kept and kept[-1].role != "blank"):
            kept.append(line)
    while kept and kept[-1].role == "blank":
        kept.pop()
    starts: list[int] = []
    seg_starts: dict[int, int] = {}
    seg_ends: dict[int, int] = {}
    pos = 0
    for line in kept:
        starts.append(pos)
        if line.role == "content":
            seg_starts.setdefault(line.segment, pos + len(line.text) - len(line.text.lstrip()))
            seg_ends[line.segment] = pos + len(line.text)
        pos += len(line.text) + 1
    text = "\n".join(line.text for line in kept)
    if normalize_text(text) != text:  # the offsets below are only right for text no reader would change
        raise AssertionError("rendered text is not normalized")
    units = text_units(text)
    labels = [_label(kept[bisect.bisect_right(starts, start) - 1], start, seg_starts) for start, _ in units]
    segments = [(seg_starts[k], seg_ends[k]) for k in sorted(seg_starts)]
    return Example(text, units, labels, segments)


def _label(line: _Line, unit_start: int, seg_starts: Mapping[int, int]) -> int:
    if line.role == "heading":
        return HEADING
    if line.role == "noise":
        return NOISE
    return BOUNDARY if unit_start == seg_starts[line.segment] else CONTINUE


def render(doc: StructuredDoc, rng: random.Random, cfg: SynthConfig) -> Example:
    """``doc`` rendered as flat text with augmentations drawn from ``cfg`` and ``rng``, its units and their labels.

    A document without text gives an Example with empty text. See the module docstring for the construction.
    """
    blocks = [block for block in doc.blocks if not block.empty]
    if not blocks:
        return Example("")
    style = _draw_style(rng, cfg)
    name = doc.title or next((block.text for block in blocks if block.kind == "heading"), "")
    layout = _Layout()
    if style.boilerplate:
        use_page = bool(doc.chrome_top) and rng.random() < cfg.page_chrome_prob
        for line in doc.chrome_top if use_page else _top_noise(name, style.book, rng):
            layout.add(line, "noise")
    _render_blocks(blocks, layout, style, rng, cfg)
    if style.boilerplate:
        layout.gap(style.blank(rng))
        use_page = bool(doc.chrome_bottom) and rng.random() < cfg.page_chrome_prob
        for line in doc.chrome_bottom if use_page else _bottom_noise(style.book, rng):
            layout.add(line, "noise")
    lines = _paginate(layout.lines, name, style, rng) if style.page_lines else layout.lines
    return _assemble(lines)


# ----------------------------------------------------------------------------------------------------------- datasets

ROW_COLUMNS = ("doc_id", "variant", "source", "title", "text", "unit_starts", "unit_ends", "labels",
               "segment_starts", "segment_ends")
_PARQUET_META_KEY = b"ragless.synth.segmentation"
_WRITE_BATCH_ROWS = 1000  # rows converted to Arrow at a time: bounds memory on large corpora


def make_examples(
    docs: Iterable[StructuredDoc], cfg: SynthConfig, seed: int, variants: int = 1
) -> Iterator[dict[str, Any]]:
    """One row per (document, variant); see `ROW_COLUMNS`. Documents without text are skipped.

    Each row is rendered with ``random.Random(f"{seed}:{doc_id}:{variant}")``, so it depends on nothing but the
    config, the seed, the document and the variant number: not on the order or presence of other documents.
    """
    if variants < 1:
        raise ValueError(f"variants must be at least 1, got {variants}")
    for doc in docs:
        for variant in range(variants):
            example = render(doc, random.Random(f"{seed}:{doc.doc_id}:{variant}"), cfg)
            if example.text:
                yield {
                    "doc_id": doc.doc_id,
                    "variant": variant,
                    "source": doc.source,
                    "title": doc.title,
                    "text": example.text,
                    "unit_starts": [start for start, _ in example.units],
                    "unit_ends": [end for _, end in example.units],
                    "labels": example.labels,
                    "segment_starts": [start for start, _ in example.segments],
                    "segment_ends": [end for _, end in example.segments],
                }


def _row_schema() -> Any:
    import pyarrow as pa  # imported here, as in the readers, so that rendering alone does not pay for it

    offsets = pa.list_(pa.int32())
    return pa.schema([
        ("doc_id", pa.string()), ("variant", pa.int32()), ("source", pa.string()), ("title", pa.string()),
        ("text", pa.large_string()), ("unit_starts", offsets), ("unit_ends", offsets),
        ("labels", pa.list_(pa.int8())), ("segment_starts", offsets), ("segment_ends", offsets),
    ])


def _batched(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def write_dataset(
    rows: Iterable[dict[str, Any]], path: str | Path, config: SynthConfig | None = None, seed: int | None = None
) -> int:
    """Write ``rows`` (from `make_examples`) to a Parquet file at ``path``; returns the number of rows written.

    Streams in batches; the file is written next to ``path`` and moved into place, so a crash leaves no half file. The
    schema metadata (key ``ragless.synth.segmentation``) records the label names, the config and the seed, so the
    dataset says how it was made. Read it with ``datasets.Dataset.from_parquet`` or ``pyarrow.parquet.read_table``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"labels": list(LABELS), "config": asdict(config) if config else None, "seed": seed}
    schema = _row_schema().with_metadata({_PARQUET_META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _batched(rows, _WRITE_BATCH_ROWS):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def dataset_metadata(path: str | Path) -> dict[str, Any]:
    """What `write_dataset` recorded about how a dataset was made: ``labels``, ``config`` and ``seed``."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[_PARQUET_META_KEY]) if _PARQUET_META_KEY in meta else {}


def split_by_doc(
    rows: Iterable[dict[str, Any]], held_out_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out) rows, split by ``doc_id`` so that no document's variants are on both sides.

    ``round(held_out_fraction * number of documents)`` documents, drawn with ``seed`` from the sorted doc_ids, are
    held out; the split does not depend on row order. Rows keep their order within each side.
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    rows = list(rows)
    doc_ids = sorted({row["doc_id"] for row in rows})
    random.Random(f"split:{seed}").shuffle(doc_ids)
    held = set(doc_ids[: round(held_out_fraction * len(doc_ids))])
    return [row for row in rows if row["doc_id"] not in held], [row for row in rows if row["doc_id"] in held]


def label_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many units carry each label, by label name (every name present, zeros included)."""
    counts = Counter(label for row in rows for label in row["labels"])
    return {name: counts[i] for i, name in enumerate(LABELS)}
