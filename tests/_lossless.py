"""Greedy losslessness, checked so that it cannot excuse a bug.

Speculative greedy output must equal plain greedy output token for token, except where the two
runs' batch shapes round a near-tie differently. At the first divergence both runs' recorded
decodes are replayed (spec.divergence): each run's token must be the target's argmax in the exact
batch that run decoded it in. A wrong acceptance, a stale KV cell or a drafter bug fails this;
only a rounding flip passes.
"""
from __future__ import annotations

from spec.divergence import explain_divergence, first_divergence  # noqa: F401 (re-export)


def assert_lossless(model, plain, other) -> bool:
    """Equal tokens, or a first divergence proven to be a rounding flip. Both results must
    come from runs with ``trace=True``. Returns True if the runs diverged."""
    d = explain_divergence(model, plain, other)
    if d is None:
        return False
    assert d.replayed.token == d.token, (
        f"divergence at token {d.index}: the speculative run emitted {d.token}, but the "
        f"target's argmax in the batch it decoded ({d.replayed.n_rows} rows) is "
        f"{d.replayed.token} (margin {d.replayed.margin:.4f}): a bug, not rounding")
    assert d.reference_replayed.token == d.reference_token, (
        f"divergence at token {d.index}: replaying the plain run gives "
        f"{d.reference_replayed.token}, not its token {d.reference_token}: the replay is not "
        f"exact on this machine")
    return True
