"""Check demo/answers.json against demo/corpus and demo/questions.txt (no project code needed).

For each answerable question, the expected answer and its longer evidence span must occur verbatim, after collapsing
runs of whitespace to one space, in the extracted text of the named file:

- .pdf   text extracted by pypdf, pages joined with newlines
- .html  visible text (BeautifulSoup, <script>/<style>/<head> removed); checked both with tags joined by "" and by " "
- .jsonl the "text" field of the named record (key "record"), which must have "id", "title" and "text"
- other  the file's text as is (.md, .txt)

The unanswerable question (answer null) is checked not to be answerable by keyword: its distinctive term must occur in
no file. Also checks that questions.txt lists the same questions in the same order. Exit status 1 on any failure.

    .venv/bin/python demo/check_answers.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
ABSENT_TERMS = {"What is the default port of a PostgreSQL server?": ["postgres"]}


def norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def extract(path: Path) -> dict[str, str]:
    """Return named text views of one file (several for HTML, one per record for JSONL)."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        import pypdf

        return {"pypdf": "\n".join(p.extract_text() for p in pypdf.PdfReader(path).pages)}
    if suffix in (".html", ".htm"):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(path.read_bytes(), "html.parser")
        for tag in soup(["script", "style", "head"]):
            tag.decompose()
        return {"visible-joined": soup.get_text(""), "visible-spaced": soup.get_text(" ")}
    if suffix == ".jsonl":
        views = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                rec = json.loads(line)
                assert {"id", "title", "text"} <= rec.keys(), f"{path.name}:{n}: needs id, title, text"
                assert rec["id"] not in views, f"{path.name}:{n}: duplicate id {rec['id']}"
                views[rec["id"]] = rec["text"]
        return views
    return {"raw": path.read_text(encoding="utf-8")}


def main() -> int:
    answers = json.loads((HERE / "answers.json").read_text(encoding="utf-8"))
    questions = [q for q in (HERE / "questions.txt").read_text(encoding="utf-8").splitlines() if q.strip()]
    failures = []
    if questions != [a["question"] for a in answers]:
        failures.append("questions.txt and answers.json list different questions")
    texts = {p.name: extract(p) for p in sorted(CORPUS.iterdir()) if p.is_file()}
    for a in answers:
        q, before = a["question"], len(failures)
        if a["answer"] is None:
            for term in ABSENT_TERMS.get(q, []):
                hits = [f for f, views in texts.items() if any(term in v.lower() for v in views.values())]
                if hits:
                    failures.append(f"{q!r}: {term!r} occurs in {hits}")
            print(f"{'ok  ' if len(failures) == before else 'FAIL'} (unanswerable) {q}")
            continue
        views = texts.get(a["file"])
        if views is None:
            failures.append(f"{q!r}: no file {a['file']}")
            print(f"FAIL {q}")
            continue
        if a["file"].endswith(".jsonl"):
            views = {a["record"]: views.get(a["record"], "")}
        for span in (a["answer"], a["evidence"]):
            missing = [name for name, text in views.items() if norm(span) not in norm(text)]
            if missing:
                failures.append(f"{q!r}: {span!r} not in {a['file']} ({', '.join(missing)})")
        elsewhere = [
            f for f, vs in texts.items() if f != a["file"] and any(norm(a["answer"]) in norm(v) for v in vs.values())
        ]
        note = f"  (answer string also in {elsewhere})" if elsewhere else ""
        print(f"{'ok  ' if len(failures) == before else 'FAIL'} {q}  ->  {a['answer']!r} in {a['file']}{note}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
