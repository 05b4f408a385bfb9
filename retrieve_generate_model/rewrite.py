"""Query rewriting, learned: when the first sources fall short, the question is rewritten for one more retrieval round.

A RAG workflow expands a query by hand-written rules (the most frequent words of the first results, as RM3 does; a
synonym list; a prompted model asked to paraphrase). Here the rewrite is written by the joint model's own generator,
with a second set of LoRA adapters (``rewrite``, beside the answering ones on the same SmolLM2 weights), trained on the
user's corpus to write, for a question, **the sentence of the documents that would answer it** — the target of
generation-augmented retrieval (Mao et al., 2021, "GAR"; HyDE, Gao et al., 2022, writes such a passage with a prompted
model). Training pairs come from `synth_pipeline.qa` rows alone: each answerable row's question, and the sentence of
its evidence that holds the answer (the row's quote). The rewritten query is the question followed by the written
sentence: the question's own words stay, and the sentence adds the words a passage that answers would use — in the
statement form that passages have, which is what the retriever's encoders and its lexical channel match best. The
sentence may be wrong on the facts (the generator guesses); for retrieval it needs only to read like the evidence.

Who judges that the sources fall short is the joint model: its answer abstains (the reader's "no answer" margin, or
its route). `ragless.ask.answer_in_rounds` then retrieves with the rewrite and answers the *original* question from
the second round's sources; `Answer.rewritten_query` shows the query that was used.

    rewriter = QueryRewriter(model.generator, model.tokenizer, folder="data/runs/rewrite-v1")
    rewriter.rewrite(["When did the tower open?"])   # ['When did the tower open? <the sentence it wrote>']

Trained (`train_rewriter`, resumable every ``save_every`` steps) by ``ragless train rewrite``; saved as a checkpoint's
``rewrite/`` folder (peft adapter files and ``rewrite.json``), which `JointModel.load` picks up.

Measured (BENCHMARKS.md, "the learned query rewrite"): trained on the synthetic rows (their questions are word salad,
people's are not), the adapters retrieved worse than SmolLM2 prompted with the same instruction, and on SQuAD v1.1 the
second round changed no answer (the first answers' declines are the reader's margin, not missed passages); the shipped
checkpoints do not enable it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "rewrite.json"
ADAPTER = "rewrite"  # the peft adapter name, beside the answering adapters ("default") of the same generator
SYSTEM_PROMPT = "Write the sentence of the documents that answers the question."


@dataclass(frozen=True)
class RewriteConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    lora_layers: int = 12  # adapters on the last N of the generator's 30 layers: no backward through the rest
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    max_question_tokens: int = 48
    max_sentence_tokens: int = 48  # the written sentence (a training target is cut to this too)
    system_prompt: str = SYSTEM_PROMPT


@dataclass(frozen=True)
class RewriteTrainConfig:
    epochs: int = 1
    batch_size: int = 8
    lr: float = 5e-4
    seed: int = 0
    save_every: int = 50  # steps between resumable states
    limit: int = 0  # train on the first N pairs of the shuffled rows (0: all)


def training_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(question, evidence sentence) of each answerable row of `synth_pipeline.qa` (the sentence is the row's quote:
    the answer's sentence of the evidence, clipped around the answer).

    >>> row = {"question": "When did it open?", "answerable": True, "quote_source": 0, "quote_start": 4,
    ...        "quote_end": 29, "sources": [{"text": "Yes. It opened on 5 May 1889. No."}]}
    >>> training_pairs([row, {**row, "answerable": False, "quote_source": -1}])
    [('When did it open?', 'It opened on 5 May 1889.')]
    """
    out = []
    for row in rows:
        if not row["answerable"] or row["quote_source"] < 0:
            continue
        sentence = row["sources"][row["quote_source"]]["text"][row["quote_start"]: row["quote_end"]]
        sentence = " ".join(sentence.split())
        if sentence:
            out.append((row["question"], sentence))
    return out


