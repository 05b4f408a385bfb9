"""The index store: atomic commits, isolated readers, garbage collection, delete and compaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from preprocess_model.document import Document, Segment
from ragless.store import IndexReader, IndexWriter, StoreError, manifest_files, read_manifest

DIM = 8
COMPONENTS = {"segmenter": {"name": "test-cuts", "config": {}}, "encoder": {"name": "test-vectors", "config": {}}}


def make_doc(doc_id: str, text: str) -> tuple[Document, list[Segment]]:
    """A document cut into its lines, one segment each."""
    doc = Document(doc_id=doc_id, source=f"/corpus/{doc_id}.txt", text=text, sha256=f"sha-{hash(text)}", title=doc_id)
    segs, pos = [], 0
    for i, line in enumerate(text.split("\n")):
        segs.append(Segment(f"{doc_id}-{i}", doc_id, i, pos, pos + len(line), line))
        pos += len(line) + 1
    return doc, segs


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write(writer: IndexWriter, docs: list[tuple[Document, list[Segment]]], seed: int) -> np.ndarray:
    vectors = unit_vectors(sum(len(s) for _, s in docs), seed)
    writer.add_shard([d for d, _ in docs], [s for _, s in docs], vectors)
    return vectors


def test_commit_then_search_is_exact(tmp_path):
    docs = [make_doc(f"d{i}", f"line a{i}\nline b{i}\nline c{i}") for i in range(5)]
    with IndexWriter(tmp_path, COMPONENTS, DIM) as w:
        vectors = write(w, docs, seed=0)
        assert read_manifest(tmp_path) is None  # nothing visible before commit
        assert w.commit() == 1
    reader = IndexReader(tmp_path)
    assert len(reader) == 15 and reader.manifest["counts"] == {"documents": 5, "segments": 15, "stored_segments": 15}
    queries = unit_vectors(4, seed=1)
    hits = reader.search(queries, k=3)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :3]  # brute force (M, 3)
    flat_ids = [s.seg_id for _, segs in docs for s in segs]
    for q in range(4):
        assert [h.segment.seg_id for h in hits[q]] == [flat_ids[i] for i in expected[q]]
        assert hits[q][0].score == pytest.approx(float(queries[q] @ vectors[expected[q][0]]), abs=1e-5)
    doc = reader.document("d3")
    assert doc.text == "line a3\nline b3\nline c3" and doc.title == "d3"
    seg = hits[0][0].segment
    assert reader.document(seg.doc_id).text[seg.char_start : seg.char_end] == seg.text


def test_open_reader_keeps_its_generation_while_writer_replaces_and_collects(tmp_path):
    with IndexWriter(tmp_path, COMPONENTS, DIM) as w:
        write(w, [make_doc("a", "old text one\nold text two"), make_doc("b", "bee")], seed=0)
        w.commit()
    old = IndexReader(tmp_path)
    with IndexWriter(tmp_path) as w:
        write(w, [make_doc("a", "new text")], seed=2)  # replaces "a"
        w.commit()
        w.delete(["b"])
        w.commit()
        write(w, [make_doc("c", "sea")], seed=3)
        w.commit()  # two generations after the first shard died: its files are collected from disk
    assert not any((tmp_path / "documents").glob(f"{old.manifest['shards'][0]['id']}*"))
    assert old.generation == 1 and len(old) == 3
    assert old.document("a").text == "old text one\nold text two"
    assert {h.segment.doc_id for h in old.search(unit_vectors(1, 5), k=3)[0]} == {"a", "b"}
    new = IndexReader(tmp_path)
    assert new.generation == 4 and len(new) == 2
    assert new.document("a").text == "new text"
    with pytest.raises(KeyError):
        new.document("b")


def test_replaced_document_rows_are_dead_until_compaction_removes_them(tmp_path):
    with IndexWriter(tmp_path, COMPONENTS, DIM) as w:
        write(w, [make_doc("a", "x1\nx2\nx3"), make_doc("b", "y1")], seed=0)
        w.commit()
        write(w, [make_doc("a", "z1")], seed=1)
        w.commit()
        counts = w.manifest["counts"]
        assert counts["segments"] == 2 and counts["stored_segments"] == 5  # a's three old rows are dead
    reader = IndexReader(tmp_path)
    assert sorted(s.text for s in reader.iter_segments()) == ["y1", "z1"]
    with IndexWriter(tmp_path) as w:
        assert w.compact() == 2
        w.commit()
        assert w.manifest["counts"]["stored_segments"] == 2 and len(w.manifest["shards"]) == 1
    after = IndexReader(tmp_path)
    assert sorted(s.text for s in after.iter_segments()) == ["y1", "z1"]
    # vectors travel with their segments through compaction
    q = after.vectors(np.arange(len(after)))
    for row, seg in enumerate(after.iter_segments()):
        assert after.search(q[row : row + 1], k=1)[0][0].segment.seg_id == seg.seg_id


def test_compaction_merges_small_shards_without_changing_what_readers_find(tmp_path):
    vectors = {}
    with IndexWriter(tmp_path, COMPONENTS, DIM) as w:
        for batch in range(6):  # six one-batch shards of two documents, three segments each
            docs = [make_doc(f"d{batch}{j}", f"a{batch}{j}\nb{batch}{j}\nc{batch}{j}") for j in range(2)]
            v = write(w, docs, seed=batch)
            vectors.update(zip([s.seg_id for _, segs in docs for s in segs], v))
            w.commit()
        w.delete(["d31"])
        w.commit()
    before = IndexReader(tmp_path)
    queries = unit_vectors(5, seed=99)
    expected = [[(h.segment, round(h.score, 5)) for h in hits] for hits in before.search(queries, k=7)]
    with IndexWriter(tmp_path) as w:
        assert w.compact(target_segments=14) == 6  # every shard is small (< 7 segments)
        w.commit()
        shards = w.manifest["shards"]
    # 33 live segments into shards of >= 14 live segments, the last one whatever remains; no dead rows left
    assert [s["segments"] for s in shards] and sum(s["segments"] for s in shards) == 33 == len(before)
    assert len(shards) == 2 and all(s["live_segments"] == s["segments"] for s in shards)
    after = IndexReader(tmp_path)
    assert [[(h.segment, round(h.score, 5)) for h in hits] for hits in after.search(queries, k=7)] == expected
    for row, seg in enumerate(after.iter_segments()):
        np.testing.assert_allclose(after.vectors(np.array([row]))[0], vectors[seg.seg_id], atol=1e-6)
        assert after.document(seg.doc_id).text[seg.char_start : seg.char_end] == seg.text
    assert sorted(e.doc_id for e in after.documents()) == sorted(e.doc_id for e in before.documents())
    assert "d31" not in after.catalog


def test_one_writer_at_a_time(tmp_path):
    with IndexWriter(tmp_path, COMPONENTS, DIM):
        with pytest.raises(StoreError, match="another writer"):
            IndexWriter(tmp_path, COMPONENTS, DIM)
    IndexWriter(tmp_path, COMPONENTS, DIM).close()  # released on exit


def test_components_must_match(tmp_path):
    with IndexWriter(tmp_path, COMPONENTS, DIM) as w:
        write(w, [make_doc("a", "x")], seed=0)
        w.commit()
    other = {**COMPONENTS, "segmenter": {"name": "test-cuts", "config": {"window": 9}}}
    with pytest.raises(StoreError, match="made with segmenter"):
        IndexWriter(tmp_path, other, DIM)
    with pytest.raises(StoreError, match="dim"):
        IndexWriter(tmp_path, COMPONENTS, DIM + 1)


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no index"):
        IndexReader(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="no index"):
        IndexWriter(tmp_path / "nowhere")


CRASHING_WRITER = textwrap.dedent(
    """
    import importlib.util
    spec = importlib.util.spec_from_file_location("store_tests", {here!r})
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    from ragless.store import IndexWriter
    with IndexWriter({root!r}, t.COMPONENTS, t.DIM) as w:
        t.write(w, [t.make_doc("late", "never committed")], seed=9)
        w.commit()
    """
)


@pytest.mark.parametrize("point", ["before-manifest", "after-manifest"])
def test_writer_killed_mid_commit_leaves_a_consistent_index(tmp_path, point):
    root = tmp_path / "index"
    with IndexWriter(root, COMPONENTS, DIM) as w:
        write(w, [make_doc("a", "committed")], seed=0)
        w.commit()
    script = CRASHING_WRITER.format(here=__file__, root=str(root))
    env = {**os.environ, "RAGLESS_CRASHPOINT": point}
    proc = subprocess.run([sys.executable, "-c", script], env=env)
    assert proc.returncode == -9  # really killed
    reader = IndexReader(root)
    committed = point == "after-manifest"
    assert reader.generation == (2 if committed else 1)
    assert ("late" in reader.catalog) is committed
    files_before = {p.name for p in root.rglob("*") if p.is_file()}
    with IndexWriter(root) as w:  # reopening collects what the killed writer left unreferenced
        pass
    files_after = {p.name for p in root.rglob("*") if p.is_file()}
    if not committed:
        assert files_after < files_before  # the orphan shard and catalog are gone
    assert json.loads((root / "manifest.json").read_text())["generation"] == reader.generation
    assert IndexReader(root).document("a").text == "committed"



def test_lexical_vectors_stay_row_aligned_through_replace_delete_and_compaction(tmp_path):
    components = {**COMPONENTS, "lexical": {"name": "test-terms", "config": {}}}
    vocab = 64

    def terms(seg: Segment) -> tuple[np.ndarray, np.ndarray]:  # each segment's vector names it
        code = sum(map(ord, seg.seg_id + seg.text))
        return np.array([code % vocab, (code + 1 + code % 7) % vocab], np.int32), np.array([1.5, 0.25], np.float32)

    def add(w: IndexWriter, docs, seed: int) -> None:
        flat = [s for _, segs in docs for s in segs]
        w.add_shard([d for d, _ in docs], [s for _, s in docs], unit_vectors(len(flat), seed), [terms(s) for s in flat])

    def check(reader: IndexReader) -> None:
        matrix = reader.lexical_matrix(vocab)
        assert matrix.shape == (len(reader), vocab)
        for row, seg in enumerate(reader.iter_segments()):
            ids, weights = terms(seg)
            expected = np.zeros(vocab, np.float32)
            expected[ids] = weights
            np.testing.assert_allclose(matrix[row].toarray()[0], expected)

    with IndexWriter(tmp_path, components, DIM) as w:
        add(w, [make_doc("a", "x1\nx2\nx3"), make_doc("b", "y1\ny2")], seed=0)
        w.commit()
        add(w, [make_doc("a", "z1"), make_doc("c", "w1\nw2")], seed=1)  # replaces a: its three rows are dead
        w.commit()
        w.delete(["c"])  # both shards now hold dead rows
        w.commit()
        with pytest.raises(ValueError, match="lexical vectors are required"):
            write(w, [make_doc("d", "v1")], seed=2)
    reader = IndexReader(tmp_path)
    assert reader.has_lexical and sorted(s.text for s in reader.iter_segments()) == ["y1", "y2", "z1"]
    check(reader)
    with IndexWriter(tmp_path) as w:
        assert w.compact() == 2
        w.commit()
        assert all(s["lexical"] for s in w.manifest["shards"])
    check(IndexReader(tmp_path))
    manifest = read_manifest(tmp_path)  # garbage collection keeps exactly the lexical files of this and the last one
    kept = {f for f in manifest_files(manifest) | set(manifest["previous"]) if f.startswith("lexical/")}
    assert {f"lexical/{p.name}" for p in (tmp_path / "lexical").iterdir()} == kept and len(kept) == 3

    dense_only = tmp_path / "dense"
    with IndexWriter(dense_only, COMPONENTS, DIM) as w:
        write(w, [make_doc("a", "x1")], seed=0)
        doc, segs = make_doc("b", "y1")
        with pytest.raises(ValueError, match="no lexical component"):
            w.add_shard([doc], [segs], unit_vectors(1, 3), [(np.array([1], np.int32), np.array([1.0], np.float32))])
        w.commit()
    assert not IndexReader(dense_only).has_lexical
    with pytest.raises(StoreError, match="no lexical vectors"):
        IndexReader(dense_only).lexical_matrix(vocab)


def test_segments_of_a_document_in_order_from_the_readers_generation(tmp_path):
    with IndexWriter(tmp_path, COMPONENTS, DIM) as w:
        a, a_segs = make_doc("docs/a.md", "first line\nsecond line\nthird line")
        b, b_segs = make_doc("b", "bee one\nbee two")
        write(w, [(b, b_segs), (a, list(reversed(a_segs)))], seed=0)  # stored out of order: sorted by ordinal
        w.commit()
    old = IndexReader(tmp_path)
    assert old.segments_of("docs/a.md") == a_segs and old.segments_of("b") == b_segs
    with IndexWriter(tmp_path) as w:
        write(w, [make_doc("docs/a.md", "new only line")], seed=1)  # replaced: its old rows are dead
        w.commit()
        w.delete(["b"])
        w.commit()
        write(w, [make_doc("c", "sea")], seed=2)
        w.commit()  # two generations after the first shard died: its files are collected from disk
    assert not any((tmp_path / "segments").glob(f"{old.manifest['shards'][0]['id']}*"))
    assert [s.text for s in old.segments_of("docs/a.md")] == ["first line", "second line", "third line"]
    new = IndexReader(tmp_path)
    assert [(s.seg_id, s.text) for s in new.segments_of("docs/a.md")] == [("docs/a.md-0", "new only line")]
    for doc_id in ("b", "missing"):
        with pytest.raises(KeyError, match="no document"):
            new.segments_of(doc_id)
