"""The public generation API: :class:`Engine` over the compiled speculative loop.

>>> engine = spec.Engine("default", drafter="suffix")          # doctest: +SKIP
>>> result = engine.generate("def fib(n):", max_tokens=64)      # doctest: +SKIP
>>> result.text, result.stats.mean_accept_len                   # doctest: +SKIP
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, asdict
from typing import Iterator, Literal, Sequence as Seq

import numpy as np

from spec._runtime._core import MAX_SEQ, Context, Model, as_tokens
from spec._loop._counters import StepCounters
from spec._loop import _simulate
from spec._loop._engine import N_BRANCH_SEQS, Loop, Sequence
from spec._runtime._errors import (ClosedError, ContextOverflowError, EngineBusyError, RequestError,
                          SessionInitError)
from spec._loop._params import SAMPLING_KEYS, Drafting, Sampling
from spec._loop._stops import StopScanner
from spec.divergence import DecodeTrace, context_params
from spec import models as _models

logger = logging.getLogger("spec")

# name -> (module, class, default parameters). Defaults follow llama.cpp's except where its
# defaults draft nothing on short inputs (n=12, m=48 need ~61 tokens of history).
DRAFTERS = {
    "ngram-simple": ("spec.drafters.ngram._simple", "NgramSimple", {"size_n": 3, "size_m": 16}),
    "ngram-map-k": ("spec.drafters.ngram._map", "NgramMapK", {"size_n": 3, "size_m": 16}),
    "ngram-map-k4v": ("spec.drafters.ngram._map", "NgramMapK4V", {"size_n": 3, "size_m": 16}),
    "ngram-mod": ("spec.drafters.ngram._mod", "NgramMod", {"n_match": 8, "n_max": 16, "n_min": 2}),
    "ngram-cache": ("spec.drafters.ngram._cache", "NgramCache", {}),
    # deep enough for long drafts where the output copies its input (a match of k tokens
    # drafts at most max_depth - k)
    "suffix": ("spec.drafters._suffix", "SuffixTree", {"max_depth": 64}),
}
LLAMA_PREFIX = "llama:"
# Model-based drafters: sessions over llama.cpp's common_speculative (spec.sessions). "draft",
# "eagle3" and "dflash" need drafter_params={"draft_model": PATH}; "mtp" uses the target's own
# NextN head. drafter_params may also hold n_min, p_min and n_rs_seq (the target context's
# recurrent rollback depth; 0 = checkpoint path on recurrent / hybrid targets). One of them may
# be a stage of a chain ("ngram-mod,draft"): it then takes SESSION_PARAMS from drafter_params,
# the chain the rest (n_min, n_max per stage).
SESSION_DRAFTERS = {"draft": "DraftModelSession", "mtp": "MtpSession", "eagle3": "Eagle3Session",
                    "dflash": "DFlashSession"}
SESSION_PARAMS = ("draft_model", "draft_n_gpu_layers", "p_min", "n_rs_seq")


def _make_session(engine, kind, params):
    from spec import sessions
    draft_model = params.pop("draft_model", None)
    n_min = int(params.pop("n_min", 0))
    p_min = float(params.pop("p_min", 0.0))
    draft_n_gpu_layers = params.pop("draft_n_gpu_layers", None)
    if params:
        raise TypeError(f"unknown drafter_params for {kind!r}: {', '.join(sorted(params))}")
    ctx = engine.ctx
    if kind == "mtp":
        if draft_model is not None:
            raise ValueError("the 'mtp' drafter uses the target's own head: no draft_model")
        if not engine.model.n_layer_nextn:
            raise sessions.SessionInitError(
                f"model {engine.model.path!r} lacks MTP heads (no NextN layers): the 'mtp' "
                f"drafter needs a model with nextn_predict_layers > 0")
        if not engine.model.load_mtp:
            raise sessions.SessionInitError(
                "the 'mtp' drafter needs the model loaded with Model(path, load_mtp=True)")
        draft_ctx = Context(engine.model, n_ctx=ctx.n_ctx, n_batch=ctx.n_batch,
                            n_threads=engine._n_threads, n_seq_max=ctx.n_seq_max, ctx_type="mtp")
    else:
        if draft_model is None:
            raise ValueError(f"the {kind!r} drafter needs drafter_params={{'draft_model': PATH}}")
        if isinstance(draft_model, Model):
            if draft_n_gpu_layers is not None:
                raise ValueError("draft_n_gpu_layers applies to a draft model given by path; "
                                 "pass n_gpu_layers to Model(...) for a loaded one")
            dm = draft_model
        else:
            dm = Model(os.fspath(draft_model), n_gpu_layers=int(draft_n_gpu_layers or 0))
        # EAGLE-3 / DFlash draft contexts read the target context (llama.cpp's ctx_other)
        draft_ctx = Context(dm, n_ctx=ctx.n_ctx, n_batch=ctx.n_batch,
                            n_threads=engine._n_threads, n_seq_max=ctx.n_seq_max,
                            ctx_other=ctx if kind in ("eagle3", "dflash") else None)
    engine.draft_ctx = draft_ctx
    cls = getattr(sessions, SESSION_DRAFTERS[kind])
    return cls(ctx, draft_ctx, ctx.n_seq_max, engine.n_draft, n_min=n_min, p_min=p_min)


class _Turns:
    """One generation at a time per engine (they share its context). Other threads wait their
    turn; the thread whose generation is unfinished (an open stream or iter_batch) gets
    EngineBusyError rather than a deadlock."""

    def __init__(self):
        self._lock = threading.Lock()
        self.owner: int | None = None       # the thread holding the turn

    @contextmanager
    def turn(self):
        if self.owner == threading.get_ident():
            raise EngineBusyError(
                "this thread's previous generation (a stream or iter_batch) is unfinished: "
                "exhaust or close() it first")
        with self._lock:
            self.owner = threading.get_ident()
            try:
                yield
            finally:
                self.owner = None


def _exclusive(method):
    """Run a generator method as the engine's one generation at a time (see _Turns). While it
    runs, its contexts refuse other threads' calls and its drafter other engines (see
    Engine._hold); a close() that arrives while it is suspended ends it with ClosedError and
    frees the engine after."""
    @functools.wraps(method)
    def generation(self, *args, **kwargs):
        with self._turns.turn():
            try:
                if self.ctx.closed:
                    raise ClosedError("engine is closed")
                self._hold(threading.get_ident())
                for item in method(self, *args, **kwargs):
                    yield item
                    if self._close_pending:
                        raise ClosedError("engine is closed (closed while this generation was "
                                          "unfinished)")
                    if self._held_by != threading.get_ident():    # resumed in another thread
                        self._hold(threading.get_ident())
            finally:
                self._hold(None)
                if self._close_pending:
                    self._free()
    return generation


def _check_n_parallel(n_parallel) -> None:
    if isinstance(n_parallel, bool) or not isinstance(n_parallel, (int, np.integer)):
        raise TypeError(f"n_parallel must be an integer, got {n_parallel!r}")
    if not 0 < n_parallel <= MAX_SEQ:
        raise ValueError(f"n_parallel must be in [1, {MAX_SEQ}] (llama.cpp's LLAMA_MAX_SEQ), "
                         f"got {n_parallel}")


def _stop_list(stop) -> list[str]:
    """``stop`` (a string, or an iterable of them, or None) as a list of non-empty strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    try:
        stops = list(stop)
    except TypeError:
        raise TypeError(f"stop must be a string or a list of strings, got {stop!r}") from None
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError("stop must hold non-empty strings")
    return stops


