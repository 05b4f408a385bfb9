"""Training data for the joint model: questions with answers and evidence, made from corpus segments alone.

No evaluation question is read and nothing outside the machine is called. From each segment of a corpus (what the
preprocessing model cut, so the training sources look like the ones retrieved at answer time):

1. **Answer spans** (`answer_candidates`): dates, years, numbers with their unit, names (runs of capitalized words,
   "University of Chicago"), quoted titles — the kinds of short spans extractive questions ask for.
2. **Questions**: where the sentence's shape allows, the question people would ask, with its question word in front
   (`fronted_question`: "Who built the lighthouse?" when the span is the subject, "When was the game played?" when an
   auxiliary precedes it); otherwise the sentence around the span with the span taken out and a question word for
   its kind in front (`cloze_question`, the "wh-cloze" questions of Lewis et al. 2019, unsupervised QA), or, with
   ``cloze="in-situ"``, the clause kept whole and grammatical with a question phrase in the span's place
   (`in_situ_question`: "The tower opened on what date in Paris?"). They teach
   the model to find the sentence that matches the question and copy the span it asks for; the question word (by
   kind, and for names by context: Who, Where, What) tells what kind of span to copy. Optionally a language model
   rewrites them in its own words (`synth_pipeline.writers`: the bundled generator, or a teacher endpoint the user
   configures), each written question round-tripped through the answer reader before it replaces the rules' one.
3. **Round trip** (`round_trip`): a pair is kept only if answering the question from its segment recovers the span:
   the sentence of the segment that shares the most content words with the question must be the span's own sentence,
   the span must not be in the question, and the question must hold enough of the sentence to be answerable.
4. **Sources** (`make_examples`): the question is given the top-``k`` segments a retriever returns for it (hard
   negatives mined with the user's own retriever), with the evidence segment put among them at the rank it got (or in
   place of the last when it was not retrieved), as at answer time.
5. **Unanswerables**: a share of the questions is given sources without the answer: either the evidence segment is
   withheld (only the negatives), or — the near miss that SQuAD 2.0 is made of — the evidence segment is kept with
   the answer's sentence cut out of it, or (``swapped_fraction``) the evidence kept whole and the question changed
   to ask about something it does not say: a name, year or number of the question swapped for another of the same
   kind from a segment retrieved beside the evidence (SQuAD 2.0's "entity swap"), or (``perturbed_fraction``) its
   sense turned by an antonym or a negation the evidence does not support. The target is then to abstain.
6. **Multi-source**: every source that holds the answer where the question's words are (not only the one the
   question was made from) is a source the answer may rely on; the target ranks the evidence segment first.

Every example is seeded by ``(seed, seg_id, n)``: rerunning over the same segments gives the same rows, whatever their
order. Rows are written to Parquet with `write_examples` (the config in the file's metadata).

    examples = make_examples(segments, retrieve, QAConfig(), seed=0)      # segments: `Source` records of the corpus
    write_examples(examples, "data/qa/train.parquet", QAConfig(), seed=0)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retrieve_generate_model.records import Source

PARQUET_META_KEY = b"ragless.synth.qa"


@dataclass(frozen=True)
class QAConfig:
    questions_per_segment: int = 3  # at most; fewer when the segment has fewer spans surviving the round trip
    k: int = 4  # sources per example: the answerer's k at answer time
    unanswerable_fraction: float = 0.3  # share of examples whose sources do not hold the answer
    near_miss_fraction: float = 0.5  # of the unanswerables: evidence kept with the answer's sentence cut out
    max_answer_words: int = 6
    window_words: int = 12  # words of the sentence kept on each side of the span in the question
    drop_function_words: float = 0.25  # wh-cloze: probability of dropping each function word of the question
    min_shared_words: int = 2  # content words the question must share with the answer's sentence
    max_quote_words: int = 30  # the supporting quote: the answer's sentence, clipped around the span to this
    fronted: float = 0.8  # share of spans asked with the question word in front where the sentence allows it
    cloze: str = "wh-cloze"  # the other questions: "wh-cloze" (question word, then the clause's words without the
    #                          span) or "in-situ" (the question phrase in the span's place, the clause whole)
    # Questions that do not copy their sentence (`noisy_question`; fronted and wh-cloze questions): people ask with
    # a few of the sentence's words, not all of them in order, so the reader must use the question word to choose
    # among the spans near them instead of filling the one gap a copied sentence leaves
    vary_wh: bool = True  # draw the question phrase among its kind's phrasings ("When", "On what date", ...)
    drop_content_words: float = 0.4  # probability of dropping each content word after the question phrase
    shuffle_window: float = 0.0  # words move at most this many places (0: order kept)
    swapped_fraction: float = 0.4  # of the unanswerables: the evidence kept whole, a name or number of the question
    #                                swapped for one of a retrieved segment that the evidence lacks (`swap_entity`)
    # of the unanswerables not swapped: the evidence kept whole, the question's sense turned by an antonym ("first" ->
    # "last") or a negation ("was built" -> "was not built") that the evidence does not support (`perturb_question`;
    # SQuAD 2.0's "antonym" and "negation" kinds)
    perturbed_fraction: float = 0.0
    numeric_weight: float = 3.0  # odds of a date, year, number or measure being the answer against a name or thing
    # 0: each question's sentence comes from the candidates' random order. N > 0: a sentence once chosen is asked
    # about up to N of its spans, one after another: questions that share their sentence's words and differ in what
    # they ask for, so that the reader must read the question word (not only find the gap) to choose the span
    questions_per_sentence: int = 0
    # the kinds of span asked about (empty: every kind of `answer_candidates`, plus "person" for names of people);
    # "thing" (a short lower-case phrase after a determiner, cut to a noun phrase by `_noun_phrase`) is the noisiest
    # kind: without a part-of-speech tagger some are still not noun phrases
    answer_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.answer_kinds) - ANSWER_KINDS)
        if unknown:
            raise ValueError(f"answer_kinds: unknown kind(s) {unknown}; known: {sorted(ANSWER_KINDS)}")
        if self.cloze not in ("in-situ", "wh-cloze"):
            raise ValueError(f"cloze must be 'in-situ' or 'wh-cloze', got {self.cloze!r}")
        for name in ("swapped_fraction", "perturbed_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.drop_content_words < 1.0:
            raise ValueError(f"drop_content_words must be in [0, 1), got {self.drop_content_words}")
        if self.questions_per_sentence < 0:
            raise ValueError(f"questions_per_sentence must be >= 0, got {self.questions_per_sentence}")
        if self.shuffle_window < 0 or self.numeric_weight <= 0:
            raise ValueError(f"shuffle_window must be >= 0 and numeric_weight > 0, got {self.shuffle_window}, "
                             f"{self.numeric_weight}")


# ------------------------------------------------------------------------------------------------------- languages

_FUNCTION_WORDS = {
    "en": frozenset(
        "a an the and or but of to in on at by for with from as into about than then so is are was were be been being "
        "it its this that these those there their they he she his her which who whom whose what when where how also "
        "has have had do does did not no can could would should will may might must".split()
    ),
    "fr": frozenset(
        "le la les un une des du de d l et ou mais à au aux en dans par pour sur avec sans sous est sont été être a "
        "ont avait ce cet cette ces il elle ils elles on qui que qu dont où se sa son ses leur leurs ne pas plus "
        "vous nous peut doit".split()
    ),
}
# question words by answer kind
_WH = {
    "en": {"date": "When", "year": "In what year", "number": "How many", "measure": "How much", "name": "Who or what",
           "quoted": "What title", "thing": "What", "person": "Who", "place": "Where"},
    "fr": {"date": "Quand", "year": "En quelle année", "number": "Combien", "measure": "Combien",
           "name": "Qui ou quoi", "quoted": "Quel titre", "thing": "Quoi", "person": "Qui", "place": "Où"},
}
# other ways people ask for the same kind of span (`QAConfig.vary_wh`), keyed by the plain question word
_WH_VARIANTS = {
    "en": {"When": ("When", "On what date", "What date"), "In what year": ("In what year", "When", "What year"),
           "How much": ("How much", "How many", "What"), "What title": ("What title", "What"),
           "What": ("What", "Which")},
    "fr": {"Quand": ("Quand", "À quelle date"), "En quelle année": ("En quelle année", "Quand"),
           "Quoi": ("Quoi", "Quel")},
}
_DETERMINERS = frozenset("the a an le la les un une".split())  # a preposition before one goes with them
_NUMERIC_KINDS = frozenset(("date", "year", "number", "measure"))
# last words of names that are not people's (`question_word`): places, buildings, bodies, events, works, titles
_NAME_HEADS = frozenset(
    "company corporation inc ltd group university college school institute academy society association union "
    "council committee assembly senate parliament congress court party army navy league club team cup bowl "
    "championship games olympics award awards prize medal stadium arena park bridge tower lighthouse castle palace "
    "church cathedral abbey temple museum library hall theatre theater house building station airport hospital "
    "centre center street road avenue square river lake sea ocean bay island islands mountain mountains mount "
    "valley desert forest coast peninsula city county province state states kingdom empire republic region "
    "war battle treaty act revolution dynasty network channel broadcasting records studios show series festival "
    "day week conference agreement office department ministry agency bank exchange system project program "
    "programme mission station protocol foundation trust fund church railway line".split()
)
_AUX = {"en": frozenset("was were is are has have had will would can could did does".split()),
        "fr": frozenset("est sont était étaient a ont avait peut doit".split())}
_STARTERS = frozenset(
    "however during after before while although though since because despite many some most several both each "
    "other others such following today later then thus therefore moreover meanwhile unlike like according "
    "although if when where once whereas cependant pendant après avant depuis selon".split()
)
_PLACE_PREPOSITIONS = frozenset("in at near from into à en dans près".split())
_TIME_PREPOSITIONS = frozenset("in on at during since by until from en le au".split())
_WORD = re.compile(r"\w+(?:['’]\w+)?", re.UNICODE)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "janvier|février|mars|avril|mai|juin|juillet|août|septembre|octobre|novembre|décembre")
_UNITS = ("percent|per cent|%|km|kilometres|kilometers|miles|metres|meters|feet|kg|tons|tonnes|dollars|euros|€|\\$|"
          "people|years|days|hours|minutes|months|weeks|ans|jours|mois|heures|semaines|personnes")
_CANDIDATES = (
    ("date", re.compile(rf"\b(?:\d{{1,2}} (?:{_MONTHS})(?: \d{{4}})?|(?:{_MONTHS}) \d{{1,2}}(?:, \d{{4}})?|"
                        rf"(?:{_MONTHS}) \d{{4}})\b")),
    ("year", re.compile(r"(?<![-\w])(?:1\d\d\d|20[0-4]\d)s?\b")),
    ("measure", re.compile(rf"(?:\$|€)?\b\d[\d,.]*(?: ?(?:million|billion|thousand|millions|milliards))? ?(?:{_UNITS})"
                           rf"(?!\w)")),
    ("number", re.compile(r"(?<![-\w])\d[\d,.]*(?: (?:million|billion|thousand))?\b")),
    ("quoted", re.compile(r"\"([^\"\n]{3,60})\"|“([^”\n]{3,60})”")),
    ("name", re.compile(r"\b[A-ZÀ-Ý][\w’'-]+(?:(?: (?:of|de|du|des|the|and|la|le|for))? [A-ZÀ-Ý][\w’'-]+)*")),
    # a short lower-case noun phrase after a determiner ("the port of Marseille" -> "port"): the span starts after
    # the determiner, as extractive answers usually do
    ("thing", re.compile(r"\b(?:the|an|a|their|his|her|its|le|la|les|un|une|des) ([a-zà-ÿ][\w-]+"
                         r"(?: (?!(?:of|in|on|at|by|for|and|or|to|from|with|was|is|were|are|that|which)\b)"
                         r"[a-zà-ÿ][\w-]+){0,2})")),
)
# what `QAConfig.answer_kinds` may name: the candidates' kinds, and "person" (a name the text also writes in full)
ANSWER_KINDS = frozenset(kind for kind, _ in _CANDIDATES) | {"person"}


def detect_lang(text: str) -> str:
    """"en" or "fr", by which language's function words the text uses more (enough for the corpora here)."""
    words = [w.lower() for w in _WORD.findall(text)]
    scores = {lang: sum(w in fw for w in words) for lang, fw in _FUNCTION_WORDS.items()}
    return max(sorted(scores), key=lambda lang: scores[lang])


