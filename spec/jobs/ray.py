"""Batch generation on Ray Data, past one machine (``pip install "spec[ray]"``).

Each actor of a Ray Data actor pool loads the model once, builds one :class:`spec.Engine` and
runs every batch of rows it receives through the engine's multi-sequence loop
(:meth:`spec.Engine.iter_batch`, ``n_parallel`` sequences per decode)::

    import ray
    import spec.ray

    ds = ray.data.read_json("prompts.jsonl")             # a "prompt" column, optional "id", ...
    out = spec.ray.generate(ds, model="default", drafter="suffix", n_parallel=8,
                            concurrency=4, threads_per_actor=2)
    out.write_parquet("results/")

Input columns: ``prompt`` (required), optional ``id``, ``max_tokens``, ``temperature``,
``top_k``, ``top_p``, ``min_p``, ``seed`` and ``stop`` (a null value takes the default); other
columns pass through. Output columns: :data:`OUTPUT_COLUMNS`. A row that cannot be generated
(no prompt, a bad parameter, a prompt that does not fit the context) gets the reason in
``error`` and no text; the job goes on.

Retries are safe: an actor that dies is restarted and its unfinished batch retried by Ray; the
drafter forgets what earlier batches taught it before each batch, so a retried batch drafts and
generates as its first attempt did (greedy rows, and sampled rows with a ``seed`` when
``n_draft`` is fixed; ``n_draft="auto"`` follows measured timings).
"""
from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass

try:
    import pyarrow as pa
    import ray
    import ray.data
except ImportError as e:                              # pragma: no cover - depends on the install
    raise ImportError(f'spec.ray needs Ray Data: pip install "spec[ray]" ({e})') from None

from spec._runtime._core import MAX_SEQ
from spec._loop._counters import StepCounters
from spec.jobs._requests import PARAM_KEYS, check_params, fit, generate as _generate

logger = logging.getLogger(__name__)

#: Columns added to every row (an input column of the same name is replaced).
OUTPUT_SCHEMA = pa.schema([
    ("text", pa.string()), ("tokens", pa.list_(pa.int32())), ("n_prompt", pa.int64()),
    ("n_generated", pa.int64()), ("finish_reason", pa.string()), ("n_steps", pa.int64()),
    ("n_drafted", pa.int64()), ("n_accepted", pa.int64()), ("decode_s", pa.float64()),
    ("error", pa.string()),
])
OUTPUT_COLUMNS = tuple(OUTPUT_SCHEMA.names)
_STAT_COLUMNS = ("n_prompt", "n_generated", "n_steps", "n_drafted", "n_accepted", "decode_s")
_INT_PARAMS = ("max_tokens", "top_k", "seed")
ORDERS = ("longest_first", "input")


def _node() -> str:
    try:
        return f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"
    except Exception:                                 # not in a Ray worker
        return socket.gethostname()


def _model_path(model) -> str:
    """A model name or path → the file on this node; FileNotFoundError naming the node."""
    from spec.models import resolve
    try:
        return str(resolve(model))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"model {os.fspath(model)!r} is not available on node {_node()}: {e} (a model path "
            f"must exist on every node, e.g. on shared storage; a model name needs its package "
            f"installed on every node)") from None


def _row_params(row: dict) -> dict:
    """A row's request: its prompt and the parameters it sets. ValueError says what is wrong."""
    prompt = row.get("prompt")
    if prompt is None:
        raise ValueError("missing 'prompt'")
    if not isinstance(prompt, str):
        raise ValueError(f"'prompt' must be a string, got {type(prompt).__name__}")
    params = {"prompt": prompt}
    for key in PARAM_KEYS:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue                                  # null: the default
        if key in _INT_PARAMS and isinstance(value, float) and value.is_integer():
            value = int(value)                        # an integer column with nulls, read as float
        params[key] = value
    return check_params(params)


class BatchGenerator:
    """The callable class :func:`generate` gives ``Dataset.map_batches``: one per actor.

    The constructor loads the model and builds the engine (``model`` is a name from
    ``spec.models`` or a GGUF path that must exist on the actor's node; ``drafter`` a drafter
    name, or a callable returning a new drafter, e.g. a :class:`spec.PythonDrafter` subclass,
    called on the actor since drafter objects do not travel between processes); each call takes a
    ``pyarrow.Table`` of rows and returns it with the :data:`OUTPUT_COLUMNS`. Generation
    defaults (``max_tokens`` ... ``stop``) apply to rows that do not set them.
    """

    def __init__(self, model="default", drafter="suffix", *, n_draft="auto", n_parallel=8,
                 n_ctx=None, n_threads=None, order="longest_first", max_tokens=128,
                 temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, stop=()):
        from spec.engine import Engine
        self.defaults = check_params(dict(max_tokens=max_tokens, temperature=temperature,
                                          top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                                          stop=list(stop or ())))
        self.n_parallel, self.order = n_parallel, order
        if callable(drafter):
            drafter = drafter()
        self.engine = Engine(_model_path(model), drafter=drafter, n_draft=n_draft, n_ctx=n_ctx,
                             n_threads=n_threads, n_parallel=n_parallel)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        errors: dict[int, str] = {}
        requests = []
        for i, row in enumerate(rows):
            try:
                requests.append((i, _row_params(row)))
            except ValueError as e:
                errors[i] = str(e)
        ready, rejected = fit(self.engine, requests, self.defaults)
        errors.update(rejected)
        results = {}
        if ready:
            self.engine.reset_drafter()               # a retried batch drafts as the first try
            for i, result, reason in _generate(self.engine, ready, n_parallel=self.n_parallel,
                                               order=self.order):
                if reason is not None:
                    errors[i] = reason
                else:
                    results[i] = result
        return _with_outputs(batch, rows, results, errors)