class QueryRewriter:
    """The rewrite adapters (named ``name``) on a peft-wrapped generator (see the module docstring). ``folder``: load
    trained adapters from it; None: fresh ones, to train (LoRA starts as no change: untrained, it is SmolLM2 itself
    prompted to write the sentence)."""

    def __init__(self, generator, tokenizer, config: RewriteConfig | None = None, folder: str | Path | None = None,
                 name: str = ADAPTER):
        from peft import LoraConfig

        if folder is not None:
            config = load_config(folder)
        self.config = config or RewriteConfig()
        self.generator, self.tokenizer, self.name = generator, tokenizer, name
        if name in generator.peft_config:
            raise ValueError(f"the generator already has a {name!r} adapter")
        with self._keeping_active():
            if folder is not None:
                generator.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            else:
                layers = generator.config.num_hidden_layers
                generator.add_adapter(name, LoraConfig(
                    r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                    target_modules=list(self.config.lora_targets),
                    layers_to_transform=list(range(layers - self.config.lora_layers, layers))))

    @contextmanager
    def _keeping_active(self) -> Iterator[None]:
        """Whatever a block does to the generator's adapters, the active one and every parameter's ``requires_grad``
        are as before after it (the answering adapters may be in training: `rewards.rl`)."""
        active = self.generator.active_adapter
        flags = {n: p.requires_grad for n, p in self.generator.named_parameters()}
        try:
            yield
        finally:
            self.generator.set_adapter(active, inference_mode=True)
            for n, p in self.generator.named_parameters():
                p.requires_grad_(flags.get(n, False))

    @contextmanager
    def active(self, trainable: bool = False) -> Iterator[None]:
        """The generator with the rewrite adapters active (trainable or frozen) inside the block."""
        with self._keeping_active():
            self.generator.set_adapter(self.name, inference_mode=not trainable)
            yield

    def save(self, folder: str | Path) -> None:
        import shutil
        import tempfile

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:  # peft writes a named adapter into a subfolder of its name
            self.generator.save_pretrained(tmp, selected_adapters=[self.name])
            for f in (Path(tmp) / self.name).iterdir():
                if f.name != "README.md":  # peft's blank model card
                    shutil.copy2(f, folder / f.name)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1) + "\n")

    # -- writing

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def prompt_ids(self, question: str) -> list[int]:
        cfg = self.config
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"][: cfg.max_question_tokens]
        messages = [{"role": "system", "content": cfg.system_prompt},
                    {"role": "user", "content": self.tokenizer.decode(ids)}]
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def sentences(self, questions: list[str]) -> list[str]:
        """The sentence written for each question (greedy, one batch)."""
        import torch

        if not questions:
            return []
        prompts = [self.prompt_ids(q) for q in questions]
        width, pad = max(map(len, prompts)), self.pad_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left-padded: all end where writing starts
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with self.active(), torch.inference_mode():
            out = self.generator.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                          max_new_tokens=self.config.max_sentence_tokens,
                                          eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad,
                                          no_repeat_ngram_size=3)
        return [" ".join(self.tokenizer.decode(row[width:], skip_special_tokens=True).split()) for row in out]

    def rewrite(self, questions: list[str]) -> list[str]:
        """Each question followed by the sentence written for it: the query of the second retrieval round."""
        return [f"{q} {s}".strip() for q, s in zip(questions, self.sentences(questions))]

    # -- training

    def example(self, question: str, sentence: str) -> tuple[list[int], list[int]]:
        """Input ids and labels (-100 on the prompt) of one pair: the sentence, then the end of the turn."""
        prompt = self.prompt_ids(question)
        target = self.tokenizer(" ".join(sentence.split()), add_special_tokens=False)["input_ids"]
        target = target[: self.config.max_sentence_tokens] + [self.tokenizer.eos_token_id]
        return prompt + target, [-100] * len(prompt) + target

    def loss(self, pairs: list[tuple[str, str]]):
        """Mean token cross-entropy of the sentences given their questions (the rewrite adapters must be active)."""
        import torch

        examples = [self.example(q, s) for q, s in pairs]
        width, pad = max(len(ids) for ids, _ in examples), self.pad_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in examples])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in examples])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in examples])
        return self.generator(input_ids=ids, attention_mask=mask, labels=labels).loss


