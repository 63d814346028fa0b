"""Type stubs for spec.drafters._upstream (llama.cpp's n-gram drafters behind spec's Drafter interface)."""
import os
from typing import Any, Final

from spec.drafters._base import Drafter

SUPPORTED_TYPES: Final[tuple[str, ...]]
DEFAULTS: Final[dict[str, dict[str, Any]]]

def set_log_verbosity(verbosity: int) -> None: ...
def get_log_verbosity() -> int: ...
def supported_types() -> tuple[str, ...]: ...

class LlamaDrafter(Drafter):
    @property
    def type_name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def params(self) -> dict[str, Any]: ...
    def __init__(
        self,
        type_name: str,
        *,
        n_seq: int = 1,
        size_n: int = ...,
        size_m: int = ...,
        min_hits: int = ...,
        n_match: int = ...,
        n_max: int = ...,
        n_min: int = ...,
        n_draft: int = ...,
        static_path: str | os.PathLike[str] | None = ...,
        dynamic_path: str | os.PathLike[str] | None = ...,
    ) -> None: ...
    def reset(self) -> None: ...