def drafter_names() -> list[str]:
    """Every name :func:`make_drafter` accepts (``none`` means plain decoding)."""
    return ["none", *DRAFTERS, *SESSION_DRAFTERS, *(LLAMA_PREFIX + n for n in DRAFTERS if n.startswith("ngram"))]


def _canonical(name: str) -> str:
    """The reference's underscore spellings (``ngram_simple``, ``llama:ngram_map_k4v``) are
    aliases of spec's names."""
    prefix = LLAMA_PREFIX if name.startswith(LLAMA_PREFIX) else ""
    return prefix + name[len(prefix):].replace("_", "-")


def _chain_items(drafter):
    """The stages of a chain given as a list or as comma-separated names (names in their
    canonical spelling, drafter objects as given); None when ``drafter`` is not a chain."""
    if isinstance(drafter, str) and "," in drafter:
        return [_canonical(n.strip()) for n in drafter.split(",")]
    if isinstance(drafter, (list, tuple)):
        return [_canonical(n) if isinstance(n, str) else n for n in drafter]
    return None


def _build_chain(items, params, session=None):
    """A DrafterChain of ``items`` (names or drafters); a model-based name is ``session``'s
    stage (built by the engine, which alone has the target context)."""
    from spec.drafters._base import Drafter
    from spec.drafters._chain import DrafterChain
    stages, names = [], []
    for n in items:
        if isinstance(n, Drafter):
            stages.append(n)
            names.append(type(n).__name__)
            continue
        if n in SESSION_DRAFTERS and session is not None:
            stages.append(session)
        elif n == "none":
            raise ValueError("'none' cannot be a stage of a drafter chain")
        elif n in SESSION_DRAFTERS:
            raise ValueError(f"{n!r} cannot be a stage of a chain built by make_drafter: a "
                             f"model-based stage needs the target context, so build the chain "
                             f"through Engine(model, drafter=[..., {n!r}], drafter_params=...)")
        else:
            stages.append(make_drafter(n))
        names.append(n)
    return DrafterChain(stages, names=names, **params)


