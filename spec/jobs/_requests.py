"""Requests of a batch job, shared by ``python -m spec batch`` and :mod:`spec.ray`: per-request
parameters checked one by one (a bad request is reported, the others go on), prompts tokenized
and fitted to the context, then generated through :meth:`spec.Engine.iter_batch`."""
from __future__ import annotations

from typing import Hashable, Iterator

from spec._runtime._errors import ParamError, RequestError
from spec._loop._params import SAMPLING_KEYS, Sampling

#: Generation parameters a request may set (besides its prompt).
PARAM_KEYS = ("max_tokens", *SAMPLING_KEYS, "stop")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_params(params: dict, prefix: str = "") -> dict:
    """Validate generation parameters (the keys present among :data:`PARAM_KEYS`); returns them
    normalised (stop as a list). Raises ValueError naming the first bad one (``prefix`` is put
    before its name, e.g. ``--`` for options). The sampling ones are checked by building the
    :class:`~spec._loop._params.Sampling` the engine will take."""
    out = dict(params)

    def named(name: str, reason: str) -> str:
        return f"{prefix}{name.replace('_', '-')} {reason}" if prefix else f"{name} {reason}"

    if "max_tokens" in params:
        v = params["max_tokens"]
        if not is_int(v) or v < 0:
            raise ValueError(named("max_tokens", f"must be an integer >= 0, got {v!r}"))
    try:
        sampling = Sampling(**{k: params[k] for k in SAMPLING_KEYS if k in params})
    except ParamError as e:
        raise ValueError(named(e.name, e.reason)) from None
    out.update({k: getattr(sampling, k) for k in SAMPLING_KEYS if k in params})
    if "stop" in params:
        v = params["stop"]
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(named("stop", "must be a non-empty string or a list of non-empty "
                                           f"strings, got {v!r}"))
        out["stop"] = list(stops)
    return out


def fit(engine, requests: list, defaults: dict) -> tuple[list, list]:
    """Tokenize each request's prompt and check that it fits the engine's context with its
    ``max_tokens``. ``requests`` holds ``(key, params)`` pairs (params already checked, without
    defaults). Returns ``(ready, rejected)``: ``(key, params)`` with the defaults filled in and
    the prompt as token ids, and ``(key, reason)``."""
    ready, rejected = [], []
    n_window = engine.ctx.n_ctx
    for key, params in requests:
        p = {**defaults, **params}
        try:
            tokens = engine.tokenize_prompt(p["prompt"])
        except ValueError as e:             # includes text that is not valid Unicode
            rejected.append((key, f"prompt: {e}"))
            continue
        if tokens.size + p["max_tokens"] > n_window:
            rejected.append((key, f"prompt ({tokens.size} tokens) + max_tokens "
                                  f"({p['max_tokens']}) exceed the context window "
                                  f"n_ctx={n_window}"))
            continue
        p["prompt"] = tokens
        ready.append((key, p))
    return ready, rejected


def generate(engine, ready: list, *, n_parallel: int, order: str,
             on_start=None) -> Iterator[tuple[Hashable, object, str | None]]:
    """Generate the ``(key, params)`` requests of :func:`fit`; yields ``(key, Result, None)`` as
    each finishes, and ``(key, None, reason)`` for a request the engine rejects before
    generating (a case :func:`fit` did not foresee: it is dropped and the rest go on).
    ``ready`` is consumed: what is left in it was not generated. ``on_start`` is called each
    time generation (re)starts."""
    while ready:
        started = False
        try:
            if on_start is not None:
                on_start()
            for i, result in engine.iter_batch([p for _, p in ready], n_parallel=n_parallel,
                                               order=order):
                started = True
                yield ready[i][0], result, None
            ready.clear()
        except RequestError as e:
            # iter_batch checks every request before generating anything
            if started or not 0 <= e.index < len(ready):
                raise
            key, _ = ready.pop(e.index)
            yield key, None, e.reason
