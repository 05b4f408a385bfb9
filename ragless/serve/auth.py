"""API keys as bearer tokens, with two scopes: ``read`` (ask, list and read documents) and ``admin`` (also add and
delete documents).

Keys come from a file (``--api-keys FILE``: one ``KEY SCOPE`` per line, ``#`` comments and blank lines ignored) or
from the environment (``RAGLESS_API_KEYS``: the same entries separated by newlines or commas). Only the SHA-256
digest of each key is kept in memory; a presented token is hashed and compared with every digest by
`hmac.compare_digest`, all of them every time, so the time taken says nothing about which key or how much of it
matched. Keys never appear in a log line, an error message or a response.

    keys = KeyRing.parse("0123456789abcdef0123 read\\nfedcba9876543210fedc admin")
    keys.scope_of("0123456789abcdef0123")      # "read"
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

SCOPES = ("read", "admin")  # each scope allows what the ones before it allow
ENV_VAR = "RAGLESS_API_KEYS"
MIN_KEY_CHARS = 16  # a guessable key is no key: refuse short ones at start


class APIKeyError(ValueError):
    """A key file or variable that cannot be used; the message names the line, never the key."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The configured keys, as (digest, scope) pairs."""

    def __init__(self, entries: list[tuple[str, str]]):
        if not entries:
            raise APIKeyError("no API keys given")
        self._entries = [(_digest(key), scope) for key, scope in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, text: str, where: str = "API keys") -> KeyRing:
        """Keys from ``KEY SCOPE`` entries, one per line (or comma-separated); errors name the entry's number."""
        entries = []
        for n, line in enumerate(text.replace(",", "\n").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise APIKeyError(f"{where}, entry {n}: expected 'KEY SCOPE' (scope: {' or '.join(SCOPES)})")
            key, scope = parts
            if scope not in SCOPES:
                raise APIKeyError(f"{where}, entry {n}: unknown scope {scope!r} (known: {', '.join(SCOPES)})")
            if len(key) < MIN_KEY_CHARS:
                raise APIKeyError(f"{where}, entry {n}: a key needs at least {MIN_KEY_CHARS} characters")
            entries.append((key, scope))
        return cls(entries)

    def scope_of(self, token: str | None) -> str | None:
        """The scope of ``token``, or None when it is no configured key; constant time in the token's content."""
        if not token:
            return None
        presented = _digest(token)
        found = None
        for digest, scope in self._entries:  # no early exit: every digest is compared every time
            if hmac.compare_digest(presented, digest) and found is None:
                found = scope
        return found


def allows(scope: str | None, needed: str) -> bool:
    """Whether a key of ``scope`` may do what needs ``needed``: admin may do everything read may."""
    return scope is not None and SCOPES.index(scope) >= SCOPES.index(needed)


def load_keys(path: str | Path | None = None, environ: dict[str, str] | None = None) -> KeyRing | None:
    """The keys of ``path`` when given, else of ``RAGLESS_API_KEYS`` when set; None when neither configures any."""
    environ = os.environ if environ is None else environ
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise APIKeyError(f"cannot read API keys from {path}: {getattr(e, 'strerror', None) or e}") from None
        return KeyRing.parse(text, str(path))
    text = environ.get(ENV_VAR, "")
    return KeyRing.parse(text, ENV_VAR) if text.strip() else None
