"""The evaluation harness end to end on the tiny benchmark folder: systems, per-question scoring, reports, CLI."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from ragless.cli import main
from ragless.eval.datasets import EvalQuestion, GoldSpan
from ragless.eval.harness import (
    EvalConfig,
    compare,
    cutoffs,
    evaluate,
    markdown,
    score_answer,
    score_retrieval,
)
from retrieve_generate_model.records import Answer, Citation, Source


def source(doc_id: str, start: int, end: int, text: str = "") -> Source:
    return Source(seg_id=f"{doc_id}:{start}", doc_id=doc_id, score=1.0, text=text, char_start=start, char_end=end)


QUESTION = EvalQuestion(
    qid="q", question="Who won?", answers=["Denver Broncos"], answerable=True,
    evidence=[GoldSpan("art", 100, 300)], answer_spans=[GoldSpan("art", 150, 164)], relevance={"p1": 1},
    kind="span", lang="en",
)


def test_retrieval_is_judged_by_span_whatever_the_segmentation():
    # rank 1 misses (another place), rank 2 covers most of the gold paragraph: recall@1 0, recall@5 1, MRR 1/2
    sources = [source("art", 400, 600, "nothing here"), source("art", 120, 320, "the Denver Broncos won")]
    m = score_retrieval(QUESTION, sources, unit="passage")
    assert (m["recall@1"], m["recall@5"], m["mrr@10"]) == (0.0, 1.0, 0.5)
    assert m["answer_recall@5"] == 1.0
    # a window overlapping only a sliver of the gold paragraph does not count as retrieving it
    assert score_retrieval(QUESTION, [source("art", 290, 490, "x")], unit="passage")["recall@5"] == 0.0


def test_recall_at_k_beyond_ten_when_more_are_retrieved():
    misses = [source("art", 400 + 10 * i, 405 + 10 * i, "x") for i in range(11)]  # the gold paragraph 12th
    ranked = misses + [source("art", 120, 320, "the Denver Broncos won")]
    m = score_retrieval(QUESTION, ranked, unit="passage", ks=cutoffs(100))
    assert (m["recall@10"], m["recall@100"], m["mrr@10"]) == (0.0, 1.0, 0.0)
    assert "recall@100" not in score_retrieval(QUESTION, ranked, unit="passage")


def test_answers_and_citations_are_scored_against_gold():
    doc = "x" * 150 + "Denver Broncos" + "y" * 200
    good = Citation("s", "art", 150, 164, "Denver Broncos")
    forged = Citation("s", "art", 10, 24, "Denver Broncos")  # the quote is not what the span holds
    m = score_answer(QUESTION, Answer("the Denver Broncos", citations=[good, forged]), {"art": doc})
    assert (m["em"], m["f1"], m["answerable_f1"]) == (1.0, 1.0, 1.0)
    assert m["quote_validity"] == 0.5 and m["citation_precision"] == 0.5 and m["citation_recall"] == 1.0
    assert m["abstain_acc"] is None  # answerable
    abstained = score_answer(QUESTION, Answer("", abstained=True), {"art": doc})
    assert abstained["em"] == 0.0 and abstained["quote_validity"] is None


@pytest.mark.parametrize("corpus", ["gold", "articles"])
def test_retrieval_only_run_of_every_system(benchmark_data, corpus):
    cfg = EvalConfig(dataset="squad-v1.1", data=str(benchmark_data), corpus=corpus, limit=0, retrieval_only=True,
                     bootstrap=200)
    report = evaluate(cfg, progress=lambda _: None)
    assert [r["system"] for r in report["results"]] == ["workflow-bm25", "workflow-dense", "ragless"]
    for r in report["results"]:
        assert r["dataset"] == "squad-v1.1" and r["corpus"] == corpus and r["n"] == len(r["per_question"]) > 0
        for name in ("recall@1", "recall@5", "mrr@10", "ndcg@10"):
            value = r["metrics"][name]
            low, high = r["ci"][name]
            assert 0.0 <= low <= value <= high <= 1.0
        assert "em" not in r["metrics"]  # retrieval only
        assert r["metrics"]["segments"] > 0 and r["metrics"]["latency_p95_s"] >= r["metrics"]["latency_p50_s"]
    if corpus == "gold":  # the oracle segmentation is the benchmark's own passages, for every system
        assert {r["metrics"]["segments"] for r in report["results"]} == {3}  # SQUAD_CORPUS has 3 paragraphs
    table = markdown(report)
    assert table.count("\n") == 4 and "| workflow-bm25 | squad-v1.1 |" in table
    rows = compare(report, n_resamples=200)
    assert {r["system"] for r in rows} == {"workflow-dense", "ragless"} and all(r["baseline"] == "workflow-bm25"
                                                                               for r in rows)


def test_shared_embeddings_change_speed_not_results(benchmark_data):
    base = dict(dataset="squad-v1.1", data=str(benchmark_data), corpus="articles", limit=0, retrieval_only=True,
                systems=("workflow-dense", "ragless"), bootstrap=50)
    alone = evaluate(EvalConfig(**base), progress=lambda _: None)["results"]
    shared = evaluate(EvalConfig(**base, share_embeddings=True), progress=lambda _: None)["results"]
    for a, s in zip(alone, shared):
        assert [q["retrieved"] for q in a["per_question"]] == [q["retrieved"] for q in s["per_question"]]
        assert a["metrics"]["peak_rss_mb"] > 100 and s["metrics"]["peak_rss_mb"] > 100  # sampled per system


def test_one_segmenter_for_every_system(benchmark_data):
    cfg = EvalConfig(dataset="squad-v1.1", data=str(benchmark_data), corpus="articles", limit=0, retrieval_only=True,
                     systems=("workflow-bm25", "ragless"), bootstrap=50, segmenter="fixed-window")
    results = evaluate(cfg, progress=lambda _: None)["results"]
    assert {r["build"]["segmenter"] for r in results} == {"fixed-window"}
    with pytest.raises(ValueError, match="articles"):
        EvalConfig(corpus="gold", segmenter="fixed-window")
    # the fixed windows' size is a setting of the run (the segmentation benchmark matches the learned mean length)
    short = evaluate(EvalConfig(**{**asdict(cfg), "systems": ("workflow-bm25",),
                                   "segmenter_config": {"window_chars": 40, "overlap_chars": 8}}),
                     progress=lambda _: None)["results"][0]
    assert short["metrics"]["segments"] > results[0]["metrics"]["segments"]
    assert short["metrics"]["mean_segment_chars"] <= 40 < results[0]["metrics"]["mean_segment_chars"]
    with pytest.raises(ValueError, match="needs a segmenter"):
        EvalConfig(segmenter_config={"window_chars": 1024})
    with pytest.raises(ValueError, match="apply to the fixed-window segmenter"):
        evaluate(EvalConfig(**{**asdict(cfg), "segmenter": "learned", "segmenter_config": {"window_chars": 9}}),
                 progress=lambda _: None)


def test_document_level_datasets(benchmark_data):
    for dataset in ("scifact", "spf-fr"):
        cfg = EvalConfig(dataset=dataset, data=str(benchmark_data), corpus="gold", limit=0, retrieval_only=True,
                         systems=("workflow-bm25",), bootstrap=100)
        (result,) = evaluate(cfg, progress=lambda _: None)["results"]
        assert 0.0 <= result["metrics"]["ndcg@10"] <= 1.0
    cfg = EvalConfig(dataset="scifact", data=str(benchmark_data), corpus="gold", limit=0, retrieval_only=True,
                     systems=("workflow-bm25",), bootstrap=100, k=100)
    (result,) = evaluate(cfg, progress=lambda _: None)["results"]
    assert result["metrics"]["recall@10"] <= result["metrics"]["recall@100"] <= 1.0


def test_cli_contract(benchmark_data, tmp_path, capsys):
    out = tmp_path / "eval" / "squad.json"
    code = main(["eval", "--dataset", "squad-v2.0", "--data", str(benchmark_data), "--systems",
                 "workflow-bm25,workflow-dense", "--corpus", "articles", "--limit", "2", "--seed", "3",
                 "--retrieval-only", "--out", str(out), "--compare"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["config"]["seed"] == 3 and report["config"]["systems"] == ["workflow-bm25", "workflow-dense"]
    for r in report["results"]:
        assert {"system", "dataset", "corpus", "n", "metrics"} <= set(r) and r["n"] == 2
    assert out.with_suffix(".md").read_text().startswith("| system |")
    assert "| workflow-dense | workflow-bm25 |" in capsys.readouterr().out  # the compare table
    assert main(["eval", "--dataset", "nope", "--data", str(benchmark_data), "--retrieval-only"]) == 2
    assert main(["eval", "--corpus", "pages", "--data", str(benchmark_data)]) == 2
    assert main(["eval", "--data", str(tmp_path / "missing"), "--retrieval-only"]) == 2
    # fixed windows of another size, recorded in the report; window flags with another segmenter are refused
    small = tmp_path / "eval" / "small.json"
    assert main(["eval", "--dataset", "squad-v2.0", "--data", str(benchmark_data), "--systems", "workflow-bm25",
                 "--limit", "2", "--retrieval-only", "--segmenter", "fixed-window", "--window-chars", "40",
                 "--overlap-chars", "8", "--out", str(small)]) == 0
    report = json.loads(small.read_text())
    assert report["config"]["segmenter_config"] == {"window_chars": 40, "overlap_chars": 8}
    assert report["results"][0]["metrics"]["mean_segment_chars"] <= 40
    assert main(["eval", "--data", str(benchmark_data), "--retrieval-only", "--segmenter", "learned",
                 "--window-chars", "40"]) == 2


@pytest.mark.slow
def test_generation_is_scored_with_citations(benchmark_data):
    cfg = EvalConfig(dataset="squad-v2.0", data=str(benchmark_data), corpus="gold", limit=0,
                     systems=("workflow-bm25",), bootstrap=100)
    (result,) = evaluate(cfg, progress=lambda _: None)["results"]
    for name in ("em", "f1", "abstain_acc", "answerable_f1"):
        assert 0.0 <= result["metrics"][name] <= 1.0
    assert result["metrics"]["latency_answer_p50_s"] > 0
    for q in result["per_question"]:
        assert isinstance(q["answer"], str) and isinstance(q["abstained"], bool)
        if q["citations"]:
            assert q["quote_validity"] == 1.0  # citations quote the documents verbatim


def test_ragless_at_a_checkpoint_answers_with_that_joint_model(benchmark_data, tmp_path, monkeypatch):
    from retrieve_generate_model.joint import JointConfig, JointModel

    checkpoint = tmp_path / "joint-untrained"
    JointModel(JointConfig(abstain_bias=-1e9)).save(checkpoint)  # fresh adapters: answers, never abstains
    name = f"ragless@{checkpoint}"
    cfg = EvalConfig(dataset="squad-v1.1", data=str(benchmark_data), corpus="gold", limit=3, systems=(name,),
                     bootstrap=50)
    (result,) = evaluate(cfg, progress=lambda _: None)["results"]
    assert result["system"] == name and result["n"] == 3
    assert 0.0 <= result["metrics"]["f1"] <= 1.0 and result["metrics"]["latency_answer_p50_s"] > 0
    assert result["metrics"]["latency_answer_read_p50_s"] > 0  # the model's own stages are reported too
    for q in result["per_question"]:  # ... and lie within the answer's time
        t = q["timings"]
        assert 0 < t["answer.read_s"] + t["answer.generate_s"] <= t["answer_s"] + 2e-4  # rounded to 0.1 ms
        assert t["answer_s"] <= t["total_s"]
    for q in result["per_question"]:
        assert not q["abstained"] and q["answer"]  # told never to abstain, it answers
        assert q["quote_validity"] in (None, 1.0)  # quotes are verbatim by construction
    with pytest.raises(ValueError, match="no checkpoint"):
        EvalConfig(systems=(f"ragless@{tmp_path / 'missing'}",))
    monkeypatch.chdir(tmp_path)  # a path relative to the working directory names a checkpoint too
    assert EvalConfig(systems=("ragless@joint-untrained",)).systems == ("ragless@joint-untrained",)
    with pytest.raises(ValueError, match="no checkpoint at .*missing"):
        EvalConfig(systems=("ragless@missing",))
    with pytest.raises(ValueError, match="unknown system"):
        EvalConfig(systems=("ragless-ish",))


def test_a_model_that_rewrites_takes_its_second_round_in_the_harness(benchmark_data, tmp_path):
    from retrieve_generate_model.joint import JointConfig, JointModel
    from retrieve_generate_model.rewrite import QueryRewriter, RewriteConfig

    model = JointModel(JointConfig(abstain_bias=1e9, rewrite_rounds=1))  # its route always abstains
    model.rewriter = QueryRewriter(model.generator, model.tokenizer, RewriteConfig(max_sentence_tokens=8))
    checkpoint = tmp_path / "joint-rewrites"
    model.save(checkpoint)
    cfg = EvalConfig(dataset="squad-v1.1", data=str(benchmark_data), corpus="gold", limit=2,
                     systems=(f"ragless@{checkpoint}",), bootstrap=50)
    (result,) = evaluate(cfg, progress=lambda _: None)["results"]
    assert result["metrics"]["second_round"] == 1.0 and "rewritten_query" not in result["metrics"]
    for q in result["per_question"]:
        assert q["abstained"] and q["rewritten_query"] and q["second_round"] == 1.0
        assert q["timings"]["answer.rewrite_s"] > 0