def load_config(folder: str | Path) -> RewriteConfig:
    data = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return RewriteConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def state_file(folder: str | Path) -> Path:
    """Where `train_rewriter` keeps the resumable state of a run saving to ``folder``: ``FOLDER.train.pt``."""
    return Path(folder).with_name(Path(folder).name + ".train.pt")


def train_rewriter(pairs: list[tuple[str, str]], rewriter: QueryRewriter, cfg: RewriteTrainConfig | None = None,
                   save_to: str | Path | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train ``rewriter``'s adapters in place on (question, sentence) pairs; returns the log (one entry per
    ``save_every`` steps and one per epoch).

    With ``save_to`` (a folder) the adapters are saved there at the end, and the run is resumable: every
    ``save_every`` steps the trainable weights, the optimizer, the schedule, the position and the random states are
    kept beside it (``FOLDER.train.pt``); a rerun continues from the last one kept, and the file goes once the
    adapters are saved."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    cfg = cfg or RewriteTrainConfig()
    rng = random.Random(cfg.seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    if not pairs:
        raise ValueError("no (question, sentence) pairs to train the rewriter on")
    per_epoch = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * per_epoch
    state = state_file(save_to) if save_to is not None else None
    history: list[dict[str, Any]] = []
    with rewriter.active(trainable=True):
        params = [p for n, p in rewriter.generator.named_parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
        step, order = 0, None
        if state is not None and state.is_file():
            saved = torch.load(state, weights_only=False)  # our own file: weights, optimizer, random states
            if saved["config"] != asdict(cfg) or saved["pairs"] != len(pairs):
                raise ValueError(f"{state} was saved by another rewriter run ({saved['config']}, {saved['pairs']} "
                                 f"pairs); remove it to start over")
            set_peft_model_state_dict(rewriter.generator, saved["adapter"], adapter_name=rewriter.name)
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            rng.setstate(saved["rng"])
            torch.set_rng_state(saved["torch_rng"])
            step, order, history = saved["step"], saved["order"], saved["history"]
            log(f"resuming the rewriter at step {step}/{total}")

        def keep() -> None:
            state.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"config": asdict(cfg), "pairs": len(pairs), "step": step, "order": order,
                        "adapter": get_peft_model_state_dict(rewriter.generator, adapter_name=rewriter.name),
                        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history},
                       state.with_suffix(".tmp"))
            state.with_suffix(".tmp").replace(state)  # a kill mid-write leaves the last complete state

        rewriter.generator.train()
        losses, t0 = [], time.perf_counter()
        while step < total:
            if step % per_epoch == 0:  # a new epoch (a resumed run mid-epoch has its order back)
                order = list(range(len(pairs)))
                rng.shuffle(order)
            at = (step % per_epoch) * cfg.batch_size
            loss = rewriter.loss([pairs[i] for i in order[at: at + cfg.batch_size]])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % cfg.save_every == 0 or step % per_epoch == 0:
                entry = {"step": step, "of": total, "epoch": (step - 1) // per_epoch + 1,
                         "loss": round(sum(losses) / len(losses), 4), "seconds": round(time.perf_counter() - t0, 1)}
                history.append(entry)
                losses, t0 = [], time.perf_counter()
                if state is not None:
                    keep()
                log(json.dumps(entry))
        rewriter.generator.eval()
    if save_to is not None:
        rewriter.save(save_to)
        if state is not None:
            state.unlink(missing_ok=True)
    return history
