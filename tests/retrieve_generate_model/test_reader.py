"""The answer reader: MiniLM with LoRA and a start/end head, scored across sources together."""

from __future__ import annotations

import json

import pytest
import torch

from retrieve_generate_model.reader import (
    AnswerReader,
    AnswerReaderConfig,
    AnswerReaderTrainConfig,
    no_answer_margin,
    occurrences,
    reader_examples,
    train_reader,
)

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
    reader = AnswerReader(base=encoder)
    data = rows()

    def found() -> float:
        hits = 0
        for row in data:
            texts = [s["text"] for s in row["sources"]]
            best = reader.spans(row["question"], texts, top=1)[0]
            hits += texts[best.source][best.char_start: best.char_end] == row["answer"]
        return hits / len(data)

    before = found()
    # 6 epochs: the loss falls to ~1% of the first epoch's (every answer is found after 4 already)
    history = train_reader(data, reader, AnswerReaderTrainConfig(epochs=6, batch_size=3, lr=3e-3), log=lambda _: None)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"] and history[-1]["skipped"] == 0
    assert found() == 1.0 > before

    reader.save(tmp_path / "reader")
    again = AnswerReader.load(tmp_path / "reader", base=encoder)
    texts = [s["text"] for s in data[0]["sources"]]
    assert again.spans("Who restored the violin?", texts) == reader.spans("Who restored the violin?", texts)


def test_a_reader_with_no_answer_learns_when_the_sources_do_not_answer(encoder):
    """Unanswerable rows (who wrote about a thing, asked of sources that only say who restored things) teach the
    [CLS] "no answer"; the answerable ones still find their names and prefer them to it."""
    torch.manual_seed(0)
    reader = AnswerReader(AnswerReaderConfig(null_answer=True), base=encoder)
    answerable = rows()
    unanswerable = [{"question": f"Who photographed {thing}?", "answer": "", "answerable": False, "quote_source": -1,
                     "relied": [], "sources": [{"text": f"In 1990 {thing} was restored by {name}."}]}
                    for thing, name in FACTS]
    # 6 epochs: the loss falls to ~3% of the first epoch's, every no-answer margin beyond +-8 (its sign is asserted)
    history = train_reader(answerable + unanswerable, reader,
                           AnswerReaderTrainConfig(epochs=6, batch_size=4, lr=3e-3), log=lambda _: None)
    assert history[0]["examples"] == 12 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    for row in answerable:
        texts = [s["text"] for s in row["sources"]]
        spans, null = reader.read(row["question"], texts)
        assert texts[spans[0].source][spans[0].char_start: spans[0].char_end] == row["answer"]
        assert no_answer_margin(spans, null) < 0
    for row in unanswerable:
        assert no_answer_margin(*reader.read(row["question"], [s["text"] for s in row["sources"]])) > 0
    plain = AnswerReader(base=encoder)  # without the option: no score for it, and no way to teach it
    assert plain.read("Who?", ["Anna did."])[1] is None
    with pytest.raises(ValueError, match="no 'no answer' option"):
        plain.loss("Who?", ["Anna did."], None)


def test_training_killed_after_an_epoch_resumes_to_the_same_reader(tmp_path, encoder):
    settings = AnswerReaderTrainConfig(epochs=2, batch_size=3, lr=3e-3)
    torch.manual_seed(0)
    whole = AnswerReader(base=encoder)
    expected = train_reader(rows(), whole, settings, log=lambda _: None)

    class Killed(Exception):
        pass

    def kill_in_epoch_2(message: str) -> None:
        if '"epoch": 2' in message:
            raise Killed

    torch.manual_seed(0)
    folder = tmp_path / "reader"
    with pytest.raises(Killed):
        train_reader(rows(), AnswerReader(base=encoder), settings, log=kill_in_epoch_2, save_to=folder)
    assert (tmp_path / "reader.train.pt").is_file() and not folder.exists()  # epoch 1 kept, nothing saved yet
    torch.manual_seed(123)  # a new process: other initial weights, restored from the state
    resumed = AnswerReader(base=encoder)
    with pytest.raises(ValueError, match="another reader run"):
        train_reader(rows(), resumed, AnswerReaderTrainConfig(epochs=3), log=lambda _: None, save_to=folder)
    messages = []
    history = train_reader(rows(), resumed, settings, log=messages.append, save_to=folder)
    assert messages[0] == "resuming the reader after epoch 1/2"
    assert [h["loss"] for h in history] == [h["loss"] for h in expected]
    texts = [s["text"] for s in rows()[0]["sources"]]
    assert resumed.spans("Who restored the violin?", texts) == whole.spans("Who restored the violin?", texts)
    assert AnswerReader.load(folder, base=encoder).spans("Who restored the violin?", texts) == \
        whole.spans("Who restored the violin?", texts)  # saved when done, and the state is gone
    assert not (tmp_path / "reader.train.pt").exists()


