"""``Batch``: the tokens of one decode call, as the reference's ``LlamaBatch``.

The reference loop builds a batch, decodes it on the target and hands the same batch to the
session: ``ctx.decode(batch); session.process(batch)``. A Batch carries what ``Context.decode``
takes as arguments, validated on construction (the token ids against the vocabulary are
checked by the decode).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Batch:
    """Tokens of one sequence decoded together.

    tokens : 1-D int32 token ids (non-empty, non-negative; stored as a read-only copy).
    pos : position of the first token, or -1 for after the sequence's last position.
    seq_id : the sequence.
    all_logits : logits (and hidden-state rows) for every token, not only the last.
    """
    tokens: np.ndarray
    pos: int = -1
    seq_id: int = 0
    all_logits: bool = False

    def __post_init__(self):
        t = self.tokens
        if isinstance(t, (str, bytes)):
            raise TypeError("tokens must be token ids, got a string (tokenize it first)")
        arr = np.asarray(t)
        if arr.dtype == object or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"tokens must be integer token ids, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("tokens is empty")
        if arr.min() < 0 or arr.max() > np.iinfo(np.int32).max:
            raise ValueError(f"token ids must be in [0, 2**31), got {arr.min()} .. {arr.max()}")
        arr = np.array(arr, dtype=np.int32, copy=True)
        arr.setflags(write=False)
        object.__setattr__(self, "tokens", arr)
        for name in ("pos", "seq_id"):
            v = getattr(self, name)
            if isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got bool")
            try:
                v = operator.index(v)
            except TypeError:
                raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None
            object.__setattr__(self, name, v)
        if self.pos < -1:
            raise ValueError(f"pos must be >= 0, or -1 for after the sequence's last position, "
                             f"got {self.pos}")
        if self.seq_id < 0:
            raise ValueError(f"seq_id must be >= 0, got {self.seq_id}")
        if not isinstance(self.all_logits, (bool, np.bool_)):
            raise TypeError(f"all_logits must be a bool, got {type(self.all_logits).__name__}")
        object.__setattr__(self, "all_logits", bool(self.all_logits))

    def __len__(self):
        return int(self.tokens.shape[0])

    def __repr__(self):
        return (f"Batch({len(self)} tokens, pos={self.pos}, seq_id={self.seq_id}, "
                f"all_logits={self.all_logits})")
