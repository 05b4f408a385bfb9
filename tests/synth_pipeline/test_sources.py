"""Training text sources: only corpus text, never an evaluation question, and nothing of SQuAD v2.0 dev's articles."""

from __future__ import annotations

import gzip
import json

from synth_pipeline.segmentation import structured_docs
from synth_pipeline.sources import main, spf_fr_pages, squad_train_articles


def _squad(path, titles: list[str]) -> None:
    data = {"data": [{"title": t, "paragraphs": [{"context": f"{t} text {i}.", "qas": [
        {"id": f"{t}{i}", "question": f"QUESTION about {t}?", "answers": [{"text": "text", "answer_start": 0}]}]}
        for i in range(2)]} for t in titles]}
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)


def test_squad_train_articles_are_the_v11_articles_v20_lacks_as_text_only(tmp_path):
    (tmp_path / "squad").mkdir()
    _squad(tmp_path / "squad" / "dev-v1.1.json.gz", ["Alpha", "Beta_Gamma", "Delta"])
    _squad(tmp_path / "squad" / "dev-v2.0.json.gz", ["Alpha", "Delta"])
    rows = list(squad_train_articles(tmp_path))
    assert rows == [{"id": "squad-v1.1/Beta_Gamma", "title": "Beta Gamma",
                     "paragraphs": ["Beta_Gamma text 0.", "Beta_Gamma text 1."]}]
    assert "QUESTION" not in json.dumps(rows)


def test_spf_fr_pages_are_lines_of_page_text_without_titles_or_questions(tmp_path):
    folder = tmp_path / "spf_fr" / "normalized"
    folder.mkdir(parents=True)
    pages = [{"doc_id": "F1", "text": "Intro  de la page.\n\nQui est concerné ?\n\t Les  parents.\n", "url": "u"},
             {"doc_id": "F2", "text": "Une ligne.", "url": "u"}]
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in pages)
    rows = list(spf_fr_pages(tmp_path))
    assert rows[0] == {"id": "spf-fr/F1", "title": "",
                       "paragraphs": ["Intro de la page.", "Qui est concerné ?", "Les parents."]}
    assert rows[1]["paragraphs"] == ["Une ligne."]
    # the command writes JSON lines that the synthetic pipeline reads as paragraph documents
    out = tmp_path / "text" / "spf.jsonl"
    assert main(["spf-fr-pages", "--data", str(tmp_path), "--out", str(out)]) == 0
    failures: list = []
    docs = list(structured_docs([out], failures))
    assert not failures and [d.doc_id for d in docs] == ["spf-fr/F1", "spf-fr/F2"]
    assert [b.text for b in docs[0].blocks] == ["Intro de la page.", "Qui est concerné ?", "Les parents."]