def _with_outputs(batch: pa.Table, rows: list, results: dict, errors: dict) -> pa.Table:
    columns = {name: [] for name in OUTPUT_COLUMNS}
    for i in range(len(rows)):
        r = results.get(i)
        if r is None:
            for name in OUTPUT_COLUMNS:
                columns[name].append(None)
            columns["error"][-1] = errors.get(i, "not generated")
            continue
        st = r.stats
        columns["text"].append(r.text)
        columns["tokens"].append(r.tokens)
        columns["finish_reason"].append(r.finish_reason)
        for name in _STAT_COLUMNS:
            columns[name].append(getattr(st, name))
        columns["error"].append(None)
    out = batch.drop_columns([c for c in OUTPUT_COLUMNS if c in batch.column_names])
    for field in OUTPUT_SCHEMA:
        out = out.append_column(field, pa.array(columns[field.name], type=field.type))
    return out


def _positive_int(name: str, value, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or (
            upper is not None and value > upper):
        bound = f" in [1, {upper}]" if upper is not None else " > 0"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return value


def generate(ds: "ray.data.Dataset", *, model="default", drafter="suffix", n_draft="auto",
             n_parallel: int = 8, n_ctx: int | None = None, concurrency: int = 1,
             threads_per_actor: int = 1, batch_size: int | None = None,
             order: str = "longest_first", max_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int = 0,
             stop=()) -> "ray.data.Dataset":
    """``ds`` with the :data:`OUTPUT_COLUMNS` generated by ``concurrency`` actors.

    Each actor reserves ``threads_per_actor`` CPUs (so Ray does not oversubscribe the cores)
    and decodes with as many llama.cpp threads; it takes ``batch_size`` rows at a time (default
    ``4 * n_parallel``, so finished sequences' slots are refilled within a batch). An actor that
    dies is restarted and its batch retried, as Ray Data does for actor pools by default
    (``max_restarts=-1``, ``max_task_retries=-1``); outputs are the same either way (see the
    module docstring). Two things to know about the input ``ds``: when the actors take every
    CPU of the cluster, read tasks wait for a CPU forever, so read it first
    (``ds.materialize()``) or read with ``num_cpus=0``; and a block goes to one actor, so give
    it at least ``concurrency`` blocks (``ds.repartition(n)``). ``python -m spec batch --ray``
    does both. The arguments are checked here, before anything runs; the model on each actor
    as it starts.
    """
    check_params(dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      min_p=min_p, seed=seed, stop=list(stop or ())))
    _positive_int("n_parallel", n_parallel, MAX_SEQ)
    _positive_int("concurrency", concurrency)
    _positive_int("threads_per_actor", threads_per_actor)
    batch_size = _positive_int("batch_size", batch_size if batch_size is not None
                               else 4 * n_parallel)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not (n_draft == "auto" or (isinstance(n_draft, int) and not isinstance(n_draft, bool)
                                  and n_draft > 0)):
        raise ValueError(f"n_draft must be a positive integer or 'auto', got {n_draft!r}")
    model = os.fspath(model)
    return ds.map_batches(
        BatchGenerator,
        fn_constructor_kwargs=dict(model=model, drafter=drafter, n_draft=n_draft,
                                   n_parallel=n_parallel, n_ctx=n_ctx,
                                   n_threads=threads_per_actor, order=order,
                                   max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, min_p=min_p, seed=seed, stop=list(stop or ())),
        batch_size=batch_size, batch_format="pyarrow",
        # One batch in flight per actor: a batch queued behind a busy actor would wait while
        # another actor (still loading its model when the batches were handed out) sits idle.
        compute=ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1),
        num_cpus=threads_per_actor)


@dataclass
class Summary(StepCounters):
    """Totals of generated rows (see :func:`summarize`)."""
    rows: int = 0
    generated: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0


def summarize(table: pa.Table) -> Summary:
    """Totals of a table holding the :data:`OUTPUT_COLUMNS` (e.g. a job's output files)."""
    import pyarrow.compute as pc
    s = Summary(rows=table.num_rows)
    if table.num_rows == 0:
        return s
    s.errors = table.num_rows - pc.sum(pc.is_null(table["error"]).cast(pa.int64())).as_py()
    s.generated = s.rows - s.errors
    for name, attr in (("n_prompt", "prompt_tokens"), ("n_generated", "generated_tokens"),
                       ("n_steps", "n_steps"), ("n_drafted", "n_drafted"),
                       ("n_accepted", "n_accepted")):
        setattr(s, attr, int(pc.sum(table[name]).as_py() or 0))
    return s
