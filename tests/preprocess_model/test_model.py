"""The segmentation model: windows over units, decoding, span integrity, training, save/load, the index manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from preprocess_model.document import Document
from preprocess_model.model import (
    AFTER_BLANK,
    AFTER_LINE,
    SAME_LINE,
    LearnedSegmenter,
    SegmentationModel,
    SegmenterConfig,
    best_window,
    collate,
    decode,
    encode_document,
    load_base,
)
from preprocess_model.train import TrainConfig, make_examples, train_segmenter
from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, NOISE, text_units

SMALL = SegmenterConfig(window_tokens=48, unit_tokens=12, overlap_tokens=16, max_segment_tokens=40, lora_r=4)


@pytest.fixture(scope="module")
def base():
    return load_base()


def one_hot(labels: list[int], boundary_scores: list[float] | None = None) -> np.ndarray:
    p = np.full((len(labels), 4), 0.01, np.float32)
    for i, label in enumerate(labels):
        p[i, label] = 0.9
    if boundary_scores:
        p[:, BOUNDARY] = boundary_scores
    return p


def test_windows_cover_every_unit_with_markers_and_context(base):
    tokenizer, _ = base
    lines = "\n".join(f"Line number {i} says something short." for i in range(30))
    text = "Title\n\n" + lines + "\nA. B. " + "c " * 300
    enc = encode_document(text, tokenizer, SMALL)
    assert enc.units == text_units(text, SMALL.max_unit_chars)
    assert len(enc.windows) > 3
    seen = set()
    markers = set(tokenizer.convert_tokens_to_ids([AFTER_LINE, AFTER_BLANK, SAME_LINE]))
    for w in enc.windows:
        assert len(w.input_ids) <= SMALL.window_tokens
        assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
        assert all(w.input_ids[m] in markers for m in w.markers) and w.units == sorted(w.units)
        seen |= set(w.units)
    assert seen == set(range(len(enc.units)))
    # consecutive windows share units, and each unit is read where it has the most context
    assert all(set(a.units) & set(b.units) for a, b in zip(enc.windows, enc.windows[1:]))
    for u, (w, slot) in enumerate(best_window(enc)):
        assert enc.windows[w].units[slot] == u
    first = enc.windows[0]
    assert first.input_ids[first.markers[0]] == tokenizer.convert_tokens_to_ids(AFTER_LINE)
    assert first.input_ids[first.markers[1]] == tokenizer.convert_tokens_to_ids(AFTER_BLANK)  # after "Title\n\n"


def test_decode_fills_segments_to_the_limit_and_cuts_at_the_likeliest_boundary_of_their_last_part():
    labels = [HEADING, BOUNDARY, CONTINUE, NOISE, CONTINUE, BOUNDARY, CONTINUE, CONTINUE, CONTINUE]
    segments, headings = decode(one_hot(labels), [5] * len(labels), max_segment_tokens=100)
    assert headings == [0]
    # headings and noise end runs; a run that fits is one segment, whatever boundaries it holds
    assert segments == [[1, 2], [4, 5, 6, 7, 8]]
    # ten units of 10 tokens, limit 40, min fill 0.5: each segment takes 2 to 4 units and ends before the likeliest
    # boundary among those cuts (0.9 before unit 3: [0, 1, 2]; then 0.8 before unit 5: [3, 4]; then [5..8] fits
    # up to unit 9, whose cut options 7, 8, 9 score 0.1, 0.1, 0.1: the later one among equals)
    scores = [0.0, 0.3, 0.2, 0.9, 0.1, 0.8, 0.2, 0.1, 0.1, 0.1]
    segments, _ = decode(one_hot([CONTINUE] * 10, scores), [10] * 10, max_segment_tokens=40)
    assert segments == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    # a cut is never placed where it would leave less than min_fill of the limit, however likely
    scores = [0.0, 0.99, 0.1, 0.2, 0.1, 0.1]
    segments, _ = decode(one_hot([CONTINUE] * 6, scores), [10] * 6, max_segment_tokens=40, min_fill=0.5)
    assert segments == [[0, 1, 2], [3, 4, 5]]
    segments, _ = decode(one_hot([CONTINUE] * 6, scores), [10] * 6, max_segment_tokens=40, min_fill=0.0)
    assert segments == [[0], [1, 2], [3, 4, 5]]  # without a floor the 0.99 cut makes a one-unit segment
    # a single unit over the limit stays whole
    segments, _ = decode(one_hot([BOUNDARY, CONTINUE]), [50, 5], max_segment_tokens=25)
    assert segments == [[0], [1]]


def test_decode_handles_a_long_unstructured_run():
    n = 20_000  # a book with no headings: every unit kept once, in order, every segment within the limit
    rng = np.random.default_rng(0)
    segments, _ = decode(one_hot([CONTINUE] * n, list(rng.random(n))), [7] * n, max_segment_tokens=100)
    assert [u for s in segments for u in s] == list(range(n))
    assert all(50 <= 7 * len(s) <= 100 for s in segments[:-1])


def save_untrained(tmp_path, base, cfg: SegmenterConfig = SMALL):
    torch.manual_seed(0)
    _, encoder = load_base()
    model = SegmentationModel(cfg, encoder)
    model.save(tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def test_segments_are_exact_spans_that_tile_the_non_noise_units(tmp_path, base):
    path, _ = save_untrained(tmp_path, base)
    seg = LearnedSegmenter(path)
    text = "Über uns\n\nDas ist ein Absatz. Noch ein Satz.\nPage 3\n中文的句子。另一个句子。\n" + "word " * 200
    doc = Document("d", "/x", text.strip(), "sha", "T")
    (segments,) = seg.segment([doc])
    (enc, probs), = seg.label([doc])
    labels = probs.argmax(-1)
    covered = set()
    for s in segments:
        assert doc.text[s.char_start : s.char_end] == s.text and s.text == s.text.strip() and s.doc_id == "d"
        inside = {u for u, (a, b) in enumerate(enc.units) if a >= s.char_start and b <= s.char_end}
        assert not covered & inside
        covered |= inside
    expected = {u for u, label in enumerate(labels) if label not in (HEADING, NOISE)}
    assert covered == expected
    assert [s.ordinal for s in segments] == list(range(len(segments)))


def test_training_lowers_the_loss_moves_parameters_and_round_trips(tmp_path, base):
    tokenizer, _ = base
    rows = []
    for i in range(6):
        lines = [f"Chapter {i}", f"The first paragraph of chapter {i} talks about rivers.", "It goes on a while.",
                 f"Page {i + 1}", f"A second paragraph about mountains number {i}.", "Its second line."]
        labels = [HEADING, BOUNDARY, CONTINUE, NOISE, BOUNDARY, CONTINUE]
        text = "\n".join(lines)
        units = text_units(text)
        rows.append({"doc_id": f"d{i}", "text": text, "unit_starts": [s for s, _ in units],
                     "unit_ends": [e for _, e in units], "labels": labels,
                     "segment_starts": [units[1][0], units[4][0]]})
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    assert sum(len(e.labels) for e in make_examples(rows, tokenizer, SMALL)) >= len(rows) * 6
    cfg = TrainConfig(steps=30, batch_windows=4, lr=3e-3, warmup_steps=2, eval_every=15, save_every=10)
    out = tmp_path / "run"
    first = train_segmenter(data, data, out, TrainConfig(**{**cfg.__dict__, "steps": 1}), SMALL, log=lambda m: None)
    _, encoder = load_base()
    before = SegmentationModel.load(out)[0].trainable_state()
    last = train_segmenter(data, data, out, cfg, SMALL, log=lambda m: None)  # resumes from step 1
    assert last["step"] == 30 and last["train_loss"] < first["train_loss"]
    assert last["accuracy"] == 1.0 and last["cut_precision"] == 1.0  # six tiny documents: learned by heart
    after, _ = SegmentationModel.load(out)
    moved = [k for k, v in after.trainable_state().items() if not torch.equal(v, before[k])]
    assert any("lora" in k for k in moved) and any(k.startswith("head") for k in moved)
    # save/load round trip: the same probabilities from the reloaded model
    enc = encode_document(rows[0]["text"], tokenizer, SMALL)
    batch = collate(enc.windows, tokenizer.pad_token_id)
    again, _ = SegmentationModel.load(out)
    with torch.inference_mode():
        torch.testing.assert_close(after(**batch), again(**batch))


def test_index_refuses_a_different_segmenter(tmp_path, base):
    from ragless.baselines import FixedWindowSegmenter
    from ragless.ingest import IngestJob
    from ragless.store import StoreError
    from retrieve_generate_model.encoder import Encoder

    path, _ = save_untrained(tmp_path, base)
    docs = [Document("a", "/a", "Alpha line.\nBeta line.", "s1", "A")]
    IngestJob(tmp_path / "index", LearnedSegmenter(path), Encoder()).ingest_documents(docs, progress=False)
    with pytest.raises(StoreError, match="segmenter"):
        IngestJob(tmp_path / "index", FixedWindowSegmenter(), Encoder()).ingest_documents(docs, progress=False)
    other, _ = save_untrained(tmp_path / "other", base, SegmenterConfig(**{**SMALL.__dict__, "lora_r": 2}))
    with pytest.raises(StoreError, match="segmenter"):
        IngestJob(tmp_path / "index", LearnedSegmenter(other), Encoder()).ingest_documents(docs, progress=False)
    # the same checkpoint, rebuilt from what the manifest recorded (JSON), extends the index
    from ragless.components import make_segmenter
    from ragless.store import read_manifest

    recorded = read_manifest(tmp_path / "index")["components"]["segmenter"]
    again = make_segmenter(recorded["name"], recorded["config"])
    more = [Document("b", "/b", "Gamma line.", "s2", "B")]
    assert IngestJob(tmp_path / "index", again, Encoder()).ingest_documents(more, progress=False).documents_added == 1
