"""Type stubs for spec._loop._simulate (offline replay of a token stream through a drafter)."""
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from spec.drafters._base import Drafter

class SimResult:
    n_calls: int
    n_generated: int
    n_drafted: int
    n_accepted: int
    mean_accept_len: float
    accept_rate: float
    accept_hist: npt.NDArray[np.int64]
    us_per_call: float
    us_per_call_all: npt.NDArray[np.float64]
    drafts: list[npt.NDArray[np.int32]] | None
    fixed_speedup: float
    policy_speedup: float
    oracle_speedup: float
    step_oracle_speedup: float
    policy_mean_accept_len: float
    oracle_mean_accept_len: float
    def __init__(
        self,
        *,
        n_calls: int,
        n_generated: int,
        n_drafted: int,
        n_accepted: int,
        accept_hist: npt.NDArray[np.int64],
        us_per_call_all: npt.NDArray[np.float64],
        drafts: list[npt.NDArray[np.int32]] | None = None,
        fixed_speedup: float = ...,
        policy_speedup: float = ...,
        oracle_speedup: float = ...,
        step_oracle_speedup: float = ...,
        policy_mean_accept_len: float = ...,
        oracle_mean_accept_len: float = ...,
    ) -> None: ...
    def as_dict(self) -> dict[str, Any]: ...

def simulate(
    drafter: Drafter | Callable[[], Drafter],
    tokens: npt.ArrayLike,
    *,
    n_max: int,
    prompt_len: int = 0,
    record: bool = False,
    seq_id: int = 0,
    cost_table: Mapping[int, float] | Sequence[float] | None = None,
) -> SimResult: ...
