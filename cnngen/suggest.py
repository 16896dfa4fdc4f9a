"""Nearest-name suggestions for misspelt ops, attributes, fields and layers."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option most like ``word``, if one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    hint = closest(word, options)
    return f" Did you mean {hint!r}?" if hint else ""
