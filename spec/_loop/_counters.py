"""Speculation counters and the rates derived from them: one definition for a generation's
:class:`spec.Stats` and the totals of batch jobs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepCounters:
    n_steps: int = 0              # verify decodes
    n_drafted: int = 0
    n_accepted: int = 0

    @property
    def accept_rate(self) -> float:
        return self.n_accepted / self.n_drafted if self.n_drafted else 0.0

    @property
    def mean_accept_len(self) -> float:
        """Tokens emitted per verify step (accepted drafts + 1)."""
        return (self.n_accepted + self.n_steps) / self.n_steps if self.n_steps else 0.0


def totals_line(s: dict) -> str:
    """The last line of a batch job's summary (``s``: a summary dict)."""
    return (f"generated {s['generated_tokens']} tokens in {s['wall_s']:.2f} s "
            f"({s['tok_s']:.1f} tok/s); drafted {s['n_drafted']}, accepted "
            f"{s['n_accepted']} ({100 * s['accept_rate']:.1f} %), "
            f"{s['mean_accept_len']:.2f} tok/step")
