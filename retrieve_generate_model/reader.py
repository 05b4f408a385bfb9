"""The answer reader: where in the sources the answer starts and ends, read by the shared MiniLM backbone.

The generator writes the answer line token by token, but an extractive answer is a choice of two positions, and a
135M causal model reads a source token knowing only what came before it. The reader is the extractive head of
Devlin et al. (2019) on the joint model's other backbone: MiniLM reads the question and one source together
(``[CLS] question [SEP] source [SEP]``, every token seeing both ways), a linear layer scores each source token as
the answer's start and as its end. It costs one MiniLM forward per source read (tens of milliseconds on a CPU),
against the generator's seconds.

Sources are scored together (shared normalization, Clark & Gardner 2018): training normalizes the start and end
scores over the tokens of the evidence *and* of sources without the answer, so a span's score says how much better
it is than every span of every source, not only of its own — the same scores rank the spans across the sources at
answer time. The target marginalizes over every occurrence of the answer in what is read.

A source longer than a window (``max_tokens``) is read in windows that overlap by ``stride`` word pieces, scored
together like sources. A reader built with ``null_answer`` also scores "no answer" ([CLS] as start and end of each
window, as BERT does for SQuAD 2.0), taught on rows whose sources do not answer; `no_answer_margin` says by how much
it prefers declining to its best span, which the joint model may turn into an abstention.

Adapters on the backbone (LoRA through ``peft``, every linear layer of the blocks) and the head are trained on the
rows of `synth_pipeline.qa` (`train_reader`, resumable epoch by epoch); they ship in the checkpoint's ``reader/``
folder.

Several readers trained apart (on different synthetic recipes) read better together than any one alone: an
ensemble (`AnswerReader.ensemble`) keeps one backbone, loads every reader's adapters beside each other (peft's
named adapters) and averages their start and end scores, token by token, before spans are chosen — the usual way of
combining extractive readers (as the SQuAD leaderboard's ensembles do). "No answer" is averaged over the members that
score it. An ensemble is saved as one folder (its members in sub-folders) and read like a single reader; it is not
trained further (train its members, then assemble them).

    reader = AnswerReader.load("checkpoints/joint/reader")
    spans = reader.spans("When did the tower open?", ["The tower opened on 5 May 1889.", "Paris is large."])
    spans[0]   # the best span of either: Span(source=0, char_start=20, char_end=30, score=...), "5 May 1889"
"""

from __future__ import annotations

import copy
import json
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from retrieve_generate_model.encoder import Encoder

CONFIG_FILE = "reader.json"
HEAD_FILE = "reader_head.safetensors"


@dataclass(frozen=True)
class AnswerReaderConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")  # every linear layer of MiniLM's blocks
    max_tokens: int = 384  # question + source word pieces per window (MiniLM has 512 positions)
    stride: int = 128  # word pieces that consecutive windows of a longer source share
    max_question_tokens: int = 64
    max_answer_tokens: int = 30  # word pieces of the longest span an answer may be
    # "no answer" is an option the reader scores (start and end on [CLS], as for SQuAD 2.0), trained on the rows
    # whose sources do not hold the answer; `no_answer_margin` is its score above the best span's
    null_answer: bool = False
    # further readers read with this one (an ensemble): sub-folders of its folder, each a reader of its own
    members: tuple[str, ...] = ()

    def __post_init__(self):
        room = self.max_tokens - self.max_question_tokens - 3  # [CLS] question [SEP] source [SEP]
        if room < 8:
            raise ValueError(f"max_tokens {self.max_tokens} leaves {room} word pieces of source after a question of "
                             f"up to max_question_tokens {self.max_question_tokens}: need at least 8")
        if not 0 <= self.stride < room:
            raise ValueError(f"stride {self.stride} must be below the {room} word pieces of source a window holds")


