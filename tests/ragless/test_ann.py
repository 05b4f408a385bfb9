"""ANN indexes (ragless/ann.py): built through the store, exact over their candidates, stale ones covered by a flat
pass, memory-mapped, read-only readers beside a committing writer."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from preprocess_model.document import Document, Segment
from ragless.ann import AnnConfig, AnnSearchConfig, ann_attention, build_ann, check_config, drop_ann
from ragless.cli import main
from ragless.store import IndexReader, IndexWriter, StoreError, read_manifest
from retrieve_generate_model.kernels import retrieval_attention

DIM = 32
COMPONENTS = {"segmenter": {"name": "test-cuts", "config": {}}, "encoder": {"name": "test-vectors", "config": {}}}
SEGS_PER_DOC = 10
CENTERS = np.random.default_rng(1234).standard_normal((24, DIM)).astype(np.float32)


def clustered(n: int, seed: int) -> np.ndarray:
    """(n, DIM) unit vectors from a mixture of 24 Gaussians, like embeddings of a few topics."""
    rng = np.random.default_rng(seed)
    v = CENTERS[rng.integers(0, len(CENTERS), n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_docs(writer: IndexWriter, prefix: str, n_docs: int, seed: int) -> None:
    docs, segs = [], []
    for d in range(n_docs):
        doc_id = f"{prefix}{d}"
        text = "\n".join(f"{doc_id} line {i}" for i in range(SEGS_PER_DOC))
        docs.append(Document(doc_id=doc_id, source=f"/c/{doc_id}.txt", text=text, sha256=doc_id, title=doc_id))
        pos, doc_segs = 0, []
        for i, line in enumerate(text.split("\n")):
            doc_segs.append(Segment(f"{doc_id}-{i}", doc_id, i, pos, pos + len(line), line))
            pos += len(line) + 1
        segs.append(doc_segs)
    writer.add_shard(docs, segs, clustered(n_docs * SEGS_PER_DOC, seed))


def make_index(root, shards: int = 3, docs_per_shard: int = 100) -> None:
    """``shards`` committed shards of ``docs_per_shard`` documents of 10 segments (3000 vectors by default)."""
    with IndexWriter(root, COMPONENTS, DIM) as w:
        for s in range(shards):
            add_docs(w, f"s{s}-", docs_per_shard, seed=s)
            w.commit()


def exact(reader: IndexReader, queries: np.ndarray, k: int, scale: float = 20.0):
    return retrieval_attention(torch.from_numpy(queries), torch.from_numpy(reader.memory()), k, scale=scale)


def seg_ids(reader: IndexReader, rows) -> list[str]:
    return [reader.segment_at(int(r)).seg_id for r in rows if r >= 0]


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "hnsw"])
def test_each_kind_equals_flat_search_where_its_candidates_hold_the_true_top_k(tmp_path, kind):
    make_index(tmp_path)
    entry = build_ann(tmp_path, AnnConfig(kind=kind, nlist=32, m=8, nbits=6, hnsw_m=16))
    manifest = read_manifest(tmp_path)
    assert manifest["ann"] == entry and manifest["generation"] == 4 and entry["generation"] == 3
    assert entry["vectors"] == 3000 and (tmp_path / entry["index"]).is_file()
    reader, flat = IndexReader(tmp_path), IndexReader(tmp_path, ann=False)
    assert reader.ann.kind == kind and flat.ann is None
    assert reader.ann.status() == {"kind": kind, "built_on_generation": 3, "covered": 3000, "dead": 0, "uncovered": 0}
    queries, k = clustered(40, seed=99), 10
    cfg = AnnSearchConfig(candidates=150, nprobe=8, ef_search=200)
    rows, scores, log_z = ann_attention(reader, torch.from_numpy(queries), k, scale=20.0, config=cfg)
    e_rows, e_scores, e_log_z = exact(flat, queries, k)
    proposed = reader.ann.search(queries, 150, cfg)
    covered = 0
    for b in range(len(queries)):
        if set(e_rows[b].tolist()) <= set(proposed[b].tolist()):
            covered += 1
            assert rows[b].tolist() == e_rows[b].tolist()
            torch.testing.assert_close(scores[b], e_scores[b], rtol=0, atol=1e-4)
        assert log_z[b] <= e_log_z[b] + 1e-4  # over the candidates only: a lower bound
        assert torch.exp(scores[b] - log_z[b]).sum() <= 1 + 1e-5
    assert covered >= 0.9 * len(queries), f"{kind}: the candidates held the true top-{k} for {covered}/40 queries"
    # IndexReader.search goes through the same path, and finds the same hits where covered
    hits, e_hits = reader.search(queries[:5], k=3), flat.search(queries[:5], k=3)
    for b in range(5):
        if set(e_rows[b, :3].tolist()) <= set(proposed[b].tolist()):
            assert [h.segment.seg_id for h in hits[b]] == [h.segment.seg_id for h in e_hits[b]]


def test_full_probe_ivf_is_exact_for_every_query(tmp_path):
    make_index(tmp_path, shards=2)
    build_ann(tmp_path, AnnConfig(kind="ivf-flat", nlist=16))
    reader, flat = IndexReader(tmp_path), IndexReader(tmp_path, ann=False)
    queries = clustered(30, seed=5)
    cfg = AnnSearchConfig(candidates=50, nprobe=16)  # every list scanned: the candidates are the exact top 50
    rows, scores, _ = ann_attention(reader, torch.from_numpy(queries), 7, scale=20.0, config=cfg)
    e_rows, e_scores, _ = exact(flat, queries, 7)
    assert torch.equal(rows, e_rows)
    torch.testing.assert_close(scores, e_scores, rtol=0, atol=1e-4)


def test_a_stale_ann_index_covers_new_rows_by_a_flat_pass_and_never_returns_deleted_ones(tmp_path, caplog):
    make_index(tmp_path, shards=2)
    build_ann(tmp_path, AnnConfig(kind="ivf-flat", nlist=16))
    before = IndexReader(tmp_path)
    queries = clustered(20, seed=7)
    cfg = AnnSearchConfig(candidates=100, nprobe=16)
    top = ann_attention(before, torch.from_numpy(queries), 5, scale=20.0, config=cfg)[0]
    deleted = sorted({before.segment_at(int(r)).doc_id for r in top[:, 0]})  # the documents of every best hit
    with IndexWriter(tmp_path) as w:
        w.delete(deleted)
        new = [Document(doc_id="new", source="/c/new.txt", text="\n".join(f"q{i:02d}" for i in range(20)), sha256="n")]
        segs = [[Segment(f"new-{i}", "new", i, 4 * i, 4 * i + 3, f"q{i:02d}") for i in range(20)]]
        w.add_shard(new, segs, queries)  # the questions themselves: each one's best match is a new row
        w.commit()
    reader, flat = IndexReader(tmp_path), IndexReader(tmp_path, ann=False)
    assert reader.generation == 4 and reader.manifest["ann"]["generation"] == 2  # carried forward, not rebuilt
    status = reader.ann.status()
    assert status["uncovered"] == 20 and status["dead"] == len(deleted) * SEGS_PER_DOC
    assert status["covered"] == 2000 - len(deleted) * SEGS_PER_DOC
    rows, scores, log_z = ann_attention(reader, torch.from_numpy(queries), 5, scale=20.0, config=cfg)
    e_rows, e_scores, e_log_z = exact(flat, queries, 5)
    assert torch.equal(rows, e_rows)
    torch.testing.assert_close(scores, e_scores, rtol=0, atol=1e-4)
    assert [reader.segment_at(int(r)).seg_id for r in rows[:, 0]] == [f"new-{i}" for i in range(20)]
    returned = {reader.segment_at(int(r)).doc_id for r in rows.flatten()}
    assert not returned & set(deleted)
    proposed = reader.ann.search(queries, 2000, AnnSearchConfig(nprobe=16))  # even asked for everything
    assert not {reader.segment_at(int(r)).doc_id for r in proposed.flatten() if r >= 0} & set(deleted)

    with IndexWriter(tmp_path) as w:  # compaction moves every row; a document replaced keeps its seg_ids
        assert w.compact() == 3
        doc = Document(doc_id="s1-5", source="/c/s1-5.txt", text="\n".join(f"z{i}" for i in range(10)), sha256="new")
        w.add_shard([doc], [[Segment(f"s1-5-{i}", "s1-5", i, 3 * i, 3 * i + 2, f"z{i}") for i in range(10)]],
                    clustered(10, seed=77))
        w.commit()
    compacted, flat = IndexReader(tmp_path), IndexReader(tmp_path, ann=False)
    assert compacted.ann.status() == {**status, "covered": status["covered"] - 10, "dead": status["dead"] + 10,
                                      "uncovered": 30}  # found by content: still covered after compaction
    c_rows, c_scores, _ = ann_attention(compacted, torch.from_numpy(queries), 5, scale=20.0, config=cfg)
    e_rows, e_scores, _ = exact(flat, queries, 5)
    assert torch.equal(c_rows, e_rows)
    torch.testing.assert_close(c_scores, e_scores, rtol=0, atol=1e-4)
    assert {compacted.segment_at(int(r)).seg_id for r in compacted.ann.uncovered} == (
        {f"new-{i}" for i in range(20)} | {f"s1-5-{i}" for i in range(10)})

    with IndexWriter(tmp_path) as w:
        add_docs(w, "many-", 30, seed=9)  # 300 new rows: past 10% uncovered, the reader says to rebuild
        w.commit()
    with caplog.at_level(logging.WARNING, logger="ragless.ann"):
        assert IndexReader(tmp_path).ann.status()["uncovered"] == 330
    assert "covers 1800 of 2130 live rows" in caplog.text and "rebuild" in caplog.text


def test_bad_input_is_refused_with_clear_messages(tmp_path, capsys):
    with pytest.raises(StoreError, match="no index"):
        build_ann(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    make_index(tmp_path / "ix", shards=1, docs_per_shard=10)  # 100 vectors
    for cfg, message in [(AnnConfig(kind="lsh"), "unknown ANN kind"),
                         (AnnConfig(nlist=101), "does not fit 100 vectors"),
                         (AnnConfig(kind="ivf-pq", nlist=4, m=5), "must divide the dimension"),
                         (AnnConfig(kind="ivf-pq", nlist=4, m=8, nbits=8), "at least that many vectors"),
                         (AnnConfig(kind="hnsw", hnsw_m=1), "hnsw-m")]:
        with pytest.raises(ValueError, match=message):
            build_ann(tmp_path / "ix", cfg)
    assert "ann" not in read_manifest(tmp_path / "ix") and read_manifest(tmp_path / "ix")["generation"] == 1
    assert check_config(AnnConfig(), 10**6, 384) == {"nlist": 1024, "train": 65536}
    with IndexWriter(tmp_path / "ix"):  # a writer with changes it has not committed yet
        with pytest.raises(StoreError, match="not committed"):
            build_ann(tmp_path / "ix")
    assert main(["index", "build", "--index", str(tmp_path / "ix"), "--kind", "bogus"]) == 2
    assert "unknown ANN kind 'bogus'" in capsys.readouterr().err
    assert main(["index", "build", "--index", str(tmp_path / "empty")]) == 2
    assert "no index" in capsys.readouterr().err


def _files(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_readers_map_the_ann_index_and_write_nothing(tmp_path, capsys):
    make_index(tmp_path, shards=2)
    assert main(["index", "build", "--index", str(tmp_path), "--kind", "ivf-pq", "--nlist", "16", "--m", "8",
                 "--nbits", "6"]) == 0
    entry = json.loads(capsys.readouterr().out)
    before = _files(tmp_path)
    reader = IndexReader(tmp_path)
    maps = open(f"/proc/{os.getpid()}/maps").read()
    assert str(tmp_path / entry["index"]) in maps  # the ANN index is mapped, not read into the heap
    assert all(str(tmp_path / "vectors" / f"{s['id']}.faiss") in maps for s in reader.manifest["shards"])
    assert reader._memory is None  # the ANN path never copies the whole memory
    reader.search(clustered(3, seed=1), k=4)
    ann_attention(reader, torch.from_numpy(clustered(3, seed=2)), 4, scale=20.0)
    assert reader._memory is None
    reader.document("s0-1")
    assert _files(tmp_path) == before  # no lock, temporary or cache file, nothing touched

    assert drop_ann(tmp_path) == 4 and IndexReader(tmp_path).ann is None
    with IndexWriter(tmp_path) as w:  # the dropped index's files go after the next commit, as any previous file
        add_docs(w, "late", 1, seed=8)
        w.commit()
    assert not (tmp_path / entry["index"]).exists() and not (tmp_path / entry["rows"]).exists()


CRASHING_BUILD = textwrap.dedent(
    """
    from ragless.ann import AnnConfig, build_ann
    build_ann({root!r}, AnnConfig(kind="ivf-flat", nlist=8))
    """
)


def test_a_build_killed_before_its_commit_is_never_seen(tmp_path):
    make_index(tmp_path, shards=1)
    env = {**os.environ, "RAGLESS_CRASHPOINT": "ann-before-commit"}
    proc = subprocess.run([sys.executable, "-c", CRASHING_BUILD.format(root=str(tmp_path))], env=env)
    assert proc.returncode == -9
    assert len(list((tmp_path / "ann").iterdir())) == 2  # written whole, never committed
    assert "ann" not in read_manifest(tmp_path) and IndexReader(tmp_path).ann is None
    IndexWriter(tmp_path).close()  # the next writer collects them
    assert not list((tmp_path / "ann").iterdir())


READER_LOOP = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import ragless.ann, torch  # imported before saying ready: the loop is what overlaps the writer
    from ragless.store import IndexReader
    root, ready, stop = sys.argv[1:4]
    seen, rng = [], np.random.default_rng(len(ready))
    Path(ready).touch()
    while not Path(stop).exists():
        r = IndexReader(root)
        assert len(r) == r.manifest["counts"]["segments"], "rows and manifest disagree"
        docs = {s.doc_id for s in r.iter_segments()}
        assert docs == set(r.catalog), "segments and catalog disagree"
        q = rng.standard_normal((2, r.dim)).astype(np.float32)
        for hits in r.search(q / np.linalg.norm(q, axis=1, keepdims=True), k=5):
            assert len(hits) == 5 and all(h.segment.doc_id in r.catalog for h in hits)
            assert all(r.document(h.segment.doc_id).text.split(chr(10))[h.segment.ordinal] == h.segment.text
                       for h in hits)
        seen.append([r.generation, r.ann is not None])
    print(json.dumps(seen))
    """
)