def random_reader(seed: int, encoder, **config) -> AnswerReader:
    """An untrained reader whose adapters, too, differ from another seed's (LoRA's B starts at zero)."""
    torch.manual_seed(seed)
    reader = AnswerReader(AnswerReaderConfig(**config), base=encoder)
    for name, weight in reader.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.05)
    return reader


def test_an_ensemble_reads_with_the_mean_of_its_readers_scores_and_round_trips(tmp_path, encoder):
    random_reader(1, encoder, null_answer=True).save(tmp_path / "a")
    random_reader(2, encoder).save(tmp_path / "b")
    a, b = AnswerReader.load(tmp_path / "a", base=encoder), AnswerReader.load(tmp_path / "b", base=encoder)
    question, texts = "Who restored the violin?", [s["text"] for s in rows()[0]["sources"]]
    start_a, end_a, offsets, windows = a.logits(question, texts)
    start_b, end_b, _, _ = b.logits(question, texts)
    assert not torch.allclose(start_a[:, 1:], start_b[:, 1:])  # two readers that disagree

    both = AnswerReader.ensemble([tmp_path / "a", tmp_path / "b"], base=encoder)
    assert both.config.members == ("member1",) and both.null_answer and not b.null_answer
    start, end, offsets_both, windows_both = both.logits(question, texts)
    assert not any(w.requires_grad for w in both.model.parameters())  # reading trains no adapter
    assert (offsets_both, windows_both) == (offsets, windows)
    source = torch.isfinite(start_b)  # the sources' tokens (b scores no [CLS])
    torch.testing.assert_close(start[source], ((start_a + start_b) / 2)[source])
    torch.testing.assert_close(end[source], ((end_a + end_b) / 2)[source])
    torch.testing.assert_close(start[:, 0], start_a[:, 0])  # "no answer": the mean of the readers that score it
    assert torch.isinf(start[~source & ~torch.isfinite(start_a)]).all()  # padding and question stay outside

    both.save(tmp_path / "both")
    assert json.loads((tmp_path / "both" / "reader.json").read_text())["members"] == ["member1"]
    again = AnswerReader.load(tmp_path / "both", base=encoder)
    assert again.read(question, texts) == both.read(question, texts)
    assert a.read(question, texts) == AnswerReader.load(tmp_path / "a", base=encoder).read(question, texts)

    with pytest.raises(ValueError, match="read, not trained"):
        train_reader(rows(), again, log=lambda _: None)
    with pytest.raises(ValueError, match="an ensemble itself"):
        AnswerReader.ensemble([tmp_path / "a", tmp_path / "both"], base=encoder)
    random_reader(3, encoder, stride=64).save(tmp_path / "c")
    with pytest.raises(ValueError, match="stride 64 differs"):
        AnswerReader.ensemble([tmp_path / "a", tmp_path / "c"], base=encoder)
    with pytest.raises(ValueError, match="AnswerReader.ensemble"):
        AnswerReader(AnswerReaderConfig(members=("member1",)), base=encoder)


