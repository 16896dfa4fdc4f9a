"""Nearest-name suggestions for misspelt ops, attributes, fields and layers."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: object, options: Iterable[str]) -> str | None:
    """The option most like ``word``, if it is a name close enough to be a likely typo
    (anything else a user wrote, a number or a list, suggests nothing)."""
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(word: object, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    hint = closest(word, options)
    return f" Did you mean {hint!r}?" if hint else ""
