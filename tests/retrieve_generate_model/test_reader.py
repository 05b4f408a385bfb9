"""The answer reader: MiniLM with LoRA and a start/end head, scored across sources together."""

from __future__ import annotations

import json

import torch

from retrieve_generate_model.reader import Reader, ReaderConfig, ReaderTrainConfig, occurrences, train_reader

FACTS = [("the violin", "Anna Lindqvist"), ("the lighthouse", "Marco Bellini"), ("the glacier", "Ruth Okafor"),
         ("the orchard", "Tomas Novak"), ("the telescope", "Lena Fischer"), ("the harbour", "Idris Haddad")]


def rows() -> list[dict]:
    """Who-questions whose answer is a name in a source beside one that names someone else."""
    out = []
    for i, (thing, name) in enumerate(FACTS):
        other_thing, other_name = FACTS[(i + 1) % len(FACTS)]
        evidence = f"In 1990 {thing} was restored by {name}, who worked on it for three years."
        other = f"Visitors admire {other_thing}; {other_name} wrote a short guide to it."
        sources = [{"text": other}, {"text": evidence}]
        out.append({"question": f"Who restored {thing}?", "answer": name, "answerable": True,
                    "quote_source": 1, "relied": [1], "sources": sources})
    return out


def test_training_finds_the_answers_across_sources_and_round_trips(tmp_path, encoder):
    torch.manual_seed(0)  # the head's and adapters' initialization
    reader = Reader(base=encoder)
    data = rows()

    def found() -> float:
        hits = 0
        for row in data:
            texts = [s["text"] for s in row["sources"]]
            best = reader.spans(row["question"], texts, top=1)[0]
            hits += texts[best.source][best.char_start: best.char_end] == row["answer"]
        return hits / len(data)

    before = found()
    history = train_reader(data, reader, ReaderTrainConfig(epochs=12, batch_size=3, lr=3e-3), log=lambda _: None)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"] and history[-1]["skipped"] == 0
    assert found() == 1.0 > before

    reader.save(tmp_path / "reader")
    again = Reader.load(tmp_path / "reader", base=encoder)
    texts = [s["text"] for s in data[0]["sources"]]
    assert again.spans("Who restored the violin?", texts) == reader.spans("Who restored the violin?", texts)


def test_spans_are_character_spans_of_the_sources_within_the_length_limit(encoder):
    torch.manual_seed(0)
    reader = Reader(ReaderConfig(max_answer_tokens=3), base=encoder)
    texts = ["Straße 12, Zürich — the café opened in 1921.", "", "A second, unrelated source about rivers."]
    spans = reader.spans("When did the café open?", texts, top=20)
    assert len(spans) == 40 and spans == sorted(spans, key=lambda s: -s.score)  # 20 of each non-empty source
    _, offsets = reader._encode("When did the café open?", texts)
    for s in spans:
        piece = texts[s.source][s.char_start: s.char_end]
        assert s.source != 1 and piece.strip() == piece and piece
        inside = [o for o in offsets[s.source] if o is not None and s.char_start <= o[0] and o[1] <= s.char_end]
        assert 1 <= len(inside) <= 3  # word pieces as the reader read them in context
    assert reader.spans("Anything?", []) == []


def test_a_cut_off_answer_is_skipped_not_taught(encoder):
    reader = Reader(ReaderConfig(max_tokens=24), base=encoder)
    long = "word " * 60 + "the answer is Zanzibar."
    assert reader.loss("Where?", [long], "Zanzibar") is None
    assert reader.loss("Where?", ["It is Zanzibar."], "Zanzibar") is not None
    assert occurrences("Zanzibar, Zanzibar", "Zanzibar") == [(0, 8), (10, 18)]


def test_ragless_train_reader_writes_a_reader_folder_from_several_files(tmp_path, capsys):
    from ragless.cli import main
    from retrieve_generate_model.reader import Reader
    from synth_pipeline.qa import QAConfig, write_examples

    full = []
    for n, row in enumerate(rows()):
        evidence = row["sources"][1]["text"]
        start = evidence.index(row["answer"])
        sources = [{"seg_id": f"s{n}-{j}", "doc_id": f"d{n}", "title": "", "section": "", "text": s["text"],
                    "char_start": 0, "char_end": len(s["text"]), "score": 1.0} for j, s in enumerate(row["sources"])]
        full.append({**row, "example_id": f"e{n}", "doc_id": f"d{n}", "seg_id": f"s{n}-1", "lang": "en",
                     "question_origin": "cloze", "answer_kind": "name", "kind": "span", "sources": sources,
                     "answer_start": start, "answer_end": start + len(row["answer"]), "quote_start": 0,
                     "quote_end": len(evidence)})
    write_examples(full[:3], tmp_path / "a.parquet", QAConfig(), 0)
    write_examples(full[3:], tmp_path / "b.parquet", QAConfig(), 0)
    write_examples(full[:2], tmp_path / "heldout.parquet", QAConfig(), 0)
    code = main(["train", "reader", "--train", str(tmp_path / "a.parquet"), "--train", str(tmp_path / "b.parquet"),
                 "--heldout", str(tmp_path / "heldout.parquet"), "--out", str(tmp_path / "reader"), "--epochs", "1",
                 "--batch-size", "3", "--max-tokens", "64"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["n"] == 2
    report = json.loads((tmp_path / "reader" / "report.json").read_text())
    assert report["rows"] == 6 and report["history"][0]["examples"] == 6
    assert Reader.load(tmp_path / "reader").config.max_tokens == 64
    assert main(["train", "reader", "--train", str(tmp_path / "nope.parquet"), "--heldout", "x", "--out",
                 str(tmp_path / "o")]) == 2
