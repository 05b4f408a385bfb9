"""The Ray engine (ragless/ray_engine.py) against the local one: the same input gives the same committed index.

One local Ray on 2 CPUs for the module; the shipped models (learned segmenter, MiniLM, the joint model's lexical
channel), as `ragless ingest` uses them by default.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ragless.cli import main
from ragless.store import IndexReader

sys.path.insert(0, str(Path(__file__).parent / "eval"))
from benchdata import write_benchmark_data  # noqa: E402

ray = pytest.importorskip("ray", reason="the [ray] extra (make venv installs it)")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings

CORPUS = {
    "lighthouse.md": "# Bell Rock Lighthouse\n\nThe Bell Rock Lighthouse stands off the coast of Angus, Scotland.\n\n"
    "## Building\n\nIt was built between 1807 and 1810 by Robert Stevenson.\nIt is the oldest surviving sea-washed "
    "lighthouse.\n",
    "orchard.txt": "Apple orchards in Normandy\n\n" + " ".join(
        f"Orchard {i} grows cider apples of variety {i * 3}, harvested in week {30 + i}." for i in range(40)),
    "tides.html": "<html><head><title>Tides</title></head><body><nav>Home | About</nav><h1>Tides</h1><p>Tides are "
    "the rise and fall of sea levels caused by the Moon.</p><h2>Spring tides</h2><p>Spring tides happen at new and "
    "full moon.</p></body></html>",
    "notes/violin.txt": "Violin\n\nA violin has four strings tuned in perfect fifths: G, D, A and E.\n",
    "notes/glacier.md": "# Glaciers\n\nA glacier is a persistent body of dense ice that moves under its own weight.\n",
    # the second record repeats the first's id: reported as a duplicate and skipped, by both engines
    "records.jsonl": '{"id": "r1", "title": "Compilers", "text": "A compiler translates source code."}\n'
                     '{"id": "r1", "text": "the same id again"}\n{"id": "r2", "text": "Telescopes gather light."}\n',
}
CORRUPT = {"broken.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog", "binary.txt": bytes(range(256)) * 64}


def write_corpus(root: Path) -> Path:
    for name, text in CORPUS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    for name, data in CORRUPT.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, a small object store); the engine uses it as it finds it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def ingest(capsys, corpus: Path, index: Path, *flags: str) -> dict:
    report = index.parent / f"{index.name}-report.json"
    code = main(["ingest", str(corpus), "--index", str(index), "--report", str(report), "--quiet", "--batch-docs",
                 "3", *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(report.read_text())


def index_state(index: Path) -> dict:
    """What an index holds, keyed by content rather than by shard or row: documents, segments, vectors, lexical."""
    reader = IndexReader(index)
    segments, vectors, lexical = {}, {}, {}
    matrix = reader.lexical_matrix(30522)
    for row in range(len(reader)):
        seg = reader.segment_at(row)
        segments[seg.seg_id] = (seg.doc_id, seg.ordinal, seg.char_start, seg.char_end, seg.text, seg.section, seg.kind)
        vectors[seg.seg_id] = reader.vectors(np.array([row]))[0]
        lexical[seg.seg_id] = matrix.getrow(row)
    documents = {}
    for doc_id, e in reader.catalog.items():
        doc = reader.document(doc_id)
        documents[doc_id] = (e.source, e.sha256, e.title, e.n_segments, e.n_chars, doc.text, doc.units, doc.meta)
    return {"documents": documents, "segments": segments, "vectors": vectors, "lexical": lexical,
            "manifest": reader.manifest}


def assert_same_index(a: dict, b: dict) -> None:
    assert a["documents"] == b["documents"]
    assert a["segments"] == b["segments"]  # ids, texts, char spans, sections
    # Vectors: the same weights on the same texts; only the float summation order may differ (batches padded to other
    # lengths, one torch thread in an actor against two here), which moves float32 unit vectors by ~1e-7. 1e-5 allows
    # for that and is far below anything retrieval can tell apart.
    for seg_id, vector in a["vectors"].items():
        np.testing.assert_allclose(b["vectors"][seg_id], vector, atol=1e-5, rtol=0)
    for seg_id, terms in a["lexical"].items():  # the same word-pieces, weights within the same tolerance
        other = b["lexical"][seg_id]
        assert list(terms.indices) == list(other.indices)
        np.testing.assert_allclose(other.data, terms.data, atol=1e-5, rtol=0)
    ma, mb = a["manifest"], b["manifest"]
    assert ma["counts"] == mb["counts"] and ma["components"] == mb["components"] and ma["dim"] == mb["dim"]


COUNTS = ("files", "documents_added", "documents_replaced", "documents_unchanged", "documents_deleted",
          "segments_added", "failures")


def test_ray_ingest_commits_the_index_a_local_run_makes(tmp_path, local_ray, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    local = ingest(capsys, corpus, tmp_path / "local")
    on_ray = ingest(capsys, corpus, tmp_path / "ray", "--engine", "ray")

    assert {k: on_ray[k] for k in COUNTS} == {k: local[k] for k in COUNTS}
    failed = sorted(Path(f["source"]).name for f in on_ray["failures"])
    assert failed == ["binary.txt", "broken.pdf", "records.jsonl#r1"]  # reported and skipped; the rest ingested
    assert any("duplicate doc_id 'r1'" in f["reason"] for f in on_ray["failures"])
    assert local["documents_added"] == 7 and local["generation"] > 1  # a commit per batch of 3, then compaction
    assert on_ray["generation"] == 1  # the workers' shards merged by one commit
    state = index_state(tmp_path / "ray")
    assert_same_index(index_state(tmp_path / "local"), state)
    shards = state["manifest"]["shards"]
    assert sum(pq.read_metadata(tmp_path / "ray" / "segments" / f"{s['id']}.parquet").num_rows for s in shards) \
        == state["manifest"]["counts"]["segments"]

    # incremental, as the local engine: one file changed, one removed (pruned), one added, the rest unchanged
    for root in (corpus,):
        (root / "notes" / "violin.txt").write_text("Violin\n\nA violin's strings were once made of gut.\n")
        (root / "notes" / "glacier.md").unlink()
        (root / "kelp.txt").write_text("Kelp\n\nKelp forests grow in cold, nutrient-rich water.\n")
    local = ingest(capsys, corpus, tmp_path / "local", "--prune")
    on_ray = ingest(capsys, corpus, tmp_path / "ray", "--engine", "ray", "--prune")
    assert {k: on_ray[k] for k in COUNTS} == {k: local[k] for k in COUNTS}
    assert (on_ray["documents_added"], on_ray["documents_replaced"], on_ray["documents_deleted"]) == (1, 1, 1)
    assert on_ray["generation"] == 2
    assert_same_index(index_state(tmp_path / "local"), index_state(tmp_path / "ray"))
    leftovers = {p.name for p in (tmp_path / "ray").rglob("*.tmp")}
    assert not leftovers


def test_ray_flags_need_the_ray_engine_and_ray_itself(tmp_path, monkeypatch, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    code = main(["ingest", str(corpus), "--index", str(tmp_path / "i"), "--segment-actors", "2"])
    assert code == 2 and "--segment-actors apply to --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` raises ImportError
    code = main(["ingest", str(corpus), "--index", str(tmp_path / "i"), "--engine", "ray"])
    assert code == 2 and "pip install 'ragless[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()  # refused before anything was written


@pytest.mark.slow
def test_the_local_engine_never_imports_ray(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    code = ("import sys; from ragless.cli import main; "
            f"code = main(['ingest', {str(corpus)!r}, '--index', {str(tmp_path / 'i')!r}, '--segmenter', "
            "'fixed-window', '--lexical', 'none', '--quiet']); "
            "assert code == 0 and 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# -- batch evaluation: the harness's questions answered and scored on actors ------------------------------------------


def eval_rows(capsys, out: Path, *argv: str) -> dict:
    assert main(["eval", *argv, "--out", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads(out.read_text())


def without_timings(report: dict) -> list:
    return [{k: v for k, v in q.items() if k != "timings"} for r in report["results"] for q in r["per_question"]]


def test_ray_eval_scores_every_question_as_the_local_loop(tmp_path, local_ray, capsys):
    args = ["--dataset", "squad-v2.0", "--data", str(write_benchmark_data(tmp_path)), "--systems", "workflow-bm25",
            "--corpus", "articles", "--limit", "0", "--retrieval-only", "--bootstrap", "50"]
    local = eval_rows(capsys, tmp_path / "local.json", *args)
    on_ray = eval_rows(capsys, tmp_path / "ray.json", *args, "--engine", "ray", "--answer-batch", "1")
    assert len(without_timings(local)) == 2 and without_timings(on_ray) == without_timings(local)
    assert on_ray["engine"] == {"name": "ray", "answer_actors": 1, "answer_cpus": 1.0, "answer_batch": 1}
    strip = lambda m: {k: v for k, v in m.items() if "latency" not in k and k != "peak_rss_mb"}  # noqa: E731
    assert strip(on_ray["results"][0]["metrics"]) == strip(local["results"][0]["metrics"])


@pytest.mark.slow
def test_ray_eval_answers_with_the_answerer_on_actors(tmp_path, local_ray, capsys):
    from retrieve_generate_model.joint import JointConfig, JointModel

    checkpoint = tmp_path / "joint-untrained"
    JointModel(JointConfig(abstain_bias=-1e9)).save(checkpoint)  # fresh adapters: answers, never abstains
    args = ["--dataset", "squad-v1.1", "--data", str(write_benchmark_data(tmp_path)), "--systems",
            f"ragless@{checkpoint}", "--corpus", "gold", "--limit", "3", "--bootstrap", "50"]
    local = eval_rows(capsys, tmp_path / "local.json", *args)
    on_ray = eval_rows(capsys, tmp_path / "ray.json", *args, "--engine", "ray")
    rows = without_timings(on_ray)
    assert len(rows) == 3 and all(q["answer"] and not q["abstained"] for q in rows)
    assert rows == without_timings(local)  # greedy decoding of the same sources: the same answers and citations
    assert all(q["timings"]["answer_s"] > 0 for q in on_ray["results"][0]["per_question"])
