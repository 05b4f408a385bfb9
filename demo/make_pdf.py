"""Build demo/corpus/zlib-algorithm.pdf from demo/sources/zlib-algorithm.txt.

The source is zlib's doc/algorithm.txt by Jean-loup Gailly and Mark Adler (zlib 1.2.13, as shipped in Debian's
zlib1g-dev package at /usr/share/doc/zlib1g-dev/algorithm.txt.gz; zlib license, see demo/LICENSES/Zlib.txt). The
words are not changed: prose paragraphs are re-wrapped to the page width and runs of spaces collapsed, tables and the
signature block are kept line for line in a monospaced font, and a title block, a note saying that this is a
reformatted copy, a running header and page-number footers are added.

The output is byte-for-byte reproducible (fixed creation date, no random document id), so the committed PDF can be
checked by re-running:

    .venv/bin/python demo/make_pdf.py            # writes demo/corpus/zlib-algorithm.pdf
    .venv/bin/python demo/make_pdf.py --check    # exits 1 if the committed PDF differs from a fresh build

Needs fpdf2 (pip install fpdf2). Only the PDF core fonts are used (Times, Helvetica, Courier: latin-1), which suits
this ASCII-only text and keeps the file small since no font is embedded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

from fpdf import FPDF

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "sources" / "zlib-algorithm.txt"
OUTPUT = HERE / "corpus" / "zlib-algorithm.pdf"

TITLE = "zlib Algorithm Notes: deflate and inflate"
AUTHORS = "Jean-loup Gailly and Mark Adler"
NOTE = (
    "This is doc/algorithm.txt from zlib 1.2.13, reformatted as a PDF for the ragless demo corpus: the text is "
    "unchanged except for line wrapping, and this title block, headers and footers were added. "
    "Copyright (C) 1995-2022 Jean-loup Gailly and Mark Adler; distributed under the zlib license."
)
CREATED = dt.datetime(2022, 10, 13, 12, 0, 0, tzinfo=dt.UTC)  # zlib 1.2.13's release date

HEADING = re.compile(r"^(\d+(\.\d+)*\.?\s+\S.*|References:)$")


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """Split the plain text into ('heading'|'para'|'pre', lines) blocks."""
    out: list[tuple[str, list[str]]] = []
    for raw in re.split(r"\n\s*\n", text.strip("\n")):
        lines = [ln.rstrip() for ln in raw.split("\n") if ln.strip()]
        if not lines:
            continue
        if len(lines) == 1 and HEADING.match(lines[0]):
            out.append(("heading", lines))
        elif all(len(ln) < 32 and ":" in ln for ln in lines) or any("   " in ln.strip() for ln in lines):
            out.append(("pre", lines))  # code tables ("A: 0", "000: A,1") and the two-column signature
        else:
            out.append(("para", lines))
    return out


class Doc(FPDF):
    def header(self) -> None:
        if self.page_no() == 1:
            return
        self.set_font("Helvetica", "I", 8)
        self.set_text_color(100)
        self.cell(0, 5, TITLE, align="L")
        self.ln(9)
        self.set_text_color(0)

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(100)
        self.cell(0, 8, f"Page {self.page_no()} of {{nb}}", align="C")
        self.set_text_color(0)


def build(source: Path) -> bytes:
    text = source.read_text(encoding="ascii")
    pdf = Doc(format="A4", unit="mm")
    pdf.set_margins(25, 22, 25)
    pdf.set_auto_page_break(True, margin=22)
    pdf.set_title(TITLE)
    pdf.set_author(AUTHORS)
    pdf.set_subject("How zlib's deflate compressor and inflate decompressor work")
    pdf.set_keywords("zlib deflate inflate LZ77 Huffman compression")
    pdf.set_creator("ragless demo/make_pdf.py")
    pdf.set_producer("fpdf2")
    pdf.set_creation_date(CREATED)
    pdf.alias_nb_pages()
    pdf.add_page()

    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 9, TITLE, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "", 11)
    pdf.cell(0, 6, AUTHORS, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Times", "I", 9)
    pdf.set_fill_color(240, 240, 240)
    pdf.multi_cell(0, 4.5, NOTE, align="J", fill=True, padding=2, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    in_references = False
    for kind, lines in blocks(text):
        if kind == "heading":
            in_references = lines[0] == "References:"
            level = lines[0].split()[0].count(".") if lines[0][0].isdigit() else 1
            size = 14 if level <= 1 and not re.match(r"^\d+\.\d", lines[0]) else 12
            if pdf.will_page_break(size + 12):
                pdf.add_page()
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", size)
            pdf.multi_cell(0, size * 0.5, lines[0], new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif kind == "pre":
            if pdf.will_page_break(4.6 * len(lines)):  # keep a small table on one page
                pdf.add_page()
            pdf.set_font("Courier", "", 9.5)
            for ln in lines:
                pdf.cell(0, 4.6, "    " + ln, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        else:
            pdf.set_font("Times", "", 11.5)
            para = re.sub(r"\s+", " ", " ".join(ln.strip() for ln in lines))
            # Justified prose; the reference list is left-aligned (a long URL would stretch its line).
            pdf.multi_cell(0, 5.6, para, align="L" if in_references else "J", new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2.5)
    return bytes(pdf.output())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE)
    ap.add_argument("--output", type=Path, default=OUTPUT)
    ap.add_argument("--check", action="store_true", help="only compare a fresh build with the existing output")
    args = ap.parse_args()
    data = build(args.source)
    if args.check:
        same = args.output.exists() and args.output.read_bytes() == data
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