def test_two_reader_processes_see_whole_generations_while_a_writer_commits(tmp_path):
    root, stop = tmp_path / "index", tmp_path / "stop"
    make_index(root, shards=2, docs_per_shard=30)
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    readers = [subprocess.Popen([sys.executable, "-c", READER_LOOP, str(root), str(r), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    deadline = time.time() + 120
    while not all(r.exists() for r in ready) and time.time() < deadline:
        time.sleep(0.05)
    generations = [2]
    for step in range(16):  # adds, an ANN build, deletes with compaction, adds over a stale ANN index, ...
        if step % 4 == 1:
            build_ann(root, AnnConfig(kind="ivf-flat", nlist=8))
            generations.append(read_manifest(root)["generation"])
        else:
            with IndexWriter(root) as w:
                if step % 4 == 3:
                    w.delete([f"s0-{step}"])
                    w.compact(target_segments=200)
                else:
                    add_docs(w, f"g{step}-", 3, seed=100 + step)
                generations.append(w.commit())
        time.sleep(0.25)
    stop.touch()
    outs = [p.communicate(timeout=120) for p in readers]
    for p, (out, err) in zip(readers, outs):
        assert p.returncode == 0, err
        seen = json.loads(out)
        gens = [g for g, _ in seen]
        assert len(set(gens)) >= 3, f"a reader opened too few generations to mean anything: {gens}"
        assert gens == sorted(gens) and set(gens) <= set(generations)  # whole generations, in commit order
    assert any(ann for out, _ in outs for _, ann in json.loads(out))


@pytest.mark.parametrize("lexical", [False, True])
def test_asker_through_an_ann_index_answers_like_exact_search(tmp_path, encoder, lexical, request):
    from ragless.ask import AskConfig, Asker
    from ragless.components import lexical_channel, make_segmenter
    from ragless.ingest import IngestConfig, IngestJob, delete_documents
    from tests.ragless.test_ingest import write_corpus

    channel = None
    if lexical:  # a joint checkpoint folder with an (untrained) lexical channel
        checkpoint, _ = request.getfixturevalue("lexical_checkpoint")
        channel = lexical_channel(str(checkpoint), encoder)

    def ingest(paths):
        IngestJob(tmp_path / "index", make_segmenter("fixed-window"), encoder, IngestConfig(batch_docs=4),
                  lexical=channel).run([str(p) for p in paths], progress=False)

    paths = write_corpus(tmp_path / "corpus", 16)
    ingest(paths[:12])
    delete_documents(tmp_path / "index", [str(paths[0])])
    build_ann(tmp_path / "index", AnnConfig(kind="ivf-flat", nlist=4))
    ingest(paths[12:])  # added after the build: the flat pass covers them
    questions = ["Which property does the violin number 2 have?", "harbour facts", "telescope 15", "volcano 13"]
    # k=2: 20 candidates of about 45 rows, every list probed: the dense top 20 (and, fused, the keys sharing a word)
    ann = Asker(tmp_path / "index", AskConfig(k=2, answerer="prompted", ann=AnnSearchConfig(candidates=1, nprobe=4)))
    flat = Asker(tmp_path / "index", AskConfig(k=2, answerer="prompted", ann=AnnSearchConfig(use=False)))
    status = ann.reader.ann.status()
    assert status["uncovered"] > 0 and status["covered"] > 20 and flat.reader.ann is None
    assert (ann.lexical is not None) is lexical
    for a, e in zip(ann.retrieve(questions), flat.retrieve(questions)):
        assert [s.seg_id for s in a] == [s.seg_id for s in e]
        np.testing.assert_allclose([s.score for s in a], [s.score for s in e], atol=1e-5)
        assert all(wa >= we * (1 - 1e-5) for wa, we in zip([s.weight for s in a], [s.weight for s in e]))
        assert sum(s.weight for s in a) <= 1 + 1e-6  # normalized over fewer rows: upper bounds, still at most 1
