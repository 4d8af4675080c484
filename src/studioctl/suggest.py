""" "Did you mean …?": the one home of the close-match suggestions in error messages.

Recipes, recipe imports and settings all answer an unknown key, id or variable with the
nearest known one. difflib is imported when a suggestion is needed: only on an error path.
"""

from __future__ import annotations

from collections.abc import Iterable


def closest(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` choices that look like ``word``, best first (difflib's similarity ratio)."""
    import difflib

    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``.

    A dotted word (``gateway.prot``) with no close match is tried again by its last part, so a
    right key in the wrong section still finds its name.
    """
    options = list(choices)
    close = closest(word, options, cutoff=cutoff)
    if not close and "." in word:
        close = closest(word.rsplit(".", 1)[1], options, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
