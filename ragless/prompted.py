"""The workflow answerer: prompt-stuffed generation with bolted-on citations, the way RAG frameworks do it.

The retrieved sources are numbered into SmolLM2's chat prompt, the model is asked to answer from them and to cite them
as ``[n]``, and citations are attached afterwards: each cited source is quoted by its sentence that shares the most
words with the answer. `ragless ask` uses it until the trained joint model lands; the evaluation then keeps it as the
prompt-stuffing baseline (../shared/DESIGN.md, "What trained means here").

    answerer = PromptedAnswerer()
    answer = answerer.answer("How tall is the Eiffel Tower?", sources)   # sources: ranked `Source` records
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrieve_generate_model.generator import GeneratorConfig, load_generator
from retrieve_generate_model.records import Answer, Citation, Source

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given. Answer in one or two short sentences and "
    "cite the sources you used as [1], [2]. If the sources do not contain the answer, reply: "
    "I cannot answer from the sources."
)
NO_SOURCES_TEXT = "I cannot answer: no sources were found for this question."


@dataclass(frozen=True)
class PromptedConfig:
    top_k: int = 4  # sources put in the prompt, best first; the usual RAG setting
    max_source_chars: int = 700  # each source cut to this (~175 tokens): 4 of them fit SmolLM2's context with room
    max_new_tokens: int = 96  # a short cited answer; ~3.5 s of greedy decoding on 2 CPU cores
    repetition_penalty: float = 1.1  # on generated tokens: a 135M model loops under plain greedy decoding
    system_prompt: str = SYSTEM_PROMPT


# --- the prompt --------------------------------------------------------------------------------------------------


def shown_part(source: Source, max_chars: int) -> Source:
    """The source as the prompt shows it: its text cut at a word boundary to at most ``max_chars`` characters.

    The cut keeps ``text == document[char_start:char_end]``, so quotes taken from it still map into the document.
    """
    if len(source.text) <= max_chars:
        return source
    head = source.text[: max_chars + 1]
    cut = max(head.rfind(" "), head.rfind("\n"))
    end = cut if cut > max_chars // 2 else max_chars  # one huge "word": cut it rather than lose half the source
    text = source.text[:end].rstrip()
    return dataclasses.replace(source, text=text, char_end=source.char_start + len(text))


def format_sources(sources: list[Source]) -> str:
    """Numbered sources, ``[n] (title — section) text``, numbered from 1 in the given order."""
    blocks = []
    for n, source in enumerate(sources, start=1):
        label = " — ".join(part for part in (source.title, source.section) if part)
        header = f"[{n}] ({label}) " if label else f"[{n}] "
        blocks.append(header + source.text)
    return "\n\n".join(blocks)


def build_messages(question: str, sources: list[Source], system_prompt: str) -> list[dict[str, str]]:
    user = f"Sources:\n\n{format_sources(sources)}\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


# --- the bolted-on citations ---------------------------------------------------------------------------------------

# "[1]", "[1, 3]", "[1][2]" (two matches), "[Source 2]".
_MARKER = re.compile(r"\s*\[(?:sources?\s*)?(\d+(?:\s*,\s*\d+)*)\]", re.IGNORECASE)
# A sentence ends at . ! or ? followed by white space, or at a line end.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
_WORD = re.compile(r"\w+")
# Function words carry no evidence: without this list "the" and "is" decide which sentence is quoted.
_STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as into about than then so not no is are was were be been "
    "being am do does did has have had it its it's this that these those there their they them he she his her him we "
    "our you your i me my which who whom whose what when where why how can could would should will shall may might "
    "must also such very more most other some any all each both only just".split()
)
# Declining phrasings; "does not contain" counts only when said of the sources, not of the tower the question is about.
_ABSTENTION = re.compile(
    r"\b(?:cannot|can ?not|can't|unable to) (?:answer|find|determine|tell|say|provide)"
    r"|\b(?:don't|do not) know\b"
    r"|\b(?:sources?|context|texts?|passages?|documents?)\b[^.]{0,40}?"
    r"\b(?:do|does|did) ?(?:not|n't) (?:contain|mention|provide|include|specify|say|answer)"
    r"|\bno (?:information|mention|answer)\b"
    r"|\bnot (?:enough|sufficient) information\b"
    r"|\bnot (?:mentioned|provided|specified|stated|given|found) in (?:the|any|these|this)\b",
    re.IGNORECASE,
)


def cited_numbers(text: str) -> list[int]:
    """The source numbers the text cites with ``[n]`` markers, in order of first appearance, without repeats."""
    numbers: list[int] = []
    for match in _MARKER.finditer(text):
        for part in match.group(1).split(","):
            if int(part) not in numbers:
                numbers.append(int(part))
    return numbers


def strip_markers(text: str) -> str:
    """The text without its ``[n]`` markers (and the space before each), e.g. ``"330 m [1]."`` -> ``"330 m."``."""
    return _MARKER.sub("", text).strip()


def content_words(text: str) -> set[str]:
    return {word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS}


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each sentence or line of ``text``, end exclusive, without surrounding white space."""
    spans, start = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [span for span in (_strip_span(text, s, e) for s, e in spans) if span[1] > span[0]]


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def overlap(words: set[str], text: str) -> int:
    return len(words & content_words(text))


