"""Keeps credentials out of text: a registry of live secrets and a logging filter that masks
them in every record of the ``async_jobs`` logger, whatever put them there (a server can echo
a token back in a status or an error message)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

__all__ = [
    "MASK",
    "RedactingFilter",
    "get_logger",
    "redact",
    "register_secret",
    "unregister_secret",
]

MASK = "***"
#: Shorter strings are not masked: no real credential is this short, and masking, say, "t"
#: everywhere would garble every message.
MIN_SECRET_LENGTH = 8
_live: Counter[str] = Counter()


def register_secret(secret: str | None) -> None:
    """Mask ``secret`` in log records until it is unregistered as often as registered."""
    if secret and len(secret) >= MIN_SECRET_LENGTH:
        _live[secret] += 1


def unregister_secret(secret: str | None) -> None:
    """Undo one :func:`register_secret`."""
    if secret and _live[secret] > 0:
        _live[secret] -= 1
        if not _live[secret]:
            del _live[secret]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets`` and every registered secret replaced by ``***``."""
    for secret in (*secrets, *_live):
        if len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with every registered secret masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _live:
            message = record.getMessage()
            masked = redact(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (``async_jobs`` or a child), masking secrets in its records: a
    filter on ``async_jobs`` alone would not see the records of its children."""
    found = logging.getLogger(name)
    if _FILTER not in found.filters:
        found.addFilter(_FILTER)
    return found


get_logger("async_jobs")