def content_words(text: str, lang: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _FUNCTION_WORDS[lang] and len(w) > 1}


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence or line of ``text``, without surrounding spaces."""
    spans = []
    for m in _SENTENCE.finditer(text):
        start, end = m.start(), m.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


# ---------------------------------------------------------------------------------------------------------- spans


# words a noun phrase after a determiner does not run into (prepositions, adverbs, quantifiers the regex lets by),
# and single words that are not a noun phrase on their own
_NP_STOPS = frozenset(
    "between through during against among within without after before over under upon across toward towards around "
    "behind beyond along beside besides despite via per both back such only even very more most less least still now "
    "here just too well again already always often never ever once since until while where whereby thus".split())
_NOT_ALONE = frozenset("so-called first second third last next same other whole entire following latter former new "
                       "old own main various several certain particular".split())
_ADJECTIVE_ENDS = ("ous", "ive", "ful", "less", "able", "ible")


def _noun_phrase(span: str) -> str | None:
    """The noun phrase at the start of a "thing" candidate (the words after a determiner), or None: cut at a word a
    noun phrase does not run into (a function word, a preposition, an -ly adverb), trailing past participles taken
    off ("agreement dated" is the agreement), and None when what is left does not end like a noun.

    >>> [_noun_phrase(s) for s in ("inner membrane", "split between both", "charter granted", "destructive",
    ...                            "so-called", "glass case", "khuruldai elected", "team has")]
    ['inner membrane', 'split', 'charter', None, None, 'glass case', 'khuruldai', 'team']
    """
    words = []
    for w in span.split():
        low = w.lower()
        adverb = low.endswith("ly") and len(low) > 4
        if low in _FUNCTION_WORDS["en"] or low in _AUX["en"] or low in _NP_STOPS or adverb:
            break
        words.append(w)
    while len(words) > 1 and words[-1].lower().endswith("ed"):
        words.pop()
    if not words:
        return None
    last = words[-1].lower()
    if last.endswith(_ADJECTIVE_ENDS) or last.endswith("ed") or (len(words) == 1 and last in _NOT_ALONE):
        return None
    return " ".join(words)


def answer_candidates(sentence: str, max_words: int = 6) -> list[tuple[int, int, str]]:
    """Candidate answer spans of one sentence, ``(start, end, kind)``, non-overlapping (earlier kinds win).

    >>> [(s, e, k) for s, e, k in answer_candidates("The tower, built by Gustave Eiffel, opened on 31 March 1889.")]
    [(46, 59, 'date'), (20, 34, 'name')]
    """
    taken: list[tuple[int, int]] = []
    out = []
    for kind, pattern in _CANDIDATES:
        for m in pattern.finditer(sentence):
            group = next((g for g in range(1, (pattern.groups or 0) + 1) if m.group(g) is not None), 0)
            start, end = m.span(group)  # a pattern with groups: the span is its group (inside quotes, after "the")
            span = sentence[start:end].strip(" ,.;:")
            start = sentence.index(span, start) if span else start
            end = start + len(span)
            if not span or len(span.split()) > max_words or any(s < end and start < e for s, e in taken):
                continue
            if kind == "name" and span.lower() in _FUNCTION_WORDS["en"] | _FUNCTION_WORDS["fr"]:
                continue
            if kind == "name" and start == 0 and " " not in span and span.lower() in _STARTERS:
                continue  # "However", "During": a capital at the start of a sentence, not a name
            if kind == "number" and len(span) < 2 and not span.isdigit():
                continue
            if kind == "thing":
                span = _noun_phrase(span)
                if span is None:
                    continue
                end = start + len(span)
            taken.append((start, end))
            out.append((start, end, kind))
    return out


# ------------------------------------------------------------------------------------------------------ questions


def cloze_question(sentence: str, start: int, end: int, kind: str, lang: str, rng: random.Random,
                   cfg: QAConfig) -> str:
    """The wh-cloze question for the span ``sentence[start:end]``: question word, then the words around the span.

    >>> cloze_question("The tower opened on 31 March 1889 in Paris.", 20, 33, "date", "en", random.Random(0),
    ...                QAConfig(drop_function_words=0.0))
    'When the tower opened on in Paris?'

    The question word is `question_word`'s (names asked with Who, Where or What by their context).
    """
    c_start, c_end = _clause(sentence, start, end)
    if len(_WORD.findall(sentence[c_start:start] + " " + sentence[end:c_end])) < 3:
        c_start, c_end = 0, len(sentence)  # a clause too short to ask about: the whole sentence
    left = _WORD.findall(sentence[c_start:start])[-cfg.window_words:]
    right = _WORD.findall(sentence[end:c_end])[: cfg.window_words]
    fw = _FUNCTION_WORDS[lang]
    words = [w for w in left + right if not (w.lower() in fw and rng.random() < cfg.drop_function_words)]
    if words and words[0][0].isupper() and words[0].lower() in fw:
        words[0] = words[0].lower()  # "The tower" -> "When the tower": the question word starts the sentence
    return f"{question_word(sentence, start, kind, sentence[start:end], lang)} {' '.join(words)}?"


# the question phrase put in the span's place (in-situ), by kind; a preposition before a place is taken in ("where")
_IN_SITU = {
    "en": {"date": "what date", "year": "what year", "number": "how many", "measure": "how much", "name": "what",
           "quoted": "what title", "thing": "what", "person": "who", "place": "where"},
    "fr": {"date": "quelle date", "year": "quelle année", "number": "combien", "measure": "combien", "name": "quoi",
           "quoted": "quel titre", "thing": "quoi", "person": "qui", "place": "où"},
}


def in_situ_question(sentence: str, start: int, end: int, kind: str, lang: str, cfg: QAConfig) -> str:
    """The question with its question phrase where the span was, the clause kept whole and in order:

    >>> in_situ_question("The tower opened on 31 March 1889 in Paris.", 20, 33, "date", "en", QAConfig())
    'The tower opened on what date in Paris?'
    >>> s = "At their spring meetings in Boston, the owners awarded the game to Santa Clara."
    >>> in_situ_question(s, s.index("Santa"), len(s) - 1, "name", "en", QAConfig())
    'The owners awarded the game to who?'
    >>> in_situ_question("He was born in Newcastle in 1901.", 15, 24, "name", "en", QAConfig())
    'He was born where in 1901?'

    A grammatical question (unlike the wh-cloze's word list) that keeps the sentence's words, which is what the
    reader must match; a clause too short to ask about gives way to the whole sentence, and at most
    ``window_words`` words are kept on each side.
    """
    span = sentence[start:end]
    c_start, c_end = _clause(sentence, start, end)
    if len(_WORD.findall(sentence[c_start:start] + " " + sentence[end:c_end])) < 4:
        c_start, c_end = 0, len(sentence)
    left = sentence[c_start:start].split()[-cfg.window_words:] if cfg.window_words else []
    right = sentence[end:c_end].split()[: cfg.window_words] if cfg.window_words else []
    wh = question_word(sentence, start, kind, span, lang)
    phrase = _IN_SITU[lang]["place" if wh == _WH[lang]["place"] else "person" if wh == _WH[lang]["person"] else kind]
    if phrase == _IN_SITU[lang]["place"] and left and left[-1].lower() in _PLACE_PREPOSITIONS:
        left = left[:-1]  # "born in Newcastle" -> "born where"
    if left and left[-1].lower() in ("the", "a", "an", "le", "la", "les", "un", "une"):
        left = left[:-1]
    words = left + [phrase] + right
    question = " ".join(words).strip(" ,;:.!?")
    question = re.sub(r"\s+([,;:])", r"\1", question)
    return question[:1].upper() + question[1:] + "?"


def question_word(sentence: str, start: int, kind: str, span: str, lang: str) -> str:
    """The question word for a span: by its kind, and for names by what precedes them ("in Paris": Where) and their
    shape ("Robert Stevenson": Who; "University of Chicago", "the Walt Disney Company", "Levi's Stadium": What).

    >>> [question_word(s, s.index(n), "name", n, "en") for s, n in [
    ...     ("It was built by Robert Stevenson.", "Robert Stevenson"), ("He was born in Paris.", "Paris"),
    ...     ("ABC is owned by the Walt Disney Company.", "Walt Disney Company"),
    ...     ("They played at Levi's Stadium.", "Levi's Stadium"), ("They saw Skerryvore Lighthouse.",
    ...     "Skerryvore Lighthouse")]]
    ['Who', 'Where', 'What', 'Where', 'What']

    A name whose last word says it is a place, a body or a thing (`_NAME_HEADS`: "Stadium", "Company", "Bowl"...)
    or that follows "the" is not a person: asking "Who" about it would teach a reader that "Who" asks for any
    capitalized words.
    """
    if kind != "name":
        return _WH[lang][kind]
    before = _WORD.findall(sentence[:start])
    if before and before[-1].lower() in _PLACE_PREPOSITIONS:
        return _WH[lang]["place"]
    words = span.split()
    thing = words[-1].strip("'’s").lower() in _NAME_HEADS or (before and before[-1].lower() in _DETERMINERS)
    if not thing and 2 <= len(words) <= 3 and all(w[:1].isupper() for w in words):
        return _WH[lang]["person"]
    return _WH[lang]["thing"]


def _clause(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The clause around a span: from the last , ; : ( before it to the first one after it."""
    left = max(sentence.rfind(c, 0, start) for c in ",;:(") + 1
    rights = [i for i in (sentence.find(c, end) for c in ",;:)") if i >= 0]
    return left, min(rights) if rights else len(sentence)


def _words(text: str) -> str:
    return " ".join(text.strip(" ,;:.!?\"'()").split())


def fronted_question(sentence: str, start: int, end: int, kind: str, lang: str, cfg: QAConfig) -> str | None:
    """A question with its question word in front, the way people ask, where the sentence's shape allows one:

    - the span is its clause's subject: "Robert Stevenson built the lighthouse." -> "Who built the lighthouse?";
    - an auxiliary comes between the subject and the span: "The game was played on February 7, 2016, at Levi's
      Stadium." -> "When was the game played?" (a preposition before a time or place span goes with it).

    None where neither applies (`cloze_question` then makes the question).

    >>> fronted_question("Robert Stevenson built the lighthouse in 1810.", 0, 16, "name", "en", QAConfig())
    'Who built the lighthouse in 1810?'
    >>> s = "The game was played on February 7, 2016, at Levi's Stadium."
    >>> fronted_question(s, 23, 39, "date", "en", QAConfig())
    'When was the game played?'
    """
    span = sentence[start:end]
    wh = question_word(sentence, start, kind, span, lang)
    c_start, c_end = _clause(sentence, start, end)
    after = " ".join(_words(sentence[end:c_end]).split()[: cfg.window_words])
    head = sentence[c_start:start]
    if not _words(head):  # the span opens its clause: it is the subject
        if after and after[0].islower() and (c_start == 0 or sentence[:c_start].strip()):
            return f"{wh} {after}?"
        return None
    words = list(re.finditer(r"\S+", head))
    aux_at = [i for i, m in enumerate(words) if _words(m.group()).lower() in _AUX[lang]]
    if not aux_at or aux_at[-1] == 0:
        return None
    i = aux_at[-1]
    subject = _words(head[: words[i].start()]).split()
    middle = _words(head[words[i].end():]).split()
    if not subject or len(subject) > 8:
        return None
    if subject[0].lower() in _FUNCTION_WORDS[lang]:
        subject[0] = subject[0].lower()
    if middle and middle[-1].lower() in ("the", "a", "an", "le", "la", "les"):
        middle.pop()
    if middle and kind in ("date", "year") and middle[-1].lower() in _TIME_PREPOSITIONS:
        middle.pop()
    elif middle and wh == _WH[lang]["place"] and middle[-1].lower() in _PLACE_PREPOSITIONS:
        middle.pop()
    aux = _words(words[i].group()).lower()
    return " ".join([wh, aux, *subject, *middle, *after.split()]) + "?"


def noisy_question(question: str, wh: str, lang: str, rng: random.Random, cfg: QAConfig) -> str:
    """A question that copies its sentence less: its question phrase ``wh`` (which starts it) perhaps said another
    way (``cfg.vary_wh``), each content word after it dropped with probability ``cfg.drop_content_words`` (with the
    preposition or determiner before it; at least ``cfg.min_shared_words + 1`` content words stay, the first ones
    back first), and the words locally shuffled (each moves by less than ``cfg.shuffle_window`` places): the word
    dropping and shuffling of Lewis et al.'s noisy clozes. A question not starting with ``wh`` is returned as it is.

    >>> q = "When was the game played at Levi's Stadium in Santa Clara?"
    >>> noisy_question(q, "When", "en", random.Random(0), QAConfig(vary_wh=True, drop_content_words=0.4))
    'On what date was the game played Stadium in Santa Clara?'
    >>> noisy_question(q, "When", "en", random.Random(2), QAConfig(vary_wh=False))
    'When was the game played in Santa Clara?'
    >>> quiet = QAConfig(vary_wh=False, drop_content_words=0.0)
    >>> noisy_question(q, "When", "en", random.Random(0), quiet)  # no noise configured: the question itself
    "When was the game played at Levi's Stadium in Santa Clara?"
    """
    if not question.startswith(wh + " "):
        return question
    body = question[len(wh):].strip().rstrip("?").split()
    if cfg.vary_wh:
        wh = rng.choice(_WH_VARIANTS[lang].get(wh, (wh,)))
    fw = _FUNCTION_WORDS[lang]
    content = [_words(w).lower() not in fw for w in body]
    keep = [not c or rng.random() >= cfg.drop_content_words for c in content]
    for i in range(len(body)):  # too few content words left to find the sentence by: put the first ones back
        if sum(k and c for k, c in zip(keep, content)) > cfg.min_shared_words:
            break
        keep[i] = keep[i] or content[i]
    for i in range(1, len(body)):
        if not keep[i] and content[i] and not content[i - 1] and keep[i - 1]:
            keep[i - 1] = False  # "at the Stadium" dropped whole, not "at the" left alone
            if i > 1 and not content[i - 2] and body[i - 1].lower() in _DETERMINERS and \
                    body[i - 2].lower() not in _AUX[lang]:
                keep[i - 2] = False
    words = [w for w, k in zip(body, keep) if k]
    if cfg.shuffle_window > 0:
        keys = [i + rng.uniform(0, cfg.shuffle_window) for i in range(len(words))]
        words = [w for _, w in sorted(zip(keys, words), key=lambda kw: kw[0])]
    return f"{wh} {' '.join(words)}?"


def round_trip(question: str, answer: str, text: str, sentence: tuple[int, int], lang: str, min_shared: int) -> bool:
    """Whether answering ``question`` from ``text`` leads back to ``answer`` in ``sentence``: the answer is not in
    the question, the question shares at least ``min_shared`` content words with that sentence, and no other sentence
    of the text shares as many.

    >>> text = "The tower opened in 1889. The tower opened its lift in 1899."
    >>> round_trip("When the tower opened?", "1889", text, (0, 25), "en", 2)   # both sentences fit: ambiguous
    False
    >>> round_trip("When the tower opened in Paris?", "1889", "The tower opened in Paris in 1889. It is tall.",
    ...            (0, 34), "en", 2)
    True
    """
    if answer.lower() in question.lower():
        return False
    q_words = content_words(question, lang) - content_words(" ".join(_WH[lang].values()), lang)
    overlaps = {span: len(q_words & content_words(text[span[0]:span[1]], lang)) for span in sentences(text)}
    own = overlaps.get(sentence, 0)
    return own >= min_shared and all(n < own for span, n in overlaps.items() if span != sentence)


def clip_quote(text: str, sentence: tuple[int, int], start: int, end: int, max_words: int) -> tuple[int, int]:
    """The supporting quote: the span's sentence, clipped to at most ``max_words`` words centred on the span."""
    s_start, s_end = sentence
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text[s_start:s_end])]
    if len(words) <= max_words:
        return s_start, s_end
    first = next(i for i, (a, b) in enumerate(words) if s_start + b > start)
    last = max(i for i, (a, b) in enumerate(words) if s_start + a < end)
    spare = max(0, max_words - (last - first + 1))
    lo = max(0, first - spare // 2)
    hi = min(len(words) - 1, lo + max(max_words, last - first + 1) - 1)
    lo = max(0, min(lo, hi - max_words + 1))
    return s_start + words[lo][0], s_start + words[hi][1]


# ------------------------------------------------------------------------------------------------------- examples


def seeded(seed: int, *parts: Any) -> random.Random:
    """A generator drawn from ``(seed, *parts)`` alone (JSON-serializable parts): the same draws whatever else ran
    before, in whatever order the rows are made."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class _Draft:
    segment: Source
    question: str
    answer: str
    kind: str
    sentence: tuple[int, int]
    answer_span: tuple[int, int]
    lang: str
    n: int
    origin: str


def is_prose(sentence: str) -> bool:
    """Whether a sentence reads as prose (questions are asked about prose, not about code or lists of names): at least
    six words, most of them plain words, ending like a sentence.

    >>> is_prose("The tower was built between 1807 and 1810 by Robert Stevenson."), is_prose("xsltGetKey xsltGetNsProp")
    (True, False)
    """
    words = sentence.split()
    plain = sum(bool(re.fullmatch(r"[^\W\d_][\w'’-]*[,;:.]?|\d[\d,.]*[,;:.]?", w)) for w in words)
    lowered = sum(w[:1].islower() for w in words)
    return len(words) >= 6 and plain >= 0.85 * len(words) and lowered >= 0.4 * len(words) and \
        sentence.rstrip()[-1:] in ".!?»\")"


def draft_questions(segment: Source, cfg: QAConfig, seed: int) -> list[_Draft]:
    """The questions made from one segment that survive the round trip (at most ``cfg.questions_per_segment``)."""
    text = segment.text
    lang = detect_lang(text)
    rng = seeded(seed, segment.seg_id, "questions")
    candidates = [
        (sent, (sent[0] + s, sent[0] + e), kind)
        for sent in sentences(text) if is_prose(text[sent[0]:sent[1]])
        for s, e, kind in answer_candidates(text[sent[0]:sent[1]], cfg.max_answer_words)
        if not (kind == "name" and s == 0 and not proper_elsewhere(text, text[sent[0] + s: sent[0] + e]))
    ]
    people = surnames(text, lang)
    candidates = [(sent, span, "person" if kind == "name" and text[span[0]:span[1]] in people else kind)
                  for sent, span, kind in candidates]
    if cfg.answer_kinds:
        candidates = [c for c in candidates if c[2] in cfg.answer_kinds]
    if cfg.numeric_weight == 1.0:
        rng.shuffle(candidates)
    else:  # a weighted random order (Efraimidis & Spirakis): numeric kinds come first more often
        weight = {True: cfg.numeric_weight, False: 1.0}
        keys = [rng.random() ** (1.0 / weight[kind in _NUMERIC_KINDS]) for _, _, kind in candidates]
        candidates = [c for _, c in sorted(zip(keys, candidates), key=lambda kc: -kc[0])]
    if cfg.questions_per_sentence:
        candidates = by_sentence(candidates)
    noisy = cfg.vary_wh or cfg.drop_content_words > 0 or cfg.shuffle_window > 0
    drafts: list[_Draft] = []
    for sent, (a_start, a_end), kind in candidates:
        if len(drafts) >= cfg.questions_per_segment:
            break
        if cfg.questions_per_sentence and sum(d.sentence == sent for d in drafts) >= cfg.questions_per_sentence:
            continue
        sentence = text[sent[0]:sent[1]]
        start, end = a_start - sent[0], a_end - sent[0]
        question = fronted_question(sentence, start, end, kind, lang, cfg) if rng.random() < cfg.fronted else None
        origin = "fronted" if question else cfg.cloze
        if question is None:
            question = in_situ_question(sentence, start, end, kind, lang, cfg) if cfg.cloze == "in-situ" else \
                cloze_question(sentence, start, end, kind, lang, rng, cfg)
        answer = text[a_start:a_end]
        if noisy:
            question = noisy_question(question, question_word(sentence, start, kind, answer, lang), lang, rng, cfg)
        if round_trip(question, answer, text, sent, lang, cfg.min_shared_words):
            drafts.append(_Draft(segment, question, answer, kind, sent, (a_start, a_end), lang, len(drafts), origin))
    return drafts


def surnames(text: str, lang: str) -> set[str]:
    """The last words of the people's names a text writes in full: a text that says "Nikola Tesla" once and then
    "Tesla" is asking "Who" when it asks for "Tesla" (`question_word` alone would say "What" for one word).

    >>> sorted(surnames("Nikola Tesla worked for Thomas Edison at the Edison Machine Works. Tesla left.", "en"))
    ['Edison', 'Tesla']
    """
    out = set()
    for start, end in sentences(text):
        sentence = text[start:end]
        for s, e, kind in answer_candidates(sentence):
            span = sentence[s:e]
            if kind == "name" and " " in span and question_word(sentence, s, kind, span, lang) == _WH[lang]["person"]:
                out.add(span.split()[-1])
    return out


def by_sentence(candidates: list[tuple]) -> list[tuple]:
    """Candidates ``(sentence, span, kind)`` regrouped by sentence: each sentence's candidates together, in their
    order, the sentences in the order of their first candidate.

    >>> by_sentence([((0, 9), (1, 2), "a"), ((10, 20), (11, 12), "b"), ((0, 9), (3, 4), "c")])
    [((0, 9), (1, 2), 'a'), ((0, 9), (3, 4), 'c'), ((10, 20), (11, 12), 'b')]
    """
    groups: dict[tuple[int, int], list[tuple]] = {}
    for c in candidates:
        groups.setdefault(c[0], []).append(c)
    return [c for group in groups.values() for c in group]


def proper_elsewhere(text: str, name: str) -> bool:
    """Whether a capitalized word that opens a sentence is a name: it has more than one word, or the text also
    writes it capitalized inside a sentence ("Add support for loaders." opens with a verb, not a name).

    >>> proper_elsewhere("Add support for loaders. We add it.", "Add")
    False
    >>> proper_elsewhere("Tesla was born in Smiljan. His father moved Tesla to Gospić.", "Tesla")
    True
    """
    if " " in name:
        return True
    return re.search(rf"(?<=[\w,;:)] ){re.escape(name)}\b", text) is not None


def swap_entity(question: str, evidence: str, pool: Sequence[tuple[str, str]], rng: random.Random) -> str | None:
    """``question`` with one of its names, years or numbers that ``evidence`` holds replaced by another of the same
    kind from ``pool`` (``(span, kind)`` pairs from other segments) that ``evidence`` does not hold; None when there is
    nothing to swap. The question then asks about something the evidence does not say, though it matches it closely.

    >>> swap_entity("When was the game played at Levi's Stadium?", "The game was played at Levi's Stadium in 2016.",
    ...             [("Sun Life Stadium", "name"), ("1985", "year")], random.Random(0))
    'When was the game played at Sun Life Stadium?'
    """
    spans = [(s, e, kind) for s, e, kind in answer_candidates(question) if s > 0 and kind in _SWAPPABLE
             and question[s:e] in evidence]
    rng.shuffle(spans)
    for s, e, kind in spans:
        others = sorted({span for span, k in pool if k == kind and span not in evidence
                         and span.lower() not in question.lower()})
        if others:
            return question[:s] + rng.choice(others) + question[e:]
    return None


_SWAPPABLE = frozenset(("name", "year", "date", "number"))
# words whose opposite turns a question's sense (SQuAD 2.0's "antonym" unanswerables), both ways
_ANTONYMS = {
    "en": dict(pair for a, b in (
        ("first", "last"), ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"),
        ("most", "least"), ("earliest", "latest"), ("before", "after"), ("north", "south"), ("east", "west"),
        ("northern", "southern"), ("eastern", "western"), ("increase", "decrease"), ("increased", "decreased"),
        ("won", "lost"), ("win", "lose"), ("older", "younger"), ("oldest", "youngest"), ("longest", "shortest"),
        ("larger", "smaller"), ("higher", "lower"), ("more", "less"), ("early", "late"), ("best", "worst"),
        ("major", "minor"), ("maximum", "minimum"), ("upper", "lower"), ("inside", "outside"), ("private", "public"),
        ("accepted", "rejected"), ("allowed", "forbidden"), ("ancient", "modern"), ("began", "ended"),
        ("start", "end"), ("started", "ended"), ("open", "closed"), ("opened", "closed"), ("rise", "fall"),
        ("rose", "fell"), ("gained", "lost"), ("strong", "weak"), ("successful", "unsuccessful"),
    ) for pair in ((a, b), (b, a))),
    "fr": dict(pair for a, b in (
        ("premier", "dernier"), ("première", "dernière"), ("avant", "après"), ("plus", "moins"), ("nord", "sud"),
        ("est", "ouest"), ("hausse", "baisse"), ("public", "privé"), ("publique", "privée"), ("maximum", "minimum"),
        ("début", "fin"), ("ouvert", "fermé"), ("ancien", "nouveau"), ("supérieur", "inférieur"),
    ) for pair in ((a, b), (b, a))),
}
_ANTONYMS["fr"].pop("est")  # "est" is mostly the verb; "ouest" still turns to "est"
# a negation goes after an auxiliary followed by a lower-case word that is not a function word ("was built")
_NEGATABLE = {"en": re.compile(r"\b(?:is|are|was|were|has|have|had|can|could|will|would)\b(?= ([a-z][\w-]+))"),
              "fr": re.compile(r"\b(?:est|sont|était|étaient|a|ont|avait|peut|doit)\b(?= ([a-zà-ÿ][\w-]+))")}
_NEGATIONS = {"en": re.compile(r"\b(?:not|never|no|n't|none|nothing)\b|n't\b", re.I),
              "fr": re.compile(r"\b(?:ne|n|pas|jamais|aucun|aucune|rien)\b", re.I)}


def perturb_question(question: str, evidence: str, lang: str, rng: random.Random) -> str | None:
    """``question`` with its sense turned so that ``evidence`` no longer answers it: one of its words replaced by its
    opposite where the evidence never uses that opposite ("first" -> "last"), or else a negation after an auxiliary
    ("was built" -> "was not built"); None when neither applies (or the question is negated already).

    >>> perturb_question("Who was the first emperor of Rome?", "Augustus was the first emperor of Rome.", "en",
    ...                  random.Random(0))
    'Who was the last emperor of Rome?'
    >>> perturb_question("Which team was defeated in 1810?", "Rome was defeated in 1810.", "en", random.Random(0))
    'Which team was not defeated in 1810?'
    """
    if _NEGATIONS[lang].search(question):
        return None
    said = {w.lower() for w in _WORD.findall(evidence)}
    words = [(m.start(), m.end()) for m in _WORD.finditer(question)]
    swaps = [(s, e) for s, e in words if question[s:e].lower() in _ANTONYMS[lang]
             and _ANTONYMS[lang][question[s:e].lower()] not in said]
    if swaps:
        s, e = rng.choice(swaps)
        opposite = _ANTONYMS[lang][question[s:e].lower()]
        return question[:s] + (opposite.capitalize() if question[s].isupper() else opposite) + question[e:]
    auxiliaries = [m for m in _NEGATABLE[lang].finditer(question) if m.group(1) not in _FUNCTION_WORDS[lang]]
    if not auxiliaries:
        return None
    m = rng.choice(auxiliaries)
    if lang == "fr":  # "a été construit" -> "n'a pas été construit"
        verb = m.group()
        negated = ("n'" if verb[0] in "aeéiou" else "ne ") + verb + " pas"
        return question[:m.start()] + negated + question[m.end():]
    return question[:m.end()] + " not" + question[m.end():]


def _spans_of(sources: Iterable[Source]) -> list[tuple[str, str]]:
    """``(span, kind)`` of the answer candidates in the sources' sentences: what a swapped question asks about
    instead (taken from the segments retrieved for it, so the swap is a plausible near miss)."""
    return [(source.text[a + s: a + e], kind) for source in sources for a, b in sentences(source.text)
            for s, e, kind in answer_candidates(source.text[a:b])]


def _holds_answer(source: Source, draft: _Draft) -> bool:
    """Whether ``source`` holds the answer in a sentence sharing the question's words (a second piece of evidence)."""
    if draft.answer not in source.text:
        return False
    q_words = content_words(draft.question, draft.lang)
    return any(draft.answer in source.text[a:b] and len(q_words & content_words(source.text[a:b], draft.lang))
               >= 2 for a, b in sentences(source.text))


def _source_row(source: Source, text: str | None = None) -> dict[str, Any]:
    return {"seg_id": source.seg_id, "doc_id": source.doc_id, "title": source.title, "section": source.section,
            "text": source.text if text is None else text, "char_start": source.char_start,
            "char_end": source.char_end, "score": float(source.score)}


def make_examples(
    segments: Iterable[Source],
    retrieve: Callable[[list[str], int], list[list[Source]]],
    cfg: QAConfig | None = None,
    seed: int = 0,
    batch: int = 256,
    rewrite: Callable[[list[_Draft]], list[_Draft]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Training rows for the joint model from corpus ``segments``; ``retrieve(questions, k)`` ranks segments of the
    same corpus for each question (the hard negatives). ``rewrite``, when given, may replace the rules' questions of
    each batch of drafts (`synth_pipeline.writers.QuestionWriter`: a language model's questions, round-tripped) before
    their sources are retrieved. See the module docstring; the row layout is `ROW_FIELDS`."""
    cfg = cfg or QAConfig()
    drafts: list[_Draft] = []
    for segment in segments:
        drafts.extend(draft_questions(segment, cfg, seed))
        if len(drafts) >= batch:
            yield from _examples(rewrite(drafts) if rewrite else drafts, retrieve, cfg, seed)
            drafts = []
    if drafts:
        yield from _examples(rewrite(drafts) if rewrite else drafts, retrieve, cfg, seed)


def _examples(drafts: list[_Draft], retrieve, cfg: QAConfig, seed: int) -> Iterator[dict[str, Any]]:
    ranked = retrieve([d.question for d in drafts], cfg.k + 1)
    for draft, hits in zip(drafts, ranked):
        rng = seeded(seed, draft.segment.seg_id, draft.n, "example")
        gold = draft.segment
        rank = next((i for i, h in enumerate(hits) if h.seg_id == gold.seg_id), None)
        unanswerable = rng.random() < cfg.unanswerable_fraction
        swapped = unanswerable and rng.random() < cfg.swapped_fraction and \
            swap_entity(draft.question, gold.text, _spans_of(h for h in hits if h.seg_id != gold.seg_id), rng)
        # other sources: without the answer, or (answerable examples) holding it where the question's words are
        negatives = [h for h in hits if h.seg_id != gold.seg_id and (
            draft.answer not in h.text or (not unanswerable and _holds_answer(h, draft)))][: cfg.k - 1]
        perturbed = unanswerable and not swapped and cfg.perturbed_fraction > 0 and \
            rng.random() < cfg.perturbed_fraction and perturb_question(draft.question, gold.text, draft.lang, rng)
        near_miss = unanswerable and not swapped and not perturbed and rng.random() < cfg.near_miss_fraction
        rows = [_source_row(h) for h in negatives]
        at = min(rank if rank is not None else len(rows), len(rows))  # the evidence where the retriever put it
        if unanswerable and near_miss:
            a, b = draft.sentence
            cut = (gold.text[:a] + gold.text[b:]).replace("  ", " ").strip()
            if draft.answer in cut or not cut:
                continue
            rows.insert(at, _source_row(gold, cut))
        elif not unanswerable or swapped or perturbed:
            rows.insert(at, _source_row(gold))
        if not rows:
            continue
        kind = "swapped" if swapped else "perturbed" if perturbed else "near-miss" if near_miss else \
            "withheld" if unanswerable else "span"
        relied, quote = [], None
        if not unanswerable:
            gold_at = next(i for i, r in enumerate(rows) if r["seg_id"] == gold.seg_id)
            relied = [gold_at]  # the evidence first; then other sources that hold the answer in context
            relied += [i for i, r in enumerate(rows) if i != gold_at and _holds_answer(Source.from_dict(r), draft)]
            q_start, q_end = clip_quote(gold.text, draft.sentence, *draft.answer_span, cfg.max_quote_words)
            quote = {"source": gold_at, "start": q_start, "end": q_end}
        yield {
            "example_id": f"{gold.seg_id}/{draft.n}",
            "doc_id": gold.doc_id,
            "seg_id": gold.seg_id,
            "lang": draft.lang,
            "question": swapped or perturbed or draft.question,
            "question_origin": draft.origin,
            "answer_kind": draft.kind,
            "answer": draft.answer if not unanswerable else "",
            "answerable": not unanswerable,
            "kind": kind,
            "sources": rows,
            "relied": relied,
            "answer_start": draft.answer_span[0] if not unanswerable else -1,
            "answer_end": draft.answer_span[1] if not unanswerable else -1,
            "quote_source": quote["source"] if quote else -1,
            "quote_start": quote["start"] if quote else -1,
            "quote_end": quote["end"] if quote else -1,
        }


# --------------------------------------------------------------------------------------------------------- Parquet


def _schema():
    import pyarrow as pa

    source = pa.struct([("seg_id", pa.string()), ("doc_id", pa.string()), ("title", pa.string()),
                        ("section", pa.string()), ("text", pa.string()), ("char_start", pa.int64()),
                        ("char_end", pa.int64()), ("score", pa.float32())])
    return pa.schema([
        ("example_id", pa.string()), ("doc_id", pa.string()), ("seg_id", pa.string()), ("lang", pa.string()),
        ("question", pa.string()), ("question_origin", pa.string()), ("answer_kind", pa.string()),
        ("answer", pa.string()), ("answerable", pa.bool_()), ("kind", pa.string()),
        ("sources", pa.list_(source)), ("relied", pa.list_(pa.int32())),
        ("answer_start", pa.int64()), ("answer_end", pa.int64()),
        ("quote_source", pa.int32()), ("quote_start", pa.int64()), ("quote_end", pa.int64()),
    ])


ROW_FIELDS = ("example_id", "doc_id", "seg_id", "lang", "question", "question_origin", "answer_kind", "answer",
              "answerable", "kind", "sources", "relied", "answer_start", "answer_end", "quote_source", "quote_start",
              "quote_end")


def write_examples(rows: Iterable[dict[str, Any]], path: str | Path, cfg: QAConfig, seed: int,
                   extra: dict[str, Any] | None = None) -> int:
    """Write rows to Parquet at ``path`` (atomically), with the config and seed in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": asdict(cfg), "seed": seed, **(extra or {})}
    schema = _schema().with_metadata({PARQUET_META_KEY: json.dumps(meta).encode()})
    rows = list(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def split_by_doc(rows: Sequence[dict[str, Any]], held_out_fraction: float, seed: int):
    """(train, held_out), whole documents on one side only."""
    docs = sorted({r["doc_id"] for r in rows})
    random.Random(f"qa-split:{seed}").shuffle(docs)
    held = set(docs[: round(held_out_fraction * len(docs))])
    return [r for r in rows if r["doc_id"] not in held], [r for r in rows if r["doc_id"] in held]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from collections import Counter

    return {"rows": len(rows), "documents": len({r["doc_id"] for r in rows}),
            "kinds": dict(Counter(r["kind"] for r in rows)),
            "answer_kinds": dict(Counter(r["answer_kind"] for r in rows)),
            "langs": dict(Counter(r["lang"] for r in rows)),
            "multi_source": sum(len(r["relied"]) > 1 for r in rows)}