def test_ragless_train_ensemble_assembles_reader_folders(tmp_path, encoder, capsys):
    from ragless.cli import main

    for seed, name in [(1, "a"), (2, "b"), (3, "c")]:
        random_reader(seed, encoder, null_answer=name == "a").save(tmp_path / name)
    (tmp_path / "b" / "report.json").write_text('{"rows": 5}')
    out = tmp_path / "reader"
    (out / "member7").mkdir(parents=True)  # left by an older ensemble: replaced with the folder
    args = ["train", "ensemble", "--reader", str(tmp_path / "a"), "--reader", str(tmp_path / "b"),
            "--reader", str(tmp_path / "c"), "--out", str(out)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["members"] == [str(tmp_path / n) for n in "abc"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["member1", "member2"]
    report = json.loads((out / "report.json").read_text())["members"]
    assert [(m["name"], m["report"]) for m in report] == [("default", None), ("member1", {"rows": 5}),
                                                          ("member2", None)]
    texts = ["In 1990 the violin was restored by Anna Lindqvist."]
    expected = AnswerReader.ensemble([tmp_path / n for n in "abc"], base=encoder).read("Who?", texts)
    assert AnswerReader.load(out, base=encoder).read("Who?", texts) == expected

    assert main(["train", "ensemble", "--reader", str(out), "--out", str(tmp_path / "x")]) == 2  # nested
    assert "an ensemble itself" in capsys.readouterr().err
    assert main(["train", "ensemble", "--reader", str(tmp_path / "a"), "--out", str(tmp_path / "a")]) == 2
    assert main(["train", "ensemble", "--reader", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not a reader folder" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_spans_are_character_spans_of_the_sources_within_the_length_limit(encoder):
    torch.manual_seed(0)
    reader = AnswerReader(AnswerReaderConfig(max_answer_tokens=3), base=encoder)
    texts = ["Straße 12, Zürich — the café opened in 1921.", "", "A second, unrelated source about rivers."]
    spans = reader.spans("When did the café open?", texts, top=20)
    assert len(spans) == 40 and spans == sorted(spans, key=lambda s: -s.score)  # 20 of each non-empty source
    _, offsets, windows = reader._encode("When did the café open?", texts)
    assert windows == [0, 1, 2]  # short sources: one window each
    for s in spans:
        piece = texts[s.source][s.char_start: s.char_end]
        assert s.source != 1 and piece.strip() == piece and piece
        inside = [o for o in offsets[s.source] if o is not None and s.char_start <= o[0] and o[1] <= s.char_end]
        assert 1 <= len(inside) <= 3  # word pieces as the reader read them in context
    assert reader.spans("Anything?", []) == []


def test_a_long_source_is_read_in_overlapping_windows(encoder):
    reader = AnswerReader(AnswerReaderConfig(max_tokens=24, max_question_tokens=8, stride=4), base=encoder)
    long = "word " * 60 + "the answer is Zanzibar."
    _, offsets, windows = reader._encode("Where?", [long, "It is Zanzibar."])
    assert windows.count(0) > 3 and windows[-1] == 1
    first_window_end = max(o[1] for o in offsets[0] if o is not None)
    assert first_window_end < long.index("Zanzibar")
    assert reader.loss("Where?", [long], "Zanzibar") is not None  # the last window holds it: taught, not cut off
    spans = reader.spans("Where?", [long], top=500)
    assert any(long[s.char_start: s.char_end] == "Zanzibar" for s in spans)
    assert len({(s.char_start, s.char_end) for s in spans}) == len(spans)  # a span two windows read is kept once
    assert reader.loss("Where?", ["It is Paris."], "Zanzibar") is None  # not in what is read: skipped
    assert occurrences("Zanzibar, Zanzibar", "Zanzibar") == [(0, 8), (10, 18)]


def test_ragless_train_reader_writes_a_reader_folder_from_several_files(tmp_path, capsys):
    from ragless.cli import main
    from retrieve_generate_model.reader import AnswerReader
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
                 "--batch-size", "3", "--max-tokens", "96", "--stride", "16"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["n"] == 2
    report = json.loads((tmp_path / "reader" / "report.json").read_text())
    assert report["rows"] == 6 and report["history"][0]["examples"] == 6
    assert AnswerReader.load(tmp_path / "reader").config.max_tokens == 96
    assert main(["train", "reader", "--train", str(tmp_path / "a.parquet"), "--heldout",
                 str(tmp_path / "heldout.parquet"), "--out", str(tmp_path / "o"), "--max-tokens", "96",
                 "--stride", "90"]) == 2  # windows that would not advance: a usage error
    assert "stride 90" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["train", "reader", "--train", str(tmp_path / "nope.parquet"), "--heldout", "x", "--out",
                 str(tmp_path / "o")]) == 2


def test_unanswerable_rows_are_read_with_what_is_left_of_their_evidence_first():
    far = {"seg_id": "other", "text": "Bread is baked in ovens."}
    kept = {"seg_id": "s1", "text": "The station opened in 1950."}  # a swapped question's evidence, kept whole
    row = {"question": "When did the airport open?", "answer": "", "answerable": False, "seg_id": "s1",
           "sources": [far, kept]}
    assert reader_examples([row], negatives=1, unanswerable=True) == [
        ("When did the airport open?", [kept["text"], far["text"]], None)]
    assert reader_examples([row], negatives=1) == []  # without the "no answer" option they are not read
