"""Type stubs for spec.ngram._chain (chains of drafters)."""
from typing import Sequence

from spec.ngram._base import Drafter

STAT_KEYS: tuple[str, ...]

class DrafterChain(Drafter):
    stages: tuple[Drafter, ...]
    names: tuple[str, ...]
    n_min: tuple[int, ...]
    n_max: tuple[int, ...]
    def __init__(self, stages: Sequence[Drafter], names: Sequence[str] | None = None,
                 n_min: int | Sequence[int] = 0, n_max: int | Sequence[int] = 0) -> None: ...
    def reset(self) -> None: ...
    def stage_stats(self) -> list[dict]: ...
    def format_stats(self) -> str: ...
    def print_stats(self) -> None: ...