def best_quote(source: Source, words: set[str]) -> Citation:
    """The sentence of ``source`` that shares the most content words with ``words`` (the first one on ties).

    Its span is in the document: ``source.char_start`` plus the offset inside the source text.
    """
    start, end = max(sentence_spans(source.text), key=lambda span: overlap(words, source.text[span[0] : span[1]]))
    return Citation(
        seg_id=source.seg_id,
        doc_id=source.doc_id,
        char_start=source.char_start + start,
        char_end=source.char_start + end,
        quote=source.text[start:end],
        source=source.source,
    )


def cite(answer_text: str, sources: list[Source]) -> tuple[str, list[Citation]]:
    """Attach quotes to a generated answer; returns the answer without its markers, and the citations.

    ``sources`` are numbered from 1 as in the prompt. Each source the answer cites with ``[n]`` is quoted by its
    sentence sharing the most content words with the answer; markers naming no source are ignored. An answer that
    cites nothing is given the one source with the largest word overlap, if any word is shared at all.
    """
    clean = strip_markers(answer_text)
    words = content_words(clean)
    cited = [sources[n - 1] for n in cited_numbers(answer_text) if 1 <= n <= len(sources)]
    if not cited and sources:
        best = max(sources, key=lambda source: overlap(words, source.text))
        cited = [best] if overlap(words, best.text) > 0 else []
    return clean, [best_quote(source, words) for source in cited if source.text.strip()]


def is_abstention(text: str) -> bool:
    """Whether a generated answer declines to answer ("I cannot answer...", "The sources do not mention...")."""
    return not text.strip() or _ABSTENTION.search(text) is not None


def check_spans(sources: list[Source], doc_texts: dict[str, str]) -> None:
    """Refuse sources whose text is not their document's ``text[char_start:char_end]``: their quotes would not map."""
    for source in sources:
        doc_text = doc_texts.get(source.doc_id)
        if doc_text is not None and doc_text[source.char_start : source.char_end] != source.text:
            raise ValueError(f"source {source.seg_id}: text differs from document {source.doc_id} at its span")


# --- the answerer --------------------------------------------------------------------------------------------------


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> BatchEncoding:
    """The chat as model inputs, ending with the assistant turn's header so the model writes the reply."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def greedy_generate(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    inputs: BatchEncoding,
    max_new_tokens: int,
    repetition_penalty: float,
) -> str:
    """The model's greedy continuation of ``inputs``, decoded without special tokens (with the KV cache, the default).

    The repetition penalty counts generated tokens only: applied to the prompt as well, it would push the model off
    the very words of the sources it should copy.
    """
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor  # lazy, as in generator.py

    prompt_length = inputs["input_ids"].shape[1]
    penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=prompt_length)
    output = model.generate(
        **inputs.to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([penalty]),
        pad_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


class PromptedAnswerer:
    """Answers a question from ranked sources with SmolLM2, prompt-stuffed; the model is loaded on first use."""

    name = "prompted"

    def __init__(self, config: PromptedConfig | None = None, generator_config: GeneratorConfig | None = None):
        self.config = config or PromptedConfig()
        self.generator_config = generator_config or GeneratorConfig()

    def answer(self, question: str, sources: list[Source], doc_texts: dict[str, str] | None = None) -> Answer:
        """Answer ``question`` from ``sources`` (ranked, best first); the top ``config.top_k`` go into the prompt.

        ``doc_texts`` (doc_id -> document text), when given, is used to check that every source maps into its
        document. Without sources the answer is an abstention and the model is not run.
        """
        if not sources:
            timings = {"prompt_s": 0.0, "generate_s": 0.0, "cite_s": 0.0}
            return Answer(text=NO_SOURCES_TEXT, abstained=True, route="abstain", sources=[], timings=timings)
        if doc_texts is not None:
            check_spans(sources, doc_texts)
        cfg = self.config
        tokenizer, model = load_generator(self.generator_config)

        t0 = time.perf_counter()
        shown = [shown_part(source, cfg.max_source_chars) for source in sources[: cfg.top_k]]
        inputs = encode_chat(tokenizer, build_messages(question, shown, cfg.system_prompt))
        t1 = time.perf_counter()
        generated = greedy_generate(tokenizer, model, inputs, cfg.max_new_tokens, cfg.repetition_penalty)
        t2 = time.perf_counter()
        abstained = is_abstention(generated)
        text, citations = (strip_markers(generated), []) if abstained else cite(generated, shown)
        t3 = time.perf_counter()
        return Answer(
            text=text,
            citations=citations,
            abstained=abstained,
            route="abstain" if abstained else "answer",
            sources=list(sources),
            timings={"prompt_s": t1 - t0, "generate_s": t2 - t1, "cite_s": t3 - t2},
        )
