"""The segmenter's policy-gradient stage: sampled labellings, the downstream reward of a segmentation (retrieval and
reader of the shipped joint model), and `train_segmenter_rl` steps that move the segmenter and resume."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rewards import segmenter_rl
from rewards.segmenter_rl import DocQuestion, SegmenterRLConfig, sample_labels
from tests.ragless.test_ingest import ingest, write_corpus


def test_doctests():
    assert doctest.testmod(segmenter_rl).failed == 0


def test_sampled_labels_follow_the_tempered_distribution_and_carry_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=g, requires_grad=True)
    labels, logp = sample_labels(logits, 0.01, g)  # nearly greedy
    assert torch.equal(labels, logits.argmax(-1)) and logp.shape == (40,)
    torch.testing.assert_close(logp, torch.log_softmax(logits / 0.01, -1).max(-1).values)
    labels, logp = sample_labels(logits, 1.0, g)
    expected = torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(logp, expected)
    logp.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    one = torch.tensor([[0.0, 1.0, -1.0, 2.0]]).expand(20000, -1)  # frequencies approach the softmax
    counts = torch.bincount(sample_labels(one, 1.0, g)[0], minlength=4).float() / 20000
    torch.testing.assert_close(counts, torch.softmax(one[0], -1), atol=0.015, rtol=0)


def located_rows(index) -> list[dict]:
    """Synthetic-style rows about each document of ``index``: the property of a fact, located in the document."""
    from ragless.store import IndexReader

    reader = IndexReader(index)
    rows = []
    for entry in reader.documents():
        doc = reader.document(entry.doc_id)
        for j in (11, 14, 17):  # two-digit properties: a cut can go through one
            sentence = next(s for s in doc.text.split(". ") if f"Fact {j} about" in s)
            answer = sentence.rsplit(" ", 1)[1]
            start = doc.text.index(sentence) + sentence.rindex(answer)
            question = sentence[: sentence.rindex("it has property")] + "which property does it have?"
            rows.append({"doc_id": entry.doc_id, "question": question, "answer": answer, "answerable": True,
                         "quote_source": 0, "answer_start": start, "answer_end": start + len(answer),
                         "sources": [{"text": doc.text, "char_start": 0}]})
    return rows


def test_a_segmentation_that_cuts_through_the_answer_loses_the_evidence(tmp_path, encoder):
    from ragless.cli import segmenter_rl_inputs
    from ragless.components import checkpoint_path
    from ragless.store import IndexReader
    from rewards.segmenter_rl import SegmentationScorer, doc_questions

    paths = write_corpus(tmp_path / "corpus", 4)
    ingest(tmp_path / "index", paths, encoder)
    reader = IndexReader(tmp_path / "index")
    rows = located_rows(tmp_path / "index")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    documents, pool = segmenter_rl_inputs(tmp_path / "index", tmp_path / "rows.parquet")
    questions = doc_questions(rows)
    assert sorted(documents) == sorted(questions) == sorted(e.doc_id for e in reader.documents())
    assert len(pool) == len(reader) and all(s.title == reader.catalog[s.doc_id].title for s in pool)
    doc_id = sorted(questions)[0]
    doc = documents[doc_id]
    assert doc.text == reader.document(doc_id).text
    scorer = SegmentationScorer(checkpoint_path("joint"), pool, k=2, log=lambda msg: None)
    asked = questions[doc_id][:1]
    shared = scorer.prepare(doc_id, asked)
    q = asked[0]
    whole = scorer.score(doc, [(0, len(doc.text))], [""], shared)  # the answer and the question's words together
    cut = (q.start + q.end) // 2  # through the answer: no segment holds all of it
    split = scorer.score(doc, [(0, cut), (cut, len(doc.text))], ["", ""], shared)
    assert whole["evidence"] > 0 and split["evidence"] == 0.0
    assert 0.0 <= whole["answer_f1"] <= 1.0 and 0.0 <= split["answer_f1"] <= 1.0
    assert len(shared["texts"]) == sum(s.doc_id != doc_id for s in reader.iter_segments())  # its own left out


@pytest.mark.slow
def test_policy_gradient_steps_move_the_segmenter_log_and_resume(tmp_path, encoder):
    from preprocess_model.model import LearnedSegmenter
    from preprocess_model.readers import read_paths
    from ragless.cli import segmenter_rl_inputs
    from ragless.components import checkpoint_path
    from rewards.segmenter_rl import train_segmenter_rl

    paths = write_corpus(tmp_path / "corpus", 4)
    ingest(tmp_path / "index", paths, encoder)
    train = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(located_rows(tmp_path / "index")), train)
    documents, pool = segmenter_rl_inputs(tmp_path / "index", train)
    inputs = (checkpoint_path("segmenter"), checkpoint_path("joint"), documents, pool, train)
    out = tmp_path / "seg-rl"
    # one step (it moves the segmenter), then one more resumed
    cfg = SegmenterRLConfig(steps=1, docs_per_step=2, group_size=2, questions_per_doc=2, lr=1e-3, save_every=1,
                            temperature=1.0)
    start = LearnedSegmenter(checkpoint_path("segmenter")).model.trainable_state()
    last = train_segmenter_rl(*inputs, out, cfg, log=lambda msg: None)
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1] and last == log[-1]
    for e in log:
        assert 0.0 <= e["evidence"] <= 1.0 and 0.0 <= e["answer_f1"] <= 1.0 and e["kl"] >= 0.0
        assert e["reward"] == pytest.approx(e["evidence"] + e["answer_f1"], abs=1e-4)
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step starts at the reference
    trained = LearnedSegmenter(out)
    moved = [not torch.equal(start[k], v) for k, v in trained.model.trainable_state().items() if k in start]
    assert any(moved)
    docs = [d for d in read_paths([str(p) for p in paths])]
    assert all(segs for segs in trained.segment(docs))  # the result is a segmenter ingestion can use

    resumed = train_segmenter_rl(*inputs, out, SegmenterRLConfig(**{**cfg.__dict__, "steps": 2}),
                                 log=lambda msg: None)
    assert resumed["step"] == 2 and len((out / "rl_log.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="other settings"):
        train_segmenter_rl(*inputs, out, SegmenterRLConfig(**{**cfg.__dict__, "lr": 5e-3}), log=lambda msg: None)
    assert np.isfinite([e["loss"] for e in log]).all()


def test_doc_questions_skip_rows_whose_answer_is_not_where_they_say():
    rows = [{"answerable": True, "doc_id": "d", "question": "q", "answer": "xyz", "quote_source": 0,
             "answer_start": 0, "answer_end": 3, "sources": [{"text": "abc def", "char_start": 0}]},
            {"answerable": True, "doc_id": "d", "question": "q", "answer": "abc", "quote_source": 3,
             "answer_start": 0, "answer_end": 3, "sources": [{"text": "abc def", "char_start": 0}]}]
    assert segmenter_rl.doc_questions(rows) == {}
    assert DocQuestion("q", "a", 1, 2).end == 2
