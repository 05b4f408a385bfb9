"""The `ragless` command end to end on a tiny corpus: ingest, info, ask (real SmolLM2), delete, and usage errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ragless.cli import main
from ragless.store import IndexReader

CORPUS = {
    "lighthouse.md": "# Bell Rock Lighthouse\n\nThe Bell Rock Lighthouse stands off the coast of Angus, Scotland.\n"
    "It was built between 1807 and 1810 by Robert Stevenson and is the oldest surviving sea-washed lighthouse.\n",
    "orchard.txt": "Apple orchards in Normandy\n\nNormandy orchards grow cider apples. Harvest runs from September to "
    "November, and the apples are pressed within days of picking.\n",
    "records.jsonl": '{"id": "violin", "title": "Violin", "text": "A violin has four strings tuned in perfect fifths: '
    'G, D, A and E."}\n',
}


@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, text in CORPUS.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_info_delete(tmp_path, corpus, capsys):
    index = tmp_path / "index"
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "ingest", str(corpus), "--index", str(index), "--report", str(report), "--quiet")
    assert code == 0 and "3 added" in err
    data = json.loads(report.read_text())
    assert data["documents_added"] == 3 and data["segments_added"] >= 3 and data["failures"] == []
    assert data["documents_per_s"] > 0 and data["peak_rss_mb"] > 0

    code, out, _ = run(capsys, "info", "--index", str(index))
    manifest = json.loads(out)
    assert manifest["generation"] == 1 and manifest["counts"]["documents"] == 3
    assert manifest["components"]["segmenter"]["name"] == "learned"  # the shipped model is the default
    assert manifest["components"]["segmenter"]["config"]["checkpoint"] == "segmenter"
    # the shipped joint model's lexical channel weighs the words (`ragless ask` retrieves by the fused score)
    assert manifest["components"]["lexical"]["config"]["checkpoint"] == "joint"
    assert IndexReader(index).lexical_matrix(30522).shape[0] == manifest["counts"]["segments"]

    code, out, err = run(capsys, "delete", "--index", str(index), "--doc-id", "violin")
    assert code == 0 and out.split() == ["violin"] and "1 documents deleted" in err
    assert "violin" not in IndexReader(index).catalog


def test_ingest_flags_come_from_the_config_dataclasses(tmp_path, corpus, capsys):
    index = tmp_path / "index"
    code, _, err = run(capsys, "ingest", str(corpus), "--index", str(index), "--include", "*.md", "--quiet",
                       "--batch-docs", "1")
    assert code == 0 and "1 added" in err
    with pytest.raises(SystemExit) as e:
        main(["ingest", str(corpus), "--index", str(index), "--batch-docs", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", str(corpus), "--index", str(index), "--no-such-flag"])


def test_errors_are_clear_and_exit_2(tmp_path, corpus, capsys):
    code, _, err = run(capsys, "info", "--index", str(tmp_path / "nothing"))
    assert code == 2 and "no index" in err
    code, _, err = run(capsys, "ask", "anything?", "--index", str(tmp_path / "nothing"))
    assert code == 2 and "no index" in err
    index = tmp_path / "index"
    run(capsys, "ingest", str(corpus), "--index", str(index), "--quiet")
    code, _, err = run(capsys, "ingest", str(corpus), "--index", str(index), "--window-chars", "300", "--quiet")
    assert code == 2 and "made with segmenter" in err


@pytest.mark.slow
def test_ask_answers_with_citations_that_quote_the_documents(tmp_path, corpus, capsys):
    index = tmp_path / "index"
    run(capsys, "ingest", str(corpus), "--index", str(index), "--quiet")
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question": "Who built the Bell Rock Lighthouse?"}\n{"question": "How many strings has a '
                         'violin?"}\n')
    code, out, _ = run(capsys, "ask", "--index", str(index), "--questions", str(questions), "--json", "-k", "2")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in records] == ["Who built the Bell Rock Lighthouse?", "How many strings has a violin?"]
    reader = IndexReader(index)
    expected_docs = [next(d for d, e in reader.catalog.items() if e.source.endswith("lighthouse.md")), "violin"]
    for record, doc_id in zip(records, expected_docs):
        assert record["sources"][0]["doc_id"] == doc_id  # retrieval found the right document first
        assert len(record["sources"]) == 2 and record["text"].strip()
        assert set(record["timings"]) >= {"retrieve_s", "generate_s"}
        for c in record["citations"]:
            assert reader.document(c["doc_id"]).text[c["char_start"] : c["char_end"]] == c["quote"]

    code, out, _ = run(capsys, "ask", "Who built the Bell Rock Lighthouse?", "--index", str(index))
    assert code == 0 and out.lstrip().startswith("Q: Who built the Bell Rock Lighthouse?") and "\nA: " in out


@pytest.mark.slow
def test_console_script_runs_in_a_fresh_process(tmp_path, corpus):
    exe = shutil.which("ragless", path=str(Path(sys.executable).parent))
    assert exe, "the `ragless` console script is installed with the package"
    proc = subprocess.run([exe, "ingest", str(corpus), "--index", str(tmp_path / "i"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "generation 1: 3 added" in proc.stderr


def test_usage_errors_exit_2_with_a_reason(tmp_path, corpus, capsys):
    index = tmp_path / "index"
    run(capsys, "ingest", str(corpus), "--index", str(index), "--quiet")
    cases = [
        (["ingest", str(corpus), "--index", str(tmp_path / "new"), "--overlap-chars", "900"], "overlap_chars"),
        (["ask", "--index", str(index)], "give one QUESTION"),
        (["ask", "--index", str(index), "--questions", str(tmp_path / "missing.txt")], "cannot read questions"),
        (["delete", "--index", str(index)], "--doc-id"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 3}\n')
    cases.append((["ask", "--index", str(index), "--questions", str(bad)], 'string field "question"'))
    cases.append((["train", "calibrate", "--checkpoint", str(tmp_path), "--heldout", str(bad)],
                  "not a joint model checkpoint"))
    cases.append((["train", "calibrate", "--checkpoint", str(tmp_path), "--heldout", str(tmp_path / "no.parquet")],
                  "no file"))
    cases.append((["train", "lexical", "--train", str(bad), "--heldout", str(tmp_path / "no.parquet"), "--out",
                   str(tmp_path / "lex")], "no file"))
    cases.append((["ingest", str(corpus), "--index", str(tmp_path / "new"), "--lexical", "prompted"],
                  "has no lexical channel"))
    cases.append((["ingest", str(corpus), "--index", str(tmp_path / "new"), "--lexical", str(tmp_path / "nothing")],
                  "no checkpoint at"))
    cases.append((["ingest", str(corpus), "--index", str(index), "--lexical", "none"], "made with lexical"))
    rl = ["train", "rl", "--train", str(bad), "--out", str(tmp_path / "rl")]
    cases.append((rl + ["--weights", '{"nope": 1}'], "unknown reward(s) ['nope']"))
    cases.append((rl + ["--weights", "[1]"], "must be a JSON object"))
    cases.append((rl + ["--weights", "{"], "ragless train rl:"))
    for argv, reason in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and reason in err, (argv, err)


def test_synth_train_then_ingest_with_the_learned_segmenter(tmp_path, capsys):
    docs = tmp_path / "structured"
    docs.mkdir()
    for i in range(6):
        (docs / f"guide{i}.md").write_text(
            f"# Guide {i}\n\n## Install\n\nRun the installer number {i}. It asks two questions.\n\n"
            f"## Use\n\nOpen the program and pick a file.\n\n- one\n- two\n", encoding="utf-8")
    (docs / "broken.html").write_bytes(b"\x00\x01binary")
    code, out, err = run(capsys, "synth", "segmentation", str(docs), "--out", str(tmp_path / "seg"), "--variants",
                         "2", "--heldout-fraction", "0.34")
    summary = json.loads(out)
    assert code == 0 and summary["documents"] == 6 and summary["failures"] == 1 and "broken.html" in err
    assert summary["train_rows"] == 8 and summary["heldout_rows"] == 4  # 2 of 6 documents held out, 2 variants
    code, out, _ = run(capsys, "train", "segmenter", "--train", str(tmp_path / "seg" / "train.parquet"),
                       "--heldout", str(tmp_path / "seg" / "heldout.parquet"), "--out", str(tmp_path / "ckpt"),
                       "--steps", "4", "--eval-every", "4", "--batch-windows", "2", "--window-tokens", "64")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["step"] == 4
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["window_tokens"] == 64
    code, _, err = run(capsys, "ingest", str(docs), "--index", str(tmp_path / "index"), "--segmenter",
                       str(tmp_path / "ckpt"), "--quiet")
    assert code == 0 and "6 added" in err
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["components"]["segmenter"]["name"] == "learned"
    assert run(capsys, "train", "segmenter", "--train", str(tmp_path / "nope.parquet"), "--heldout", "x", "--out",
               str(tmp_path / "o"))[0] == 2


def test_synth_pairs_then_train_lexical_on_two_files(tmp_path, encoder, capsys):
    import pyarrow.parquet as pq

    from tests.ragless.test_ingest import ingest, write_corpus

    index = tmp_path / "index"
    ingest(index, write_corpus(tmp_path / "corpus", 8), encoder)
    code, out, err = run(capsys, "synth", "pairs", "--index", str(index), "--out", str(tmp_path / "pairs"),
                         "--heldout-fraction", "0.25", "--per-segment", "1")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["train"]["rows"] > 0 and summary["heldout"]["rows"] > 0 and summary["train"]["kinds"] == {
        "claim": summary["train"]["rows"]}
    train, held = tmp_path / "pairs" / "train.parquet", tmp_path / "pairs" / "heldout.parquet"
    code, out, err = run(capsys, "train", "lexical", "--train", str(train), "--train", str(held), "--heldout",
                         str(held), "--out", str(tmp_path / "lexical"), "--epochs", "1")
    assert code == 0, err
    report = json.loads((tmp_path / "lexical" / "report.json").read_text())
    assert report["train"] == [str(train), str(held)]
    assert report["rows"] == pq.read_metadata(train).num_rows + pq.read_metadata(held).num_rows
    code, _, err = run(capsys, "synth", "pairs", "--index", str(index), "--out", str(tmp_path / "x"),
                       "--cut-fraction", "2")
    assert code == 2 and "cut_fraction" in err
