"""Prompt-lookup drafting in numpy: the usual pure-Python baseline for n-gram drafters.

Semantics of llama-cpp-python's ``LlamaPromptLookupDecoding(max_ngram_size, num_pred_tokens)``
(after apoorvumang/prompt-lookup-decoding), with ``ids`` = every token in the context including
the one just sampled:

* try n-gram sizes ``n = min(max_ngram_size, len(ids) - 1)`` down to ``min_ngram_size`` (1);
* the pattern is ``ids[-n:]``; find every start ``j`` with ``ids[j:j+n] == pattern``;
* take the **earliest** ``j`` whose continuation ``ids[j+n : j+n+num_pred_tokens]`` is non-empty
  (this skips the pattern's own occurrence at the end; a continuation may run up to and include
  the last token) and return it;
* nothing found at any size: an empty array.

How llama.cpp's ngram-simple (:class:`spec.NgramSimple`) differs, for ``size_n = n``,
``size_m = num_pred_tokens``: it takes the **most recent** match, never falls back to shorter
n-grams, never matches at position 0, only copies history tokens (the continuation stops before
the just-sampled token), drafts nothing shorter than ``n`` tokens and nothing before the context
holds more than ``n + m + 1`` tokens. ``latest=True, min_ngram_size=n`` gives the first two of
those semantics here so that the two can be compared draft for draft.

``method`` picks how the matches are found, with identical results:

* ``"windows"``: one 2-D comparison of all length-``n`` sliding windows against the pattern, then
  ``all(axis=1)`` — the formulation llama-cpp-python uses, with its O(len·n) temporaries;
* ``"shifted"``: ``n`` shifted 1-D comparisons AND-ed together (fewer temporaries; a stronger
  numpy baseline).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_EMPTY = np.zeros(0, dtype=np.intc)


def _match_starts(ids: np.ndarray, n: int, method: str) -> np.ndarray:
    """Every start j (ascending) with ids[j:j+n] == ids[-n:]."""
    pattern = ids[-n:]
    if method == "windows":
        hits = (sliding_window_view(ids, n) == pattern).all(axis=1)
    else:
        count = len(ids) - n + 1
        hits = ids[:count] == pattern[0]
        for k in range(1, n):
            hits &= ids[k:k + count] == pattern[k]
    return np.flatnonzero(hits)


def prompt_lookup(ids, max_ngram_size: int = 2, num_pred_tokens: int = 10, *,
                  min_ngram_size: int = 1, latest: bool = False,
                  method: str = "windows") -> np.ndarray:
    """The draft for ``ids`` (see the module docstring); a view into ``ids`` or an empty array."""
    if method not in ("windows", "shifted"):
        raise ValueError(f"method must be 'windows' or 'shifted', got {method!r}")
    if max_ngram_size < 1 or min_ngram_size < 1 or num_pred_tokens < 1:
        raise ValueError("max_ngram_size, min_ngram_size and num_pred_tokens must be >= 1")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    length = ids.shape[0]
    for n in range(min(max_ngram_size, length - 1), min_ngram_size - 1, -1):
        starts = _match_starts(ids, n, method)
        # Every start but the pattern's own (j = length - n) has a non-empty continuation.
        starts = starts[starts < length - n]
        if starts.size:
            j = int(starts[-1] if latest else starts[0]) + n
            return ids[j:min(j + num_pred_tokens, length)]
    return _EMPTY


class PromptLookup:
    """Callable drafter object in the shape of ``LlamaPromptLookupDecoding``: ``draft = pl(ids)``."""

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10, *,
                 method: str = "windows"):
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens
        self.method = method

    def __call__(self, ids) -> np.ndarray:
        return prompt_lookup(ids, self.max_ngram_size, self.num_pred_tokens, method=self.method)
