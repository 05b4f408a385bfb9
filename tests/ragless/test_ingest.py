"""The ingestion job: incremental updates, prune and delete, bad input, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragless.components import make_segmenter
from ragless.ingest import IngestConfig, IngestJob, compact_index, delete_documents, release_freed_memory
from ragless.store import IndexReader

TOPICS = ["volcano", "harbour", "violin", "glacier", "orchard", "lighthouse", "compiler", "telescope"]


def write_corpus(root: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` small text files, each about one topic, with enough text for two or three windows."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        body = " ".join(f"Fact {j} about the {topic} number {i}: it has property {i * 7 + j}." for j in range(18))
        path = root / f"note-{i:03d}.txt"
        path.write_text(f"Notes on {topic} {i}\n\n{body}\n", encoding="utf-8")
        paths.append(path)
    return paths


def ingest(index: Path, paths, encoder, **overrides):
    config = IngestConfig(**{"batch_docs": 4, **overrides})
    segmenter = make_segmenter("fixed-window")  # the store's mechanics, quickly (the learned default: test_cli)
    return IngestJob(index, segmenter, encoder, config).run([str(p) for p in paths], progress=False)


def live_state(index: Path) -> tuple[dict[str, str], list[tuple[str, int, int]]]:
    """(doc_id -> sha256, sorted live segment spans): what an index holds, independent of how it got there."""
    reader = IndexReader(index)
    spans = sorted((s.doc_id, s.char_start, s.char_end) for s in reader.iter_segments())
    return {d: e.sha256 for d, e in reader.catalog.items()}, spans


def test_incremental_ingest_skips_replaces_adds_and_prunes(tmp_path, encoder):
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    files = write_corpus(corpus, 10)
    first = ingest(index, [corpus], encoder)
    assert (first.documents_added, first.documents_unchanged, first.failures) == (10, 0, [])
    assert first.segments_added >= 20

    again = ingest(index, [corpus], encoder)
    assert (again.documents_added, again.documents_replaced, again.documents_unchanged) == (0, 0, 10)
    assert again.generation == first.generation  # nothing changed, nothing committed

    files[3].write_text("Notes on the new harbour\n\nThe harbour was rebuilt in 1921 with granite.\n")
    files[7].unlink()
    write_corpus(corpus, 1, start=50)
    update = ingest(index, [corpus], encoder, prune=True)
    assert (update.documents_added, update.documents_replaced, update.documents_deleted) == (1, 1, 1)
    assert update.documents_unchanged == 8

    reader = IndexReader(index)
    assert len(reader.catalog) == 10
    hits = reader.search(encoder.embed_queries(["When was the harbour rebuilt?"]), k=1)[0]
    assert "rebuilt in 1921" in hits[0].segment.text
    assert not any(e.source.endswith("note-007.txt") for e in reader.catalog.values())
    # live rows only: the replaced file's old segments are not searchable
    assert sum(s.doc_id == hits[0].segment.doc_id for s in reader.iter_segments()) == 1


def test_prune_only_touches_the_given_paths(tmp_path, encoder):
    a, b, index = tmp_path / "a", tmp_path / "b", tmp_path / "index"
    write_corpus(a, 3)
    write_corpus(b, 3, start=10)
    ingest(index, [a, b], encoder)
    (a / "note-000.txt").unlink()
    report = ingest(index, [a], encoder, prune=True)
    assert report.documents_deleted == 1
    assert len(IndexReader(index).catalog) == 5  # b untouched though it was not named


def test_bad_files_are_reported_and_skipped_the_rest_is_ingested(tmp_path, encoder):
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus, 3)
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog")
    (corpus / "records.jsonl").write_text('{"id": "r1", "text": "A good record about tides."}\n{"id": "r2", "te\n')
    report = ingest(index, [corpus, tmp_path / "missing-folder"], encoder)
    failed = {Path(f["source"].split(":")[0].split("#")[0]).name for f in report.failures}
    assert {"empty.txt", "binary.txt", "broken.pdf", "records.jsonl", "missing-folder"} <= failed
    assert all(f["reason"] for f in report.failures)
    assert report.documents_added == 4  # three notes and the good record
    assert "r1" in IndexReader(index).catalog


def test_a_file_that_turns_bad_keeps_its_indexed_version_even_with_prune(tmp_path, encoder):
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    files = write_corpus(corpus, 2)
    ingest(index, [corpus], encoder)
    files[0].write_bytes(b"\x00\x01\x02 not text any more \x00")
    report = ingest(index, [corpus], encoder, prune=True)
    assert report.documents_deleted == 0 and len(report.failures) == 1
    assert len(IndexReader(index).catalog) == 2


def test_delete_by_id_and_by_source_then_compact(tmp_path, encoder):
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus / "keep", 3)
    write_corpus(corpus / "drop", 3, start=20)
    ingest(index, [corpus], encoder)
    reader = IndexReader(index)
    one = next(e.doc_id for e in reader.catalog.values() if "keep" in e.source)
    _, removed = delete_documents(index, doc_ids=[one], sources=[corpus / "drop"])
    assert len(removed) == 4
    generation, rewritten = compact_index(index)
    after = IndexReader(index)
    assert after.generation == generation and rewritten >= 1
    assert len(after.catalog) == 2
    assert after.manifest["counts"]["segments"] == after.manifest["counts"]["stored_segments"] == len(after)


def test_same_id_twice_in_one_run_is_ingested_once(tmp_path, encoder):
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"id": "x", "text": "first"}\n{"id": "x", "text": "second"}\n')
    report = ingest(index, [corpus, corpus / "a.jsonl"], encoder)
    assert report.documents_added == 1 and len(report.failures) == 1
    assert "duplicate" in report.failures[0]["reason"]


# -- crash safety: a real `ragless ingest` process killed with SIGKILL, then the same command run again -------------


def run_cli(args, env_extra=None, **kw) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "ragless.cli", *args], env=env, **kw)


@pytest.fixture(scope="module")
def crash_corpus(tmp_path_factory, encoder):
    """A 40-file corpus and the state a clean, uninterrupted ingest gives (the reference)."""
    root = tmp_path_factory.mktemp("crash")
    write_corpus(root / "corpus", 40)
    ingest(root / "reference", [root / "corpus"], encoder)
    return root / "corpus", live_state(root / "reference")


def generation(index: Path) -> int:
    try:
        return json.loads((index / "manifest.json").read_text())["generation"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill", ["after-shard:2", "before-manifest:3", "after-manifest:4", "timer"], ids=lambda k: k.split(":")[0]
)
def test_ingest_killed_at_any_point_resumes_to_the_same_index(tmp_path, crash_corpus, kill):
    corpus, reference = crash_corpus
    index = tmp_path / "index"
    args = ["ingest", str(corpus), "--index", str(index), "--segmenter", "fixed-window", "--batch-docs", "4", "--quiet"]
    if kill == "timer":  # SIGKILL from outside, wherever the job happens to be after its third commit
        proc = run_cli(args, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while generation(index) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    else:
        proc = run_cli(args, {"RAGLESS_CRASHPOINT": kill}, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    killed_at = generation(index)
    assert 0 < killed_at < 10  # really mid-run: 40 files in batches of 4 take 10 commits

    # the same command again, in this process: what resumes is the CLI's code on what the killed process left (a
    # second interpreter would only import torch and load MiniLM again, ~10 s a test)
    from ragless.cli import main

    assert main([*args, "--report", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["documents_unchanged"] >= 4 and report["documents_added"] + report["documents_unchanged"] == 40
    docs, spans = live_state(index)
    assert (docs, spans) == reference  # exactly the documents and segments of an uninterrupted run
    assert len(spans) == len(set(spans))  # none twice
    leftovers = {p.name for p in index.rglob("*.tmp")}
    assert not leftovers


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is a glibc call")
def test_freed_heap_memory_is_given_back_after_each_batch():
    assert release_freed_memory() is True