@dataclass(frozen=True)
class AnswerReaderTrainConfig:
    epochs: int = 2
    batch_size: int = 8  # rows per step; each reads its evidence and ``negatives`` other sources
    negatives: int = 1  # sources without the answer read beside the evidence, normalized together
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class Span:
    source: int  # position of the source among those read
    char_start: int
    char_end: int
    score: float  # start + end logit: comparable across the sources of one read


def no_answer_margin(spans: list[Span], null: float | None) -> float | None:
    """How far "no answer" scores above the best span (positive: the reader would rather not answer); None for a
    reader without that option.

    >>> no_answer_margin([Span(0, 0, 4, 2.5)], 4.0), no_answer_margin([], 1.0), no_answer_margin([], None)
    (1.5, inf, None)
    """
    if null is None:
        return None
    return null - spans[0].score if spans else float("inf")


# the fields that decide how a question and its sources become windows: the members of an ensemble must share them
WINDOW_FIELDS = ("max_tokens", "stride", "max_question_tokens", "max_answer_tokens")


def _read_config(folder: Path) -> AnswerReaderConfig:
    data = json.loads((folder / CONFIG_FILE).read_text())
    return AnswerReaderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class AnswerReader:
    """A private copy of the base MiniLM with LoRA adapters and a start/end head (see the module docstring); an
    ensemble holds several readers' adapters and heads on that one copy."""

    def __init__(self, config: AnswerReaderConfig | None = None, folder: str | Path | None = None,
                 base: Encoder | None = None):
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model

        self.config = config or AnswerReaderConfig()
        base = base or Encoder()
        transformer = base.model[0]
        self.tokenizer = transformer.tokenizer
        bert = copy.deepcopy(transformer.auto_model)  # the shared, cached MiniLM stays the passage tower
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            if folder is not None:
                self.model = PeftModel.from_pretrained(bert, str(folder))
            else:
                lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                                  target_modules=list(self.config.lora_targets))
                self.model = get_peft_model(bert, lora)
        self.head = torch.nn.Linear(bert.config.hidden_size, 2)
        if folder is not None:
            from safetensors.torch import load_file

            self.head.load_state_dict(load_file(str(Path(folder) / HEAD_FILE)))
        # an ensemble's other readers: adapter name -> (its config, its head); "default" is this reader's own
        self.members: dict[str, tuple[AnswerReaderConfig, torch.nn.Module]] = {}
        for name in self.config.members:
            if folder is None:
                raise ValueError("a new reader has no members: assemble an ensemble with AnswerReader.ensemble")
            self._add_member(Path(folder) / name, name)
        self.eval()

    def _add_member(self, folder: Path, name: str) -> None:
        import torch
        from safetensors.torch import load_file

        config = _read_config(folder)
        if config.members:
            raise ValueError(f"{folder} is an ensemble itself: list its members instead")
        for field in WINDOW_FIELDS:
            if getattr(config, field) != getattr(self.config, field):
                raise ValueError(f"{folder}: {field} {getattr(config, field)} differs from the first reader's "
                                 f"{getattr(self.config, field)}; an ensemble's readers must read the same windows")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            self.model.load_adapter(str(folder), adapter_name=name)
        head = torch.nn.Linear(self.head.in_features, 2)
        head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        self.members[name] = (config, head.eval())

    @classmethod
    def ensemble(cls, folders: Sequence[str | Path], base: Encoder | None = None) -> AnswerReader:
        """The readers saved in ``folders`` read as one (see the module docstring); the first one's adapters are
        the "default" ones, the others are named ``member1``, ``member2``, ... (their sub-folders once saved)."""
        if not folders:
            raise ValueError("an ensemble needs at least one reader folder")
        reader = cls.load(folders[0], base=base)
        if reader.members:
            raise ValueError(f"{folders[0]} is an ensemble itself: list its members instead")
        names = tuple(f"member{i}" for i in range(1, len(folders)))
        for name, folder in zip(names, folders[1:]):
            reader._add_member(Path(folder), name)
        reader.config = replace(reader.config, members=names)
        return reader

    @property
    def null_answer(self) -> bool:
        """Whether the reader scores "no answer" (an ensemble: whether any of its readers does)."""
        return self.config.null_answer or any(config.null_answer for config, _ in self.members.values())

    def eval(self) -> None:
        self.model.eval()
        self.head.eval()
        for _, head in self.members.values():
            head.eval()

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        self.model.save_pretrained(str(folder))  # "default" in the folder, each member's adapters in its sub-folder
        (folder / "README.md").unlink(missing_ok=True)  # peft's blank model card
        save_file(self.head.state_dict(), str(folder / HEAD_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        for name, (config, head) in self.members.items():
            save_file(head.state_dict(), str(folder / name / HEAD_FILE))
            (folder / name / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path, base: Encoder | None = None) -> AnswerReader:
        folder = Path(folder)
        return cls(_read_config(folder), folder=folder, base=base)

    # -- reading

    def _encode(self, question: str, texts: Sequence[str]):
        """The batch of (question, source window) pairs: a source longer than ``max_tokens`` is read in windows
        that overlap by ``stride`` word pieces (as extractive QA pipelines read long documents). Returns the batch,
        per window the character offsets of its source tokens (None elsewhere), and per window its text's index."""
        cfg = self.config
        question_ids = self.tokenizer(question, add_special_tokens=False)["input_ids"][: cfg.max_question_tokens]
        question = self.tokenizer.decode(question_ids)
        enc = self.tokenizer([question] * len(texts), list(texts), truncation="only_second", padding=True,
                             max_length=cfg.max_tokens, stride=cfg.stride, return_overflowing_tokens=True,
                             return_offsets_mapping=True, return_tensors="pt")
        offsets = []
        for b in range(enc["input_ids"].shape[0]):
            ids = enc.sequence_ids(b)
            offsets.append([tuple(o) if s == 1 else None for s, o in zip(ids, enc["offset_mapping"][b].tolist())])
        enc.pop("offset_mapping")
        windows = enc.pop("overflow_to_sample_mapping").tolist()
        return enc, offsets, windows

    def logits(self, question: str, texts: Sequence[str]):
        """Start and end logits [windows, T] over each window's tokens, -inf outside the source; and the
        offsets and text indices of `_encode`."""
        import torch

        enc, offsets, windows = self._encode(question, texts)
        scores = self._scores(enc)  # [B, T, 2]
        outside = torch.tensor([[o is None for o in row] for row in offsets])
        if self.null_answer:
            outside[:, 0] = False  # [CLS]: the "no answer" of each window
        scores = scores.masked_fill(outside[..., None], float("-inf"))
        return scores[..., 0], scores[..., 1], offsets, windows

    def _scores(self, enc):
        """Start and end scores [B, T, 2] of every token: the head's on the backbone's states; an ensemble's, the
        mean of its readers' (at [CLS], "no answer", of those that score it). An ensemble reads its windows once per
        reader in one batch, each copy through its reader's adapters (peft's mixed-adapter batch: the active adapter
        and every ``requires_grad`` stay as they are)."""
        import torch

        if not self.members:
            return self.head(self.model(**enc).last_hidden_state)
        names = ["default", *self.members]
        readers = [(self.config, self.head), *self.members.values()]
        windows = enc["input_ids"].shape[0]
        batch = {key: value.repeat(len(names), *[1] * (value.dim() - 1)) for key, value in enc.items()}
        states = self.model(**batch, adapter_names=[n for n in names for _ in range(windows)]).last_hidden_state
        scores = torch.stack([head(part) for (_, head), part in zip(readers, states.split(windows))])  # [R, B, T, 2]
        mean = scores.mean(0)
        null = [s[:, 0] for (config, _), s in zip(readers, scores) if config.null_answer]
        if null:
            mean[:, 0] = torch.stack(null).mean(0)
        return mean

    def spans(self, question: str, texts: Sequence[str], top: int = 5) -> list[Span]:
        """Each text's ``top`` best spans (each at most ``max_answer_tokens`` word pieces) as character spans of
        the texts, all sorted best first (scores are comparable across the texts and windows of one read)."""
        return self.read(question, texts, top)[0]

    def read(self, question: str, texts: Sequence[str], top: int = 5) -> tuple[list[Span], float | None]:
        """`spans`, and the score of "no answer" (the best window's [CLS] start + end; None for a reader
        without that option or without texts). `no_answer_margin` compares the two."""
        import torch

        if not texts:
            return [], None
        with torch.inference_mode():
            start, end, offsets, windows = self.logits(question, texts)
        null = float((start[:, 0] + end[:, 0]).max()) if self.null_answer else None
        out: dict[tuple[int, int, int], Span] = {}  # windows overlap: a span read twice keeps its best score
        n = self.config.max_answer_tokens
        for b, row in enumerate(offsets):
            T = len(row)
            pair = start[b][:, None] + end[b][None, :]  # [first, last]
            i = torch.arange(T)
            band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + n)
            band[0, :] = band[:, 0] = False  # [CLS] is no span
            pair = pair.masked_fill(~band, float("-inf"))
            best = pair.flatten().topk(min(top, T * T))
            for score, flat in zip(best.values.tolist(), best.indices.tolist()):
                if score == float("-inf"):
                    break
                first, last = divmod(flat, T)
                key = (windows[b], row[first][0], row[last][1])
                if key not in out or out[key].score < score:
                    out[key] = Span(*key, score)
        best_first = sorted(out.values(), key=lambda s: -s.score)
        kept = {}
        for span in best_first:  # each text's ``top`` best
            kept.setdefault(span.source, [])
            if len(kept[span.source]) < top:
                kept[span.source].append(span)
        return sorted((s for spans in kept.values() for s in spans), key=lambda s: -s.score), null

    # -- training

    def loss(self, question: str, texts: Sequence[str], answer: str | None):
        """Negative log-likelihood of the answer's start and end, normalized over the tokens of all ``texts``
        together and marginalized over every occurrence of ``answer`` in what is read; None when what is read does
        not hold it (it was cut off). ``answer`` None (the texts do not answer): the likelihood of "no answer",
        marginalized over the windows' [CLS] (a reader with ``null_answer`` only)."""
        if self.members:
            raise ValueError("an ensemble is read, not trained: train its readers one by one, then assemble them")
        start, end, offsets, windows = self.logits(question, texts)
        starts, ends = [], []
        T = start.shape[1]
        if answer is None:
            if not self.config.null_answer:
                raise ValueError("this reader has no 'no answer' option (null_answer is off)")
            starts = ends = [b * T for b in range(len(offsets))]
        for b, row in enumerate(offsets if answer is not None else []):
            for a, z in occurrences(texts[windows[b]], answer):
                first = [t for t, o in enumerate(row) if o is not None and o[0] <= a < o[1]]
                last = [t for t, o in enumerate(row) if o is not None and o[0] < z <= o[1]]
                if first and last:
                    starts.append(b * T + first[0])
                    ends.append(b * T + last[0])
        if not starts:
            return None
        s, e = start.flatten().log_softmax(-1), end.flatten().log_softmax(-1)
        return -(s[sorted(set(starts))].logsumexp(-1) + e[sorted(set(ends))].logsumexp(-1)) / 2


def occurrences(text: str, answer: str) -> list[tuple[int, int]]:
    """Every (start, end) character span of ``answer`` in ``text``.

    >>> occurrences("a cat, a cat", "cat")
    [(2, 5), (9, 12)]
    """
    out, at = [], text.find(answer) if answer else -1
    while at >= 0:
        out.append((at, at + len(answer)))
        at = text.find(answer, at + 1)
    return out


def reader_examples(rows: list[dict[str, Any]], negatives: int,
                    unanswerable: bool = False) -> list[tuple[str, list[str], str | None]]:
    """(question, [evidence text, negative source texts...], answer) of the answerable rows of `synth_pipeline.qa`;
    negatives are the row's sources that do not contain the answer. With ``unanswerable``, also (question, 1 +
    ``negatives`` of its sources, what is left of the evidence first, None) of the rows whose sources do not
    answer."""
    out = []
    for row in rows:
        if not row["answerable"] and unanswerable and row["sources"]:
            # what is kept of the evidence (cut, or whole under a swapped question) first: the closest miss
            sources = sorted(row["sources"], key=lambda source: source.get("seg_id") != row.get("seg_id"))
            out.append((row["question"], [s["text"] for s in sources[: 1 + negatives]], None))
        if not row["answerable"] or not row["answer"].strip():
            continue
        evidence = row["sources"][row["quote_source"]]["text"]
        others = [s["text"] for s in row["sources"] if row["answer"] not in s["text"]][:negatives]
        out.append((row["question"], [evidence, *others], row["answer"]))
    return out


def train_reader(rows: list[dict[str, Any]], reader: AnswerReader, cfg: AnswerReaderTrainConfig | None = None,
                 log: Callable[[str], None] = print, save_to: str | Path | None = None) -> list[dict[str, Any]]:
    """Train ``reader``'s adapters and head in place on the rows of `synth_pipeline.qa`; returns the per-epoch log.

    With ``save_to`` (a folder), the trained reader is saved there and the run is resumable: after every epoch the
    trainable weights, the optimizer, the schedule and the random states are kept beside it (``FOLDER.train.pt``),
    a rerun continues after the last epoch kept, and the file goes once the reader is saved."""
    import torch

    cfg = cfg or AnswerReaderTrainConfig()
    examples = reader_examples(rows, cfg.negatives, unanswerable=reader.config.null_answer)
    if not examples:
        raise ValueError("no answerable rows to train the reader on")
    params = [p for p in reader.model.parameters() if p.requires_grad] + list(reader.head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * ((len(examples) + cfg.batch_size - 1) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    rng = random.Random(cfg.seed)
    history: list[dict[str, Any]] = []
    state = Path(save_to).with_name(Path(save_to).name + ".train.pt") if save_to is not None else None
    if state is not None and state.is_file():
        saved = torch.load(state, weights_only=False)  # our own file: weights, optimizer, random states
        if saved["config"] != asdict(cfg) or saved["examples"] != len(examples):
            raise ValueError(f"{state} was saved by another reader run ({saved['config']}, {saved['examples']} "
                             f"examples); remove it to start over")
        reader.model.load_state_dict(saved["trainable"], strict=False)
        reader.head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        history = saved["history"]
        log(f"resuming the reader after epoch {len(history)}/{cfg.epochs}")
    reader.model.train()
    reader.head.train()
    for epoch in range(len(history), cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        losses, skipped, t0 = [], 0, time.perf_counter()
        for start in range(0, len(order), cfg.batch_size):
            batch = [reader.loss(*examples[i]) for i in order[start: start + cfg.batch_size]]
            kept = [x for x in batch if x is not None]
            skipped += len(batch) - len(kept)
            if kept:
                loss = torch.stack(kept).mean()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
        entry = {"epoch": epoch + 1, "loss": round(sum(losses) / max(len(losses), 1), 4), "examples": len(examples),
                 "skipped": skipped, "seconds": round(time.perf_counter() - t0, 1)}
        history.append(entry)
        log(json.dumps(entry))
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            trainable = {n: p.detach() for n, p in reader.model.named_parameters() if p.requires_grad}
            torch.save({"config": asdict(cfg), "examples": len(examples), "trainable": trainable,
                        "head": reader.head.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                        "history": history}, state.with_suffix(".tmp"))
            state.with_suffix(".tmp").replace(state)  # a kill mid-write leaves the last complete state
    reader.eval()
    if save_to is not None:
        reader.save(save_to)
        state.unlink()
    return history
