"""Proving that a divergence from plain greedy decoding is a rounding flip, not a bug.

llama.cpp's kernels round differently for different batch shapes, so greedy speculation (which
verifies many rows per decode) can pick another token than plain decoding (one row per decode)
where the top two logits nearly tie. A fixed margin threshold cannot tell that from a bug. This
module can: a generation run with ``trace=True`` records every decode's rows and every KV edit
on its context (:meth:`spec.Context.record`); :func:`replay_argmax` replays that log on a fresh
context with the same parameters — the same batches, rows, positions and sequences, so the same
kernels and the same rounding — and returns the target's argmax at the row that chose a given
token. If the speculative token is that argmax, the engine did what the target asked in the
batch it ran; the divergence is the batch shape's rounding.

The replay does not trust the engine's KV bookkeeping: before each decode it checks that every
sequence in the batch continues its KV memory exactly (its rows start right after its last
stored position and are consecutive), so a stale or missing cell is reported, not reproduced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spec._runtime._core import Context, Model


@dataclass(frozen=True)
class DecodeTrace:
    """What ``trace=True`` recorded of one request: the context's decode log
    (:meth:`spec.Context.recorded`), where this request's sequence lives in it, and the
    parameters of the context it ran on."""
    ops: list = field(repr=False)
    seq_id: int
    first_op: int       # this request's operations start here (its KV reset, then its prompt)
    n_prompt: int
    context: dict       # n_ctx, n_batch, n_seq_max, n_threads


@dataclass(frozen=True)
class Replayed:
    """The target's choice at one row, recomputed in the batch the run decoded it in."""
    token: int          # argmax of the row's logits
    margin: float       # its lead over the runner-up
    n_rows: int         # rows of that batch
    op: int             # index of that decode in the log


def context_params(ctx: Context) -> dict:
    """The parameters a replay context needs to run the same kernels as ``ctx``."""
    return dict(n_ctx=ctx.n_ctx, n_batch=ctx.n_batch, n_seq_max=ctx.n_seq_max,
                n_threads=ctx.n_threads)


def _row_seqs(op) -> list[tuple[int, ...]]:
    """Each row's sequences in a decode op (several in a tree verify's shared rows)."""
    return list(op[2]) if len(op) > 2 else [(int(q),) for q in op[1][:, 2]]


def _handed_to(seq: int, row_seqs: tuple, pos: int, edits: list) -> bool:
    """Whether the KV edits that followed a decode gave ``seq`` the cell a branch's row at
    ``pos`` wrote (tree verification accepted that branch)."""
    return any(e[0] == "copy" and e[1] in row_seqs and e[2] == seq and e[3] <= pos
               and (e[4] < 0 or pos < e[4]) for e in edits)


def _target_op(trace: DecodeTrace, pos: int) -> tuple[int, int]:
    """The last decode of the request holding the traced sequence's row at ``pos`` with
    logits (in a tree verify: the accepted branch's row, whose cell the sequence was handed),
    and that row's index among the batch's logits rows."""
    next_decode = len(trace.ops)
    for k in range(len(trace.ops) - 1, trace.first_op - 1, -1):
        op = trace.ops[k]
        if op[0] != "decode":
            continue
        rows, edits = op[1], trace.ops[k + 1:next_decode]
        next_decode = k
        seqs = _row_seqs(op)
        hits = np.nonzero((rows[:, 1] == pos) & (rows[:, 3] != 0))[0]
        # an accepted branch's row, else the sequence's own (a rejected one is decoded again
        # later, so the search from the end meets the accepted one first)
        chosen = ([i for i in hits if trace.seq_id not in seqs[i]
                   and _handed_to(trace.seq_id, seqs[i], pos, edits)]
                  or [i for i in hits if trace.seq_id in seqs[i]])
        if chosen:
            return k, int(np.count_nonzero(rows[:chosen[0], 3]))
    raise ValueError(f"the trace holds no decode of sequence {trace.seq_id} with logits at "
                     f"position {pos}")


def _check_continues(ctx: Context, op, k: int) -> None:
    rows, seqs = op[1], _row_seqs(op)
    for seq in sorted(set().union(*seqs)):
        pos = rows[[seq in row for row in seqs], 1]
        expected = ctx.kv_pos_max(int(seq)) + 1
        if pos[0] != expected or np.any(np.diff(pos) != 1):
            raise AssertionError(
                f"decode #{k} of the log does not continue sequence {seq}'s KV memory: its rows "
                f"are at positions {pos[0]}..{pos[-1]} but the memory holds positions up to "
                f"{expected - 1} (a stale or missing cell in the run)")


def replay_argmax(model: Model, trace: DecodeTrace, index: int) -> Replayed:
    """Recompute, in the exact batch composition of the traced run, the target's choice of
    the request's ``index``-th generated token (the row at position ``n_prompt + index - 1``).

    Replays the log on a fresh context with the recorded parameters up to the last decode that
    held that row. Raises AssertionError if a decode does not continue its sequences' KV memory.
    """
    pos = trace.n_prompt + index - 1
    target, out_row = _target_op(trace, pos)
    with Context(model, **trace.context) as ctx:
        for k, op in enumerate(trace.ops[:target + 1]):
            kind = op[0]
            if kind == "decode":
                _check_continues(ctx, op, k)
                ctx.decode_rows(op[1], op[2] if len(op) > 2 else None)
            elif kind == "remove":
                ctx.kv_remove(*op[1:])
            elif kind == "copy":
                ctx.kv_copy(*op[1:])
            else:
                ctx.kv_clear()
        row = ctx.logits()[out_row].copy()
    top2 = np.partition(row, -2)[-2:]
    return Replayed(token=int(np.argmax(row)), margin=float(top2[1] - top2[0]),
                    n_rows=len(trace.ops[target][1]), op=target)


@dataclass(frozen=True)
class Divergence:
    """The first token where a run left the reference run, both recomputed exactly."""
    index: int                  # generated-token index of the first difference
    reference_token: int
    token: int
    reference_replayed: Replayed
    replayed: Replayed

    @property
    def proven(self) -> bool:
        """Each run's token is the target's argmax in the batch that run decoded it in: the
        batch shapes rounded a near-tie differently; neither run is wrong."""
        return (self.replayed.token == self.token
                and self.reference_replayed.token == self.reference_token)


def first_divergence(a, b) -> int:
    """Index of the first differing token of two token arrays (-1 if equal; the shorter
    length if one is a prefix of the other)."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    if diff.size:
        return int(diff[0])
    return -1 if len(a) == len(b) else n


def explain_divergence(model: Model, reference, result) -> Divergence | None:
    """Compare a traced run with a traced reference run (for instance speculative against plain
    greedy, both ``trace=True``): None if their tokens are equal, else the first divergence
    with both runs' choices there replayed in their exact batches. Raises ValueError if one
    run's tokens are a prefix of the other's (nothing to replay: one stopped early)."""
    i = first_divergence(reference.tokens, result.tokens)
    if i < 0:
        return None
    if i >= min(len(reference.tokens), len(result.tokens)):
        raise ValueError(f"one run stopped early: {len(reference.tokens)} vs "
                         f"{len(result.tokens)} tokens, equal up to there")
    if reference.decode_trace is None or result.decode_trace is None:
        raise ValueError("both runs need trace=True")
    return Divergence(i, int(reference.tokens[i]), int(result.tokens[i]),
                      replay_argmax(model, reference.decode_trace, i),
                      replay_argmax(model, result.decode_trace, i))
