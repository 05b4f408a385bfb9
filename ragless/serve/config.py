"""The server's settings: one dataclass, from which `ragless serve` makes its flags (`ragless.config`).

Every limit here is a fact about what the server accepts, not a heuristic: requests past one get a 4xx with the
reason, never a 500 and never a partly written index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragless.ann import AnnSearchConfig
from ragless.components import DEFAULT_ANSWERER, DEFAULT_SEGMENTER

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServeConfig:
    host: str = LOOPBACK  # where to listen; without API keys the server binds to loopback whatever this says
    port: int = 8000  # TCP port (0: any free one, printed at start)
    answerer: str = DEFAULT_ANSWERER  # the joint model checkpoint (name or folder) that answers, or "prompted"
    segmenter: str = DEFAULT_SEGMENTER  # the segmenter of a new index (an existing index keeps the one that made it)
    preload: bool = True  # load the models at start (/readyz says ready once they are), not on the first question
    max_body_bytes: int = 1_048_576  # any request body but a document upload (a question is a few hundred bytes)
    max_upload_bytes: int = 10_485_760  # POST /v1/documents: the whole body, files or JSON documents
    max_documents: int = 100  # documents in one POST /v1/documents
    max_question_chars: int = 2000  # longer questions are refused by the schema, before they are tokenized
    # A question's tokens are counted by SmolLM2's tokenizer (the generator of both answerers) before it is queued:
    # 2000 characters can be 8000 tokens, minutes of the one model worker, and past its 2048 positions.
    max_question_tokens: int = 960  # a question's SmolLM2 tokens: 2048 positions less 4 sources x 192 and ~300 more
    max_k: int = 20  # sources per question (the joint model reads its first JointConfig.k of them)
    filter_candidates: int = 256  # with metadata filters: retrieved first, then filtered, then the best k kept
    queue_size: int = 8  # model jobs (questions, ingestions) waiting behind the running one; more get 429
    request_timeout_s: float = 120.0  # a question or an upload not answered by then gets 504 (queued work is dropped)
    retry_after_s: int = 2  # the Retry-After of a 429 (queue full) or 503 (index busy, models loading)
    ann: AnnSearchConfig = field(default_factory=AnnSearchConfig)  # how an index with an ANN index is searched

    def __post_init__(self):
        """Refuse settings that no request could meet (a ValueError naming the flag: `ragless serve` exits 2)."""
        least = {"max_body_bytes": 1, "max_upload_bytes": 1, "max_documents": 1, "max_question_chars": 1,
                 "max_question_tokens": 1, "max_k": 1, "filter_candidates": 1, "queue_size": 0, "retry_after_s": 0}
        for name, minimum in least.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"--request-timeout-s must be positive, got {self.request_timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be within 0..65535, got {self.port}")