def _drop_stage(items, name, params):
    """``items`` without the stage ``name``, and chain ``params`` without its per-stage
    entries (``n_min`` / ``n_max`` given per stage)."""
    i = items.index(name)
    params = {k: (v[:i] + v[i + 1:] if isinstance(v, (list, tuple)) and len(v) == len(items)
                  else v) for k, v in params.items()}
    return items[:i] + items[i + 1:], params


def make_drafter(name, **params):
    """A drafter by name: one of :func:`drafter_names` (``llama:<type>`` wraps llama.cpp's own),
    or a chain of them: a list of names or one string of comma-separated names
    (``"suffix,ngram-mod"``) builds a :class:`spec.DrafterChain` (``params`` then go to the
    chain: ``n_min``, ``n_max``, per stage or for all). A chain with a model-based stage is
    built by :class:`Engine`."""
    items = _chain_items(name)
    if items is not None:
        return _build_chain(items, params)
    if not isinstance(name, str):
        raise TypeError(f"drafter name must be a str, got {type(name).__name__}")
    name = _canonical(name)
    if name == "none":
        return None
    if name.startswith(LLAMA_PREFIX):
        kind = name[len(LLAMA_PREFIX):]
        if kind not in DRAFTERS or not kind.startswith("ngram"):
            raise ValueError(f"unknown drafter {name!r}; known: {', '.join(drafter_names())}")
        from spec.drafters._upstream import LlamaDrafter
        return LlamaDrafter(kind, **{**DRAFTERS[kind][2], **params})
    if name in SESSION_DRAFTERS:
        raise ValueError(f"drafter {name!r} is a model-based session over a target context: "
                         f"use Engine(model, drafter={name!r}, drafter_params=...) or "
                         f"spec.sessions.{SESSION_DRAFTERS[name]}")
    if name not in DRAFTERS:
        raise ValueError(f"unknown drafter {name!r}; known: {', '.join(drafter_names())}")
    module, cls, defaults = DRAFTERS[name]
    return getattr(importlib.import_module(module), cls)(**{**defaults, **params})


def simulate(drafter, tokens, *, n_max, prompt_len=0, record=False, seq_id=0, cost_table=None):
    """:func:`spec._loop._simulate.simulate`, where ``drafter`` may also be a name (with
    ``cost_table``: each priced replay then gets a fresh :func:`make_drafter` of that name)."""
    if isinstance(drafter, str) and cost_table is not None:
        drafter = functools.partial(make_drafter, drafter)
    return _simulate.simulate(drafter, tokens, n_max=n_max, prompt_len=prompt_len, record=record,
                              seq_id=seq_id, cost_table=cost_table)


simulate.__doc__ = _simulate.simulate.__doc__


