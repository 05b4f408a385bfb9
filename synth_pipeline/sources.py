"""Text to make training data from, kept apart from what is evaluated.

The shipped checkpoints are trained on text that no evaluation of their *zero-shot* numbers reads:

- ``squad-train-articles``: the 13 SQuAD v1.1 dev articles that SQuAD v2.0 dev does not hold (v2.0 dev's 35 articles
  are all in v1.1 dev), as paragraph records. Only their text is used, never their questions or answers; numbers on
  SQuAD v2.0 dev are then zero-shot, numbers on the other 35 articles of v1.1 dev too.
- ``debian-docs``: the HTML and Markdown documentation that Debian packages install under /usr/share/doc (real
  structure: headings, lists, tables, navigation).
- ``spf-fr-pages``: the text of the 535 French service-public.fr pages (never their questions or titles), one
  paragraph per line: French administrative prose, lists and short section lines, which nothing else here has (without
  it the only French the model saw was the synthetic boilerplate it must drop). A checkpoint trained with it is
  *adapted* on spf-fr (as a user adapts on their own pages) and still zero-shot on SQuAD v2.0.

    python -m synth_pipeline.sources squad-train-articles --data ../shared/data --out data/text/squad13.jsonl
    python -m synth_pipeline.sources debian-docs --out data/text/debian      # copies .html/.md, keeps licenses
    python -m synth_pipeline.sources spf-fr-pages --data ../shared/data --out data/text/spf-fr.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _squad_articles(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)["data"]


def squad_train_articles(data: str | Path) -> Iterator[dict[str, Any]]:
    """SQuAD v1.1 dev articles absent from v2.0 dev: ``{"id", "title", "paragraphs"}`` records (text only)."""
    squad = Path(data) / "squad"
    held = {a["title"] for a in _squad_articles(squad / "dev-v2.0.json.gz")}
    for article in _squad_articles(squad / "dev-v1.1.json.gz"):
        if article["title"] not in held:
            title = article["title"].replace("_", " ")
            yield {"id": f"squad-v1.1/{article['title']}", "title": title,
                   "paragraphs": [p["context"] for p in article["paragraphs"]]}


def spf_fr_pages(data: str | Path) -> Iterator[dict[str, Any]]:
    """The service-public.fr pages as ``{"id", "title": "", "paragraphs"}`` records: each non-empty line a paragraph
    (whitespace collapsed); no title, as the evaluated corpus has none."""
    with gzip.open(Path(data) / "spf_fr" / "normalized" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            page = json.loads(line)
            lines = [" ".join(s.split()) for s in page["text"].splitlines()]
            yield {"id": f"spf-fr/{page['doc_id']}", "title": "", "paragraphs": [s for s in lines if s]}


def _write_jsonl(rows: list[dict[str, Any]], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{len(rows)} documents, {sum(len(r['paragraphs']) for r in rows)} paragraphs -> {out}", file=sys.stderr)


def debian_docs(out: str | Path, root: str | Path = "/usr/share/doc", max_bytes: int = 2_000_000) -> int:
    """Copy the HTML and Markdown files under ``root`` (with each package's copyright file) to ``out``."""
    out, root = Path(out), Path(root)
    n = 0
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in (".html", ".htm", ".md") or not path.is_file() or path.is_symlink():
            continue
        if path.stat().st_size > max_bytes:
            continue
        rel = path.relative_to(root)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)
        copyright_file = root / rel.parts[0] / "copyright"
        if copyright_file.is_file():
            shutil.copyfile(copyright_file, out / rel.parts[0] / "copyright")
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("squad-train-articles", help="the 13 v1.1 dev articles that v2.0 dev lacks, as JSON lines")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", required=True)
    p = sub.add_parser("spf-fr-pages", help="the French service-public.fr pages' text, one paragraph per line")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", required=True)
    p = sub.add_parser("debian-docs", help="HTML and Markdown documentation of the installed Debian packages")
    p.add_argument("--root", default="/usr/share/doc")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.source == "squad-train-articles":
        _write_jsonl(list(squad_train_articles(args.data)), args.out)
    elif args.source == "spf-fr-pages":
        _write_jsonl(list(spf_fr_pages(args.data)), args.out)
    else:
        print(f"{debian_docs(args.out, args.root)} files -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
