"""Type stubs for spec.drafters.ngram._map (compiled)."""
from typing import Any

from spec.drafters._base import Drafter

class NgramMap(Drafter):
    """Shared implementation of NgramMapK and NgramMapK4V (abstract)."""

    @property
    def size_n(self) -> int: ...
    @property
    def size_m(self) -> int: ...
    @property
    def min_hits(self) -> int: ...
    @property
    def key_only(self) -> bool: ...
    def reset(self) -> None: ...
    def _state(self, seq_id: int = 0) -> dict[str, Any]: ...

class NgramMapK(NgramMap):
    """llama.cpp's ngram-map-k: hashed n-gram lookup, draft length capped by the last acceptance."""

    def __init__(self, size_n: int = 12, size_m: int = 48, min_hits: int = 1) -> None: ...

class NgramMapK4V(NgramMap):
    """llama.cpp's ngram-map-k4v: like ngram-map-k, drafting only when one continuation dominates."""

    def __init__(self, size_n: int = 12, size_m: int = 48, min_hits: int = 1) -> None: ...