@dataclass
class Stats(StepCounters):
    """Counters and timings of one generation. ``n_generated`` counts the output tokens; the
    step counters (``n_steps``, ``n_drafted``, ``n_accepted``) count what the steps did,
    including tokens a final step accepted past a stop string (which are not output)."""
    n_prompt: int = 0
    n_generated: int = 0
    accept_by_pos: list = field(default_factory=list)   # acceptance rate at draft position i
    accept_hist: list = field(default_factory=list)     # steps by number of accepted drafts
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0         # decode time of the verify batches
    sample_s: float = 0.0         # verification and sampling kernels
    decode_s: float = 0.0         # wall time after prefill
    n_branch_rows: int = 0        # tree verification: branch rows verified (beside the drafts)
    n_branch_accepted: int = 0    # tokens accepted through a branch (counted in n_accepted)
    #: with a DrafterChain, per stage: its counters and times in this generation (the
    #: reference's terms, see DrafterChain.stage_stats); empty otherwise and for batch requests,
    #: whose stages serve every sequence at once (the chain keeps the job's totals)
    stages: list = field(default_factory=list)

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second after prefill. The first token comes from the prefill's logits, so
        the decode phase produced n_generated - 1 (as llama.cpp's "eval time" counts)."""
        return (self.n_generated - 1) / self.decode_s if self.decode_s > 0 and self.n_generated > 1 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(accept_rate=self.accept_rate, mean_accept_len=self.mean_accept_len,
                 decode_tok_s=self.decode_tok_s)
        return d

    def format(self) -> str:
        lines = [
            f"prompt {self.n_prompt} tok, generated {self.n_generated} tok in {self.n_steps} steps",
            f"drafted {self.n_drafted}, accepted {self.n_accepted} "
            f"({100 * self.accept_rate:.1f} %), {self.mean_accept_len:.2f} tok/step",
            f"prefill {self.prefill_s * 1e3:.1f} ms | draft {self.draft_s * 1e3:.1f} ms | "
            f"verify {self.verify_s * 1e3:.1f} ms | sample {self.sample_s * 1e3:.1f} ms",
            f"decode {self.decode_s:.3f} s, {self.decode_tok_s:.1f} tok/s",
        ]
        if self.stages:
            from spec.drafters._chain import format_stages
            lines.append(format_stages(self.stages))
        if self.accept_by_pos:
            lines.append("acceptance by draft position: "
                         + " ".join(f"{100 * r:.0f}%" for r in self.accept_by_pos))
        return "\n".join(lines)


@dataclass
class Result:
    """The output of :meth:`Engine.generate`."""
    text: str
    tokens: np.ndarray            # generated token ids (int32), without the prompt
    stats: Stats
    margins: np.ndarray | None = None   # top-1 minus top-2 logit per token (trace=True)
    #: the decodes and KV edits that produced it (trace=True), for spec.divergence.replay_argmax
    decode_trace: DecodeTrace | None = None
    #: "stop" (an end-of-generation token or a stop string ended it) or "length" (max_tokens)
    finish_reason: str = "stop"

    def print_stats(self) -> None:
        print(self.stats.format())


def _finish_reason(scanner: StopScanner, sq: Sequence, max_tokens: int) -> str:
    if not scanner.found and sq.n_generated >= max_tokens:
        return "length"
    return "stop"


class Engine:
    """Speculative generation with a target model and a drafter.

    Parameters
    ----------
    model : Model, str or os.PathLike
        A loaded :class:`Model`, a GGUF path, or a name from ``spec.models`` ("default").
    drafter : str, list, Drafter or None
        A name from :func:`drafter_names`, a drafter object, or None for plain decoding; a
        chain (:class:`spec.DrafterChain`) as comma-separated names or a list of names and
        drafter objects, tried in order. A chain may hold one model-based stage (``draft``,
        ``mtp``, ``eagle3``, ``dflash``), typically last: ``drafter="ngram-mod,draft"`` with
        ``drafter_params={"draft_model": PATH}``. An ``mtp`` stage on a model without NextN
        layers is dropped with a warning (alone, ``mtp`` is refused).
    n_draft : int or "auto"
        Draft length; "auto" chooses each step's draft lengths (≤ ``n_draft_max``) from each
        sequence's recent acceptance, its current run of correctly drafted tokens (a long copy
        run is trusted to continue, so drafts grow quickly while the output copies its input
        and fall back at the first miss) and the measured time of each verify batch size (on a
        CPU some sizes cost less than smaller ones), so speculation that does not pay falls
        back to plain decoding.
    n_draft_max : int
        Upper bound on the draft length with ``n_draft="auto"`` (default 64, or ``n_batch - 1``
        if smaller: one verify batch holds a draft and the token before it).
    draft_cost : float
        Prior verify cost of one drafted token in plain decode steps, used until batch sizes
        have been measured and for sizes not measured lately.
    tree : bool
        Tree verification: a verify batch also carries up to three of the drafter's
        alternative branches where its measured cost says they pay (greedy requests of a
        model-free drafter; the suffix tree drafts alternatives). The context gets three more
        sequence ids for them. Off by default: see bench/RESULTS.md "Tree verification".
    n_ctx, n_batch, n_threads : int
        Context options (see :class:`Context`).
    n_gpu_layers : int
        Layers to offload when the model is given by path or name (see :class:`Model`; a
        session's draft model takes ``drafter_params={"draft_n_gpu_layers": n}``).
    drafter_params : dict
        Extra constructor arguments for a drafter given by name. For a chain: ``n_min``,
        ``n_max`` (see :class:`spec.DrafterChain`), and for its model-based stage those of
        ``SESSION_PARAMS`` (``draft_model``, ``draft_n_gpu_layers``, ``p_min``, ``n_rs_seq``).
    """

    N_DRAFT_MAX = Drafting.N_DRAFT_MAX      # the default bound of "auto" drafts

    def __init__(self, model, drafter="suffix", *, n_draft="auto", n_draft_max=None,
                 draft_cost=0.43, tree=False, n_ctx=None, n_batch=512, n_threads=None,
                 n_parallel=1, n_gpu_layers=0, drafter_params=None):
        items = _chain_items(drafter)
        in_chain = [n for n in items or () if isinstance(n, str) and n in SESSION_DRAFTERS]
        if len(in_chain) > 1:
            raise ValueError(f"a drafter chain holds at most one model-based stage, got "
                             f"{', '.join(map(repr, in_chain))}")
        session_kind = (in_chain[0] if in_chain else drafter if isinstance(drafter, str)
                        and drafter in SESSION_DRAFTERS else None)
        if isinstance(model, Model):
            if n_gpu_layers:
                raise ValueError("n_gpu_layers applies to a model given by path or name; pass "
                                 "it to Model(...) for a loaded one")
            self.model = model
        else:
            # the MTP head is loaded only on request
            self.model = Model(_models.resolve(model), load_mtp=session_kind == "mtp",
                               n_gpu_layers=n_gpu_layers)
        self.drafting = Drafting(n_draft, n_draft_max, draft_cost, tree)
        if not isinstance(n_batch, (int, np.integer)) or isinstance(n_batch, bool) or n_batch <= 0:
            raise ValueError(f"n_batch must be a positive int, got {n_batch!r}")
        self.n_draft = self.drafting.longest(int(n_batch))    # the draft buffers' length
        _check_n_parallel(n_parallel)
        self.draft_ctx = None
        self._turns = _Turns()
        self._held_by = None            # thread id of the generation holding the engine
        self._close_pending = False
        params = dict(drafter_params or {})
        if in_chain:
            # the model-based stage's parameters; the chain takes the rest
            session_params = {k: params.pop(k) for k in SESSION_PARAMS if k in params}
            if session_kind == "mtp" and not self.model.n_layer_nextn:
                # As the reference: ik_llama.cpp's common_speculative_prepare_mtp_runtime
                # (common/speculative.cpp) logs "MTP speculative stage requested, but model has
                # 0 NextN layers. Removing MTP from the configured stage chain." and removes the
                # stage (params.remove_stage_type); the other stages run.
                items, params = _drop_stage(items, "mtp", params)
                logger.warning("model %r has no NextN layers (MTP heads): the 'mtp' stage is "
                               "dropped from the drafter chain", self.model.path)
                if not items:
                    raise SessionInitError(f"model {self.model.path!r} lacks MTP heads (no NextN "
                                           f"layers): the 'mtp' drafter needs a model with "
                                           f"nextn_predict_layers > 0")
                session_kind = None
                in_chain = []
        else:
            session_params = params
        if session_kind is not None:
            self.drafter = None     # built below, once the target context exists
        elif drafter is None or isinstance(drafter, (str, list, tuple)):
            self.drafter = make_drafter(items if items is not None else drafter or "none",
                                        **params)
        else:
            from spec.drafters._base import Drafter
            if not isinstance(drafter, Drafter):
                raise TypeError(f"drafter must be a name, a spec Drafter or None, got "
                                f"{type(drafter).__name__}")
            self.drafter = drafter
        self.drafter_name = (drafter if isinstance(drafter, str) else repr(self.drafter)
                             if isinstance(drafter, (list, tuple)) else type(drafter).__name__)
        self._n_threads = n_threads
        self._n_ctx_given = n_ctx is not None
        self._session_kind = session_kind
        self._session_in_chain = bool(in_chain)
        self._n_rs_seq = int(session_params.pop("n_rs_seq", 0)) if session_kind else 0
        if tree and session_kind is not None:
            raise ValueError(f"tree=True needs a model-free drafter; {session_kind!r} drafts "
                             f"with a model")
        # tree verification's branches take the context's last sequence ids
        self._n_branch_seqs = N_BRANCH_SEQS if tree else 0
        self.ctx = Context(self.model, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
                           n_seq_max=n_parallel + self._n_branch_seqs, n_rs_seq=self._n_rs_seq)
        self._session_params = session_params
        if session_kind is not None:
            session = _make_session(self, session_kind, dict(session_params))
            if in_chain:
                try:
                    self.drafter = _build_chain(items, params, session)
                except BaseException:
                    session.close()
                    self.draft_ctx.close()
                    self.ctx.close()
                    raise
            else:
                self.drafter = session
            if self.draft_ctx is not None and "draft_model" in session_params:
                # a rebuilt session (see _new_context) reuses the loaded draft model
                session_params["draft_model"] = self.draft_ctx.model
        self._loops = {}

    def close(self):
        """Free the engine's contexts. A generation running in another thread finishes first;
        one this thread left unfinished (an open stream or iter_batch) raises ClosedError when
        resumed, and the contexts are freed as it ends."""
        if self._turns.owner == threading.get_ident():
            self._close_pending = True
            return
        with self._turns.turn():
            self._free()

    def reset_drafter(self) -> None:
        """Forget what the drafter learned from earlier requests (the suffix tree's global tree,
        ngram-mod's table, ...), so the next generation drafts from its own requests only. A job
        whose batches may be retried calls it before each batch (:mod:`spec.ray` does): a retried
        batch then drafts, and so generates, exactly as its first attempt did."""
        if self.drafter is not None:
            self.drafter.reset()

    def _hold(self, thread_id) -> None:
        """Reserve the contexts for the generation running in ``thread_id`` and the drafter for
        this engine (None: free them). Raises EngineBusyError, holding nothing, if another
        engine's generation is using the drafter."""
        if thread_id is None and self._held_by is None:
            return                      # nothing held (e.g. the drafter was busy)
        if self.drafter is not None and self._held_by is None:
            self.drafter._hold(self)
        self._held_by = thread_id
        for ctx in (self.ctx, self.draft_ctx):
            if ctx is not None:
                ctx._hold(thread_id)
        if thread_id is None and self.drafter is not None:
            self.drafter._hold(None)

    def _free(self):
        self._close_pending = False
        self.ctx.close()
        if self.draft_ctx is not None:
            self.draft_ctx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers --

    def _loop(self, trace: bool) -> Loop:
        loop = self._loops.get(trace)
        if loop is None:
            loop = Loop(self.ctx, self.drafter, self.drafting, trace=trace)
            self._loops[trace] = loop
        return loop

    def tokenize_prompt(self, prompt) -> np.ndarray:
        if isinstance(prompt, (str, bytes)):
            tokens = self.model.tokenize(prompt)
        else:
            tokens = as_tokens(prompt, "prompt")
        if tokens.size == 0:
            raise ValueError("prompt is empty")
        bad = (tokens < 0) | (tokens >= self.model.n_vocab)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"prompt[{i}] = {tokens[i]} is not a token id of this model "
                             f"(vocabulary size {self.model.n_vocab})")
        return tokens

    def _request_tokens(self, prompt, max_tokens) -> np.ndarray:
        """Check a request's length; its prompt's tokens."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
            raise TypeError(f"max_tokens must be an integer, got {max_tokens!r}")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        tokens = self.tokenize_prompt(prompt)
        if tokens.size + max_tokens > self.ctx.n_ctx:
            raise ContextOverflowError(
                f"prompt ({tokens.size} tokens) + max_tokens ({max_tokens}) exceed the context "
                f"window n_ctx={self.ctx.n_ctx}")
        return tokens

    def _stage_stats(self):
        from spec.drafters._chain import DrafterChain
        return self.drafter.stage_stats() if isinstance(self.drafter, DrafterChain) else None

    def _stats(self, sq: Sequence, loop: Loop, decode_s: float) -> Stats:
        raw = sq.stats()
        timers = loop.timers
        by_pos = [float(a) / d if d else 0.0 for a, d in zip(raw["accept_by_pos"], raw["draft_by_pos"])
                  if d]
        return Stats(n_prompt=sq.n_prompt, n_generated=sq.n_generated, n_steps=raw["n_steps"],
                     n_drafted=raw["n_drafted"], n_accepted=raw["n_accepted"],
                     accept_by_pos=by_pos, accept_hist=raw["accept_hist"].tolist(),
                     prefill_s=sq.prefill_s, draft_s=timers["draft_s"],
                     verify_s=timers["verify_s"], sample_s=timers["sample_s"], decode_s=decode_s,
                     n_branch_rows=raw["n_branch_rows"],
                     n_branch_accepted=raw["n_branch_accepted"])

    # -- public API --

    def generate(self, prompt, *, max_tokens=128, temperature=0.0, top_k=0, top_p=1.0,
                 min_p=0.0, seed=None, stop: Seq[str] = (), trace=False) -> Result:
        """Generate up to ``max_tokens`` tokens after ``prompt`` (text or token ids).

        ``temperature`` 0 is greedy; otherwise the target distribution (top-k → top-p → min-p →
        temperature) is sampled losslessly through rejection sampling. ``stop`` strings end the
        generation: the text ends before the first one, the tokens with the one completing it
        (tokens a speculative step accepted past it are dropped; the step counters keep them).
        ``trace`` records per-token margins and the decode log (``Result.decode_trace``,
        see :mod:`spec.divergence`).
        """
        sampling = Sampling(temperature, top_k, top_p, min_p, seed)
        result = None
        for piece in self._run(prompt, max_tokens, sampling, stop, trace, streaming=False):
            if isinstance(piece, Result):
                result = piece
        return result

    def stream(self, prompt, *, max_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
               seed=None, stop: Seq[str] = ()) -> Iterator[str]:
        """Yield text pieces as tokens are accepted (same arguments as :meth:`generate`)."""
        sampling = Sampling(temperature, top_k, top_p, min_p, seed)
        for piece in self._run(prompt, max_tokens, sampling, stop, False, streaming=True):
            if isinstance(piece, str):
                yield piece

    @_exclusive
    def _run(self, prompt, max_tokens, sampling: Sampling, stop, trace, streaming):
        stop = _stop_list(stop)
        tokens = self._request_tokens(prompt, max_tokens)
        loop = self._loop(trace)
        sq = loop.sequence(0, tokens, int(max_tokens), sampling, trace=trace)
        loop.reset_timers()
        stages_before = self._stage_stats()
        self.ctx.record(trace)      # off also drops a log a failed traced run left
        loop.start(sq)
        t0 = time.perf_counter()
        scanner = StopScanner(self.model.token_to_piece, stop)
        chunked = streaming or bool(stop)
        while True:
            new = scanner.feed(sq.tokens)
            if streaming and new:
                yield new
            if scanner.found:
                sq.finish(scanner.n_keep)       # tokens past the stop string are not output
            if sq.done:
                break
            loop.run([sq], 1 if chunked else -1)
        tail = scanner.close()
        if streaming and tail:
            yield tail
        decode_s = time.perf_counter() - t0
        loop.end(sq)
        stats = self._stats(sq, loop, decode_s)
        if stages_before is not None:
            from spec.drafters._chain import stage_delta
            stats.stages = stage_delta(self._stage_stats(), stages_before)
        decode_trace = None
        if trace:
            decode_trace = DecodeTrace(self.ctx.recorded(), 0, 0, sq.n_prompt,
                                       context_params(self.ctx))
            self.ctx.record(False)
        yield Result(text=scanner.text, tokens=sq.tokens, stats=stats, margins=sq.margins,
                     finish_reason=_finish_reason(scanner, sq, max_tokens),
                     decode_trace=decode_trace)

    # -- batches --

    MAX_AUTO_N_CTX = 32768   # KV cells a default-sized context grows to for a batch job
    _REQUEST_KEYS = {"prompt", "max_tokens", "temperature", "top_k", "top_p", "min_p", "seed",
                     "stop"}

    def _batch_context(self, n_parallel: int) -> None:
        _check_n_parallel(n_parallel)
        if n_parallel > self.ctx.n_batch:
            raise ValueError(f"n_parallel={n_parallel} exceeds n_batch={self.ctx.n_batch}: every "
                             f"step decodes one row per sequence in one batch")
        if self.ctx.n_seq_max - self._n_branch_seqs < n_parallel:
            self._new_context(self.ctx.n_ctx, n_parallel + self._n_branch_seqs)

    def _new_context(self, n_ctx: int, n_seq_max: int) -> None:
        """Replace the target context (and a model-based session with its draft context, which
        are bound to it; in a chain, the session stage only) by one with n_ctx cells for
        n_seq_max sequences."""
        n_batch = self.ctx.n_batch
        self._loops = {}
        if self._session_kind is not None:
            # the session refers to both contexts: free it first
            if self._session_in_chain:
                self.drafter.session.close()
            else:
                self.drafter = None
            self.draft_ctx.close()
            self.draft_ctx = None
        self.ctx.close()
        self.ctx = Context(self.model, n_ctx=n_ctx, n_batch=n_batch, n_seq_max=n_seq_max,
                           n_threads=self._n_threads, n_rs_seq=self._n_rs_seq)
        if self._session_kind is not None:
            session = _make_session(self, self._session_kind, dict(self._session_params))
            if self._session_in_chain:
                self.drafter._replace_session(session)
            else:
                self.drafter = session
        if self._held_by is not None:           # inside a generation: hold what replaced
            held_by, self._held_by = self._held_by, None
            self._hold(held_by)

    def _fit_kv_cells(self, cells: list, n_parallel: int) -> None:
        """Make room for n_parallel requests at once: each holds its prompt + max_tokens cells.

        A context sized by default grows to fit (up to MAX_AUTO_N_CTX cells); one the caller
        sized is kept, with a warning, since requests then wait for cells and fewer run at once.
        """
        need = sum(sorted(cells, reverse=True)[:n_parallel])
        if need <= self.ctx.n_ctx:
            return
        if not self._n_ctx_given and self._session_kind is None:
            n_ctx = min(need, max(self.MAX_AUTO_N_CTX, self.ctx.n_ctx))
            logger.info("growing the context from %d to %d KV cells for %d parallel requests",
                        self.ctx.n_ctx, n_ctx, n_parallel)
            self._new_context(n_ctx, self.ctx.n_seq_max)
            if n_ctx >= need:
                return
        logger.warning("n_ctx=%d holds the prompt + max_tokens of fewer than n_parallel=%d "
                       "requests at once (%d cells needed): requests wait for free cells, so "
                       "fewer run in parallel; pass a larger n_ctx", self.ctx.n_ctx, n_parallel,
                       need)

    ORDERS = ("longest_first", "input")     # the orders batch requests may start in

    @_exclusive
    def iter_batch(self, prompts, *, n_parallel=8, max_tokens=128, temperature=0.0, top_k=0,
                   top_p=1.0, min_p=0.0, seed=0, stop: Seq[str] = (),
                   order: Literal["longest_first", "input"] = "longest_first", trace=False):
        """Generate for many prompts, ``n_parallel`` sequences per decode batch; yields
        ``(index, Result)`` as each request finishes.

        Each item of ``prompts`` is text, token ids, or a dict with ``prompt`` and optional
        per-request ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``seed``,
        ``stop``. Requests are validated before anything is generated. Every step decodes one
        batch holding each active sequence's last token and draft; a finished sequence's slot
        takes the next request, whose prompt is prefilled in chunks of up to n_batch tokens,
        one chunk per step, so the running sequences keep generating meanwhile. The drafter's
        per-sequence state is reset for each request; what it learns across requests (the suffix
        tree's global tree) is kept.

        ``order`` is the order requests start in. ``"longest_first"`` (the default) starts the
        requests reserving the most KV cells (prompt + max_tokens) first: the long ones no longer
        run alone at the end of the job while the other slots sit idle, and the cell budget
        packs better. ``"input"`` starts them in input order. Results are the same either way
        (up to near-ties, as batch composition is); only when each one finishes changes.

        ``trace`` records each result's margins and the job's decode log up to its end
        (``Result.decode_trace``, see :mod:`spec.divergence`; a debugging aid: each result
        copies the log).
        """
        if order not in self.ORDERS:
            raise ValueError(f"order must be one of {self.ORDERS}, got {order!r}")
        if isinstance(prompts, (str, bytes)):
            # iterating it would run one request per character
            raise TypeError("prompts must be a list of prompts, got a single string: wrap it "
                            "in a list")
        defaults = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        min_p=min_p, seed=seed, stop=stop)
        requests = []
        for i, item in enumerate(prompts):
            req = dict(defaults)
            if isinstance(item, dict):
                unknown = set(item) - self._REQUEST_KEYS
                if unknown:
                    raise RequestError(i, f"unknown keys {sorted(unknown)}")
                if "prompt" not in item:
                    raise RequestError(i, "missing 'prompt'")
                req.update(item)
            else:
                req["prompt"] = item
            try:
                req["stop"] = _stop_list(req["stop"])
            except (TypeError, ValueError) as e:
                raise RequestError(i, str(e)) from None
            requests.append(req)
        if not requests:
            return
        self._batch_context(n_parallel)
        # Validate (and tokenize) every request up front; each Sequence, with its buffers for
        # max_tokens, is built when the request starts, so a long job holds only the prompts.
        pending = []
        for i, req in enumerate(requests):
            try:
                sampling = Sampling(*(req[k] for k in SAMPLING_KEYS))
                tokens = self._request_tokens(req["prompt"], req["max_tokens"])
            except (ValueError, TypeError) as e:
                raise RequestError(i, str(e)) from None
            pending.append((i, req, tokens, sampling))
        if order == "longest_first":    # popped from the end: most cells first, ties in input order
            pending.sort(key=lambda p: (p[2].size + p[1]["max_tokens"], -p[0]))
        else:
            pending.reverse()
        self._fit_kv_cells([tokens.size + req["max_tokens"] for _, req, tokens, _ in pending],
                           n_parallel)
        loop = self._loop(trace)
        loop.reset_timers()
        # The KV cache is unified: every active sequence shares the n_ctx cells, and a sequence
        # never holds more than n_prompt + max_tokens of them (drafts are capped by the budget).
        # A request starts only when its cells are free, so no decode can run out of KV slots.
        self.ctx.record(trace)
        self.ctx.kv_clear()
        n_free_cells = self.ctx.n_ctx
        free_slots = list(range(n_parallel - 1, -1, -1))
        active = {}             # slot -> (index, request, Sequence, StopScanner, start time)
        any_stop = any(req["stop"] for req in requests)
        while pending or active:
            while pending and free_slots:
                i, req, tokens, sampling = pending[-1]
                cells = tokens.size + req["max_tokens"]
                if cells > n_free_cells:
                    break                   # wait for running requests to free their cells
                pending.pop()
                n_free_cells -= cells
                slot = free_slots.pop()
                sq = loop.sequence(slot, tokens, int(req["max_tokens"]), sampling, trace=trace)
                first_op = self.ctx.n_recorded
                loop.start(sq, interleave=True)
                scanner = StopScanner(self.model.token_to_piece, req["stop"])
                active[slot] = (i, req, sq, scanner, time.perf_counter(), first_op)
            seqs = [entry[2] for entry in active.values()]
            loop.run(seqs, 1 if any_stop else -1, until_one_done=True)
            for slot, (i, req, sq, scanner, t0, first_op) in list(active.items()):
                if req["stop"] or sq.done:
                    scanner.feed(sq.tokens)
                    if scanner.found:
                        sq.finish(scanner.n_keep)   # tokens past the stop string are not output
                if sq.done:
                    loop.end(sq)
                    self.ctx.kv_remove(slot)
                    n_free_cells += sq.n_prompt + req["max_tokens"]
                    del active[slot]
                    free_slots.append(slot)
                    scanner.close()
                    decode_trace = (DecodeTrace(self.ctx.recorded(), slot, first_op, sq.n_prompt,
                                                context_params(self.ctx)) if trace else None)
                    yield i, Result(text=scanner.text, tokens=sq.tokens,
                                    stats=self._stats(sq, loop, time.perf_counter() - t0),
                                    margins=sq.margins,
                                    finish_reason=_finish_reason(scanner, sq, req["max_tokens"]),
                                    decode_trace=decode_trace)
        if trace:
            self.ctx.record(False)

    def generate_batch(self, prompts, **kwargs) -> list:
        """:meth:`iter_batch` collected into a list of Results in input order."""
        results = {}
        for i, result in self.iter_batch(prompts, **kwargs):
            results[i] = result
        return [results[i] for i in range(len(results))]
