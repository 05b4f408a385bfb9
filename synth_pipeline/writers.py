"""Questions written by a language model, for `ragless synth qa --writer generator|teacher`.

The rules of `synth_pipeline.qa` ask with the sentence's own words (fronted and wh-cloze questions, some words dropped);
people paraphrase. A language model asks in other words. Two writers, each given the answer's sentence and asked for
one question that the answer answers:

- ``generator``: the bundled SmolLM2-135M-Instruct (`retrieve_generate_model.generator`), greedy, with two worked
  examples in the prompt, given the sentence with the answer blanked out and its reply begun with the rules' question
  phrase (`blank_messages`). Told the answer instead (the teacher's prompt), it restated the sentence: 0 of 44 kept
  (2026-12-04). Asked this way it writes fluent questions in its own words ("Where did Kamoya Kimeu find the Turkana
  Boy?", "How many paintings did John Sheepshanks donate to the National Gallery of British Art?"): 140 of 339 kept
  on the training corpus (2026-12-05: 174 failed the round trip, 14 held the answer, 11 were no question, too long or
  about the blank), about 1 s a question on 2 busy cores. **But most of the kept ones are wrong**: of 30 drawn at
  random from the kept questions of that probe and read by hand, 8 ask for their answer ("When was the South
  Kensington Museum renamed?" -> "February 1854"), 22 ask about something else or for another kind of answer than the
  span ("What was Trevathan?" -> "Denver"), and the round trip let them by because the shipped reader picks a span of
  the right kind near the question's words. The good ones were mostly dates and years (6 of 7 date or year questions
  good, 2 of 23 others). Not used for the shipped reader (2026-12-05).
- ``teacher``: any OpenAI-compatible chat endpoint the user configures (a vLLM, llama.cpp or Ollama server, a hosted
  API): ``--teacher-url http://localhost:8000/v1 --teacher-model NAME``, the key (if the endpoint wants one) in
  ``$RAGLESS_TEACHER_API_KEY``. Never required; nothing else in ragless calls outside the machine.

Every written question passes its own round trip before it replaces the rules' question (`accept`): it is one
question (ends with "?", 3 to 30 words), it does not hold the answer, and the answer reader (the shipped checkpoint's,
passed in) reading it over the segment finds a span whose token F1 with the answer is at least ``round_trip_f1``.
Otherwise the rules' question stays; each row's ``question_origin`` says which it got ("generator", "teacher", or the
rules' origin).

Deterministic and resumable: which drafts are rewritten is drawn from ``(seed, seg_id, n)``, decoding is greedy (the
teacher is asked at temperature 0), and every answer is cached in ``cache`` (JSON lines keyed by the writer and the
prompt), so a killed run resumes where it stopped and a rerun gives the same rows without asking again.

    writer = QuestionWriter(WriterConfig(writer="teacher", teacher_url=URL, teacher_model="qwen"), reader,
                            cache="data/qa/run/written.jsonl")
    rows = make_examples(segments, retrieve, QAConfig(), seed=0, rewrite=writer)
    writer.report()   # {"asked": ..., "accepted": ..., "rejected": {"holds_answer": ..., ...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from model_common.answer_metrics import token_f1
from synth_pipeline.qa import (
    question_word,  # the rules' question phrase, which begins the generator's reply
    seeded,  # the drafts' own seeding: the draw does not depend on batch order
)

TEACHER_KEY_ENV = "RAGLESS_TEACHER_API_KEY"

_SYSTEM = ("You write one short question about a sentence. The given answer must answer your question. Use your own "
           "words where you can, and do not put the answer in the question. Reply with the question only.")
_SHOTS = (
    ("The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair in Paris.", "1889", "year",
     "When was the Eiffel Tower finished?"),
    ("Marie Curie shared the 1903 Nobel Prize in Physics with her husband Pierre and with Henri Becquerel.",
     "Henri Becquerel", "person", "Besides her husband, who won the physics prize alongside Marie Curie in 1903?"),
)
# The bundled generator is asked otherwise: told the answer, SmolLM2-135M restates the sentence instead of asking (42
# of 44 replies, 2026-12-04). Given the sentence with the answer blanked out and a reply already begun with the rules'
# question phrase, it has to ask, and it asks in its own words (`blank_messages`).
_BLANK_SYSTEM = ("You turn a sentence with a blank (___) into the question that the blank answers, in your own words. "
                 "Reply with the question only.")
_BLANK = "___"
# the teacher's worked examples with their answers blanked, and questions that ask without a hint of the answer
_BLANK_SHOTS = tuple((sentence.replace(answer, _BLANK), question) for (sentence, answer, _, _), question in zip(
    _SHOTS, ("When was the Eiffel Tower finished?",
             "Who won the physics prize with Marie Curie and her husband in 1903?")))
_KIND_HINT = {"date": "a date", "year": "a year", "number": "a number", "measure": "an amount", "name": "a name",
              "quoted": "a title", "thing": "a thing", "person": "a person", "place": "a place"}


class WriterError(RuntimeError):
    """The writer cannot work at all (the teacher endpoint unreachable or refusing): raised before any row is made."""


@dataclass(frozen=True)
class WriterConfig:
    writer: str = "rules"  # "rules" (no language model), "generator" (bundled SmolLM2) or "teacher" (an endpoint)
    written_fraction: float = 1.0  # share of the rules' questions offered to the writer (drawn per question)
    round_trip_f1: float = 0.5  # the reader's answer to a written question must reach this token F1 with the answer
    teacher_url: str | None = None  # OpenAI-compatible base URL, e.g. http://localhost:8000/v1
    teacher_model: str | None = None  # the model name the endpoint serves
    teacher_concurrency: int = 4  # requests in flight to the teacher
    teacher_timeout: float = 60.0  # seconds per request; 3 tries with back-off on timeouts, 429 and 5xx
    writer_batch: int = 8  # prompts per forward pass of the bundled generator
    max_question_tokens: int = 40

    def __post_init__(self) -> None:
        if self.writer not in ("rules", "generator", "teacher"):
            raise ValueError(f"writer must be 'rules', 'generator' or 'teacher', got {self.writer!r}")
        if not 0.0 <= self.written_fraction <= 1.0:
            raise ValueError(f"written_fraction must be in [0, 1], got {self.written_fraction}")
        if not 0.0 <= self.round_trip_f1 <= 1.0:
            raise ValueError(f"round_trip_f1 must be in [0, 1], got {self.round_trip_f1}")
        if self.writer == "teacher" and not (self.teacher_url and self.teacher_model):
            raise ValueError("the teacher writer needs --teacher-url (an OpenAI-compatible base URL such as "
                             "http://localhost:8000/v1) and --teacher-model")
        if self.teacher_concurrency < 1 or self.writer_batch < 1 or self.max_question_tokens < 4:
            raise ValueError("teacher_concurrency and writer_batch must be >= 1, max_question_tokens >= 4")


def messages(sentence: str, answer: str, kind: str) -> list[dict[str, str]]:
    """The chat prompt for one question: the instruction, two worked examples, then the sentence and answer.

    >>> m = messages("The bridge opened in 1932.", "1932", "year")
    >>> [x["role"] for x in m]
    ['system', 'user', 'assistant', 'user', 'assistant', 'user']
    >>> m[-1]["content"]
    'Sentence: The bridge opened in 1932.\\nAnswer (a year): 1932'
    """
    out = [{"role": "system", "content": _SYSTEM}]
    for s, a, k, q in _SHOTS:
        out += [{"role": "user", "content": f"Sentence: {s}\nAnswer ({_KIND_HINT[k]}): {a}"},
                {"role": "assistant", "content": q}]
    hint = _KIND_HINT.get(kind, "a span")
    out.append({"role": "user", "content": f"Sentence: {sentence}\nAnswer ({hint}): {answer}"})
    return out


def blank_messages(sentence: str, start: int, end: int, question_word: str) -> list[dict[str, str]]:
    """The bundled generator's prompt for one question: the instruction, two worked examples, the sentence with the
    answer (``sentence[start:end]``) blanked out, and the reply begun with ``question_word`` (a final assistant
    message: `LocalChat` continues it).

    >>> m = blank_messages("The bridge opened in 1932.", 21, 25, "In what year")
    >>> [x["role"] for x in m][-3:], m[-2]["content"], m[-1]["content"]
    (['assistant', 'user', 'assistant'], 'Sentence: The bridge opened in ___.', 'In what year')
    """
    out = [{"role": "system", "content": _BLANK_SYSTEM}]
    for s, q in _BLANK_SHOTS:
        out += [{"role": "user", "content": f"Sentence: {s}"}, {"role": "assistant", "content": q}]
    out.append({"role": "user", "content": f"Sentence: {sentence[:start]}{_BLANK}{sentence[end:]}"})
    out.append({"role": "assistant", "content": question_word})
    return out


def clean(text: str | None) -> str | None:
    """The question in a model's reply: its first line up to its first question mark, without a "Question:" label or
    quotes; None when the reply holds no question.

    >>> clean('Question: "When did the bridge open?"\\nAnswer: 1932'), clean("The bridge opened."), clean(None)
    ('When did the bridge open?', None, None)
    >>> clean("When did the bridge open? It opened in 1932.")
    'When did the bridge open?'
    """
    if not text:
        return None
    line = next((x.strip() for x in text.strip().splitlines() if x.strip()), "")
    if "?" in line:
        line = line[: line.index("?") + 1]
    line = re.sub(r"^(?:question|q)\s*[:.-]\s*", "", line, flags=re.IGNORECASE).strip().strip("\"'“”`").strip()
    return line if line.endswith("?") else None


def reject_reason(question: str | None, answer: str, segment_text: str, reader, min_f1: float,
                  lang: str = "en") -> str | None:
    """Why a written question cannot replace the rules' one (None: it can). The reasons, checked in order:
    ``no_question`` (nothing that ends with "?"), ``length`` (under 3 or over 30 words), ``holds_answer``,
    ``mentions_blank`` (it asks about the prompt's blank, not about the sentence), ``round_trip`` (the reader, reading
    the question over the segment, does not find the answer)."""
    if question is None:
        return "no_question"
    if not 3 <= len(question.split()) <= 30:
        return "length"
    if answer.lower() in question.lower():
        return "holds_answer"
    if _BLANK in question or re.search(r"\bblank\b", question, re.IGNORECASE):
        return "mentions_blank"
    spans = reader.spans(question, [segment_text], top=1)
    best = segment_text[spans[0].char_start:spans[0].char_end] if spans else ""
    return None if token_f1(best, answer, lang) >= min_f1 else "round_trip"


class Chat(Protocol):
    """A chat model: one reply per prompt (None where it gave none); ``name`` identifies it in the cache."""

    name: str

    def complete(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]: ...


class LocalChat:
    """The bundled SmolLM2-135M-Instruct, greedy, ``batch`` prompts per forward pass (left-padded), each reply stopped
    at its first "?" (nothing after it is ever read)."""

    def __init__(self, batch: int = 8, max_new_tokens: int = 40, tokenizer=None, model=None):
        if model is None:
            from retrieve_generate_model.generator import load_generator

            tokenizer, model = load_generator()
        self.tokenizer, self.model = tokenizer, model
        self.batch, self.max_new_tokens = batch, max_new_tokens
        self.name = "generator:SmolLM2-135M-Instruct"

    def complete(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]:
        import torch

        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out: list[str | None] = []
        try:
            for i in range(0, len(prompts), self.batch):
                batch = prompts[i: i + self.batch]
                # a final assistant message is the start of the reply: the model continues it
                begun = [p[-1]["content"] if p[-1]["role"] == "assistant" else "" for p in batch]
                texts = [tok.apply_chat_template(p[:-1] if b else p, tokenize=False, add_generation_prompt=True) + b
                         for p, b in zip(batch, begun)]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.inference_mode():
                    # `clean` keeps the first line up to its first "?": a reply is done at its first "?"
                    ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                              pad_token_id=pad, stop_strings=["?"], tokenizer=tok)
                replies = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out += [b + r for b, r in zip(begun, replies)]
        finally:
            tok.padding_side = side
        return out


class OpenAIChat:
    """An OpenAI-compatible ``/chat/completions`` endpoint, asked at temperature 0, ``concurrency`` requests at a time.

    A request that times out or gets 429 or 5xx is tried 3 times with back-off, then gives None (counted as
    ``no_reply``). `check` asks once before any work and raises `WriterError` with the endpoint's answer when it
    cannot work at all (unreachable, 401, an unknown model)."""

    def __init__(self, url: str, model: str, concurrency: int = 4, timeout: float = 60.0, max_tokens: int = 40,
                 api_key: str | None = None, backoff: float = 0.5):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.timeout, self.max_tokens = model, concurrency, timeout, max_tokens
        self.backoff = backoff  # seconds before the second try; doubled before the third
        self.api_key = api_key if api_key is not None else os.environ.get(TEACHER_KEY_ENV)
        self.name = f"teacher:{model}"  # the cache's key: the same model behind another address answers alike

    def _post(self, prompt: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": prompt, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            data = json.loads(response.read())
        return data["choices"][0]["message"]["content"]

    def _ask(self, prompt: list[dict[str, str]]) -> str | None:
        for attempt in range(3):
            try:
                return self._post(prompt)
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    return None
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError):
                pass
            if attempt < 2:
                time.sleep(self.backoff * 2 ** attempt)
        return None

    def check(self) -> None:
        try:
            reply = self._post(messages("The bridge opened in 1932.", "1932", "year"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:200]
            raise WriterError(f"the teacher at {self.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise WriterError(f"the teacher at {self.url} cannot be reached: {e}") from None
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise WriterError(f"the teacher at {self.url} did not answer as an OpenAI-compatible chat endpoint "
                              f"({type(e).__name__}: {e})") from None
        if not isinstance(reply, str):
            raise WriterError(f"the teacher at {self.url} replied without text: {reply!r}")

    def complete(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._ask, prompts))


class QuestionWriter:
    """Rewrites drafts' questions with a chat model (`make_examples(..., rewrite=writer)`); see the module docstring.

    ``reader``: an `AnswerReader` (the round trip); ``chat``: a `Chat` (default: made from ``config``);
    ``cache``: a JSON-lines file of the replies (None: no cache)."""

    def __init__(self, config: WriterConfig, reader, chat: Chat | None = None, cache: str | Path | None = None,
                 seed: int = 0):
        if config.writer == "rules":
            raise ValueError("the rules writer writes no question: make_examples needs no QuestionWriter for it")
        self.config, self.reader, self.seed = config, reader, seed
        if chat is None:
            if config.writer == "teacher":
                chat = OpenAIChat(config.teacher_url, config.teacher_model, config.teacher_concurrency,
                                  config.teacher_timeout, config.max_question_tokens)
                chat.check()
            else:
                chat = LocalChat(config.writer_batch, config.max_question_tokens)
        self.chat = chat
        self.cache_path = Path(cache) if cache is not None else None
        self.cache: dict[str, str | None] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.cache[entry["key"]] = entry["reply"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill: asked again
        self.counts: Counter = Counter()

    def _key(self, prompt: list[dict[str, str]]) -> str:
        return hashlib.sha256(json.dumps([self.chat.name, prompt], ensure_ascii=False).encode()).hexdigest()

    def _replies(self, prompts: list[list[dict[str, str]]]) -> list[str | None]:
        keys = [self._key(p) for p in prompts]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            replies = self.chat.complete([prompts[i] for i in todo])
            lines = []
            for i, reply in zip(todo, replies):
                self.cache[keys[i]] = reply
                lines.append(json.dumps({"key": keys[i], "reply": reply}, ensure_ascii=False) + "\n")
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as f:
                    f.writelines(lines)
        self.counts["cached"] += len(prompts) - len(todo)
        return [self.cache[k] for k in keys]

    def prompt(self, d) -> list[dict[str, str]]:
        """A draft's prompt: for the bundled generator, its sentence with the answer blanked and the reply begun with
        the rules' question phrase (`blank_messages`); for a teacher, its sentence and answer (`messages`)."""
        sentence = d.segment.text[d.sentence[0]:d.sentence[1]]
        if self.config.writer == "generator":
            start, end = d.answer_span[0] - d.sentence[0], d.answer_span[1] - d.sentence[0]
            return blank_messages(sentence, start, end, question_word(sentence, start, d.kind, d.answer, d.lang))
        return messages(sentence, d.answer, d.kind)

    def __call__(self, drafts: list) -> list:
        """The drafts (`synth_pipeline.qa._Draft`), those drawn for the writer with its question where it passed the
        round trip."""
        origin = self.config.writer
        chosen = [i for i, d in enumerate(drafts)
                  if seeded(self.seed, d.segment.seg_id, d.n, "writer").random() < self.config.written_fraction]
        replies = self._replies([self.prompt(drafts[i]) for i in chosen])
        out = list(drafts)
        for i, reply in zip(chosen, replies):
            d = drafts[i]
            question = clean(reply)
            reason = "no_reply" if reply is None else reject_reason(question, d.answer, d.segment.text, self.reader,
                                                                    self.config.round_trip_f1, d.lang)
            self.counts["asked"] += 1
            if reason is None:
                self.counts["accepted"] += 1
                out[i] = replace(d, question=question, origin=origin)
            else:
                self.counts[f"rejected:{reason}"] += 1
        return out

    def report(self) -> dict[str, Any]:
        rejected = {k.split(":", 1)[1]: v for k, v in sorted(self.counts.items()) if k.startswith("rejected:")}
        return {"writer": self.chat.name, "config": asdict(self.config), "asked": self.counts["asked"],
                "accepted": self.counts["accepted"], "cached": self.counts["cached"], "rejected": rejected}
