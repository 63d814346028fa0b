"""Hypothesis-driven argument fuzzing of the public API: no input may crash the interpreter.

Every example is a small *program* (a few statements over fresh handles: a Context, an Engine,
a drafter, a session) run in a long-lived worker subprocess (tests/_isolated.py). A statement
may return or raise an ordinary exception; the example fails if the worker dies (signal, abort,
non-zero exit), hangs past its timeout, or a statement raises SystemError, a BaseException that
is not an Exception, or MemoryError for an input that is not huge. The failure message holds the
reason, the worker's last log lines (GGML_ASSERT, faulthandler traceback) and a stand-alone
reproducer script.

Values are generated as Python source (``V``), so a program is its own reproducer. Runs are
derandomized (the same examples on every run, no example database) and sized to about 90 s on a
2-core machine. ``SPEC_FUZZ_STATS=path.json`` writes per-target counts (statements tried,
returned, raised by exception type, crashes) at the end of the module.
"""
from __future__ import annotations

import collections
import json
import os
import struct
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spec.testing
from _isolated import Worker, crash_summary, render, signal_name

try:
    from conftest import BIGRAM, TINY
except ImportError:                      # keep in step with tests/conftest.py
    TINY, BIGRAM = dict(seed=0), dict(seed=3, proj_scale=0.05)

N_VOCAB = 32000              # llama-spm, the tiny models' vocabulary
BIG = 1 << 20                # an integer above this makes a MemoryError acceptable


# SPEC_FUZZ_SCALE=10 runs ten times the examples (a deeper local campaign)
SCALE = float(os.environ.get("SPEC_FUZZ_SCALE", "1"))


# SPEC_FUZZ_RANDOM=1: fresh random examples on each run instead of the fixed ones
RANDOM = os.environ.get("SPEC_FUZZ_RANDOM") == "1"


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), derandomize=not RANDOM, database=None,
                    deadline=None, print_blob=False, suppress_health_check=list(HealthCheck))


# -- values as source code -----------------------------------------------------------------------

class V(NamedTuple):
    """A generated argument: its Python source and whether it is huge (MemoryError allowed)."""
    code: str
    big: bool = False


def lit(x) -> V:
    if isinstance(x, V):
        return x
    if isinstance(x, float):
        if x != x:
            return V("float('nan')")
        if x in (float("inf"), float("-inf")):
            return V(f"float('{x}')")
        return V(repr(x))
    if isinstance(x, bool) or x is None:
        return V(repr(x))
    if isinstance(x, int):
        return V(repr(x), abs(x) > BIG)
    if isinstance(x, (list, tuple)):
        items = [lit(i) for i in x]
        body = ", ".join(i.code for i in items)
        code = f"[{body}]" if isinstance(x, list) else f"({body}{',' if len(items) == 1 else ''})"
        return V(code, any(i.big for i in items))
    if isinstance(x, dict):
        items = [(lit(k), lit(v)) for k, v in x.items()]
        return V("{" + ", ".join(f"{k.code}: {v.code}" for k, v in items) + "}",
                 any(k.big or v.big for k, v in items))
    return V(repr(x))


def vals(*xs) -> st.SearchStrategy:
    return st.sampled_from([lit(x) for x in xs])


NAN, INF = float("nan"), float("inf")
EDGE_INTS = [0, 1, -1, 2, -2, 3, 7, 8, 15, 16, 63, 64, 127, 128, 255, 256, 257, 511, 512, 513,
             1024, 4096, 31999, 32000, 32001, 32767, 32768, 65535, 65536, 2**31 - 2, 2**31 - 1,
             2**31, -2**31, -2**31 - 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, -2**63,
             -2**63 - 1, 2**64, 10**30, -10**30]
EDGE_FLOATS = [NAN, INF, -INF, 0.0, -0.0, 0.5, 1.0, 1.5, -0.5, -1.0, 2.0, 1e-300, 5e-324, 1e308,
               0.999999, 1.0000001, 1e-9, 100.0]
NP_INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                 ">i4", ">i8", "<u8", "intp"]
NP_OTHER_DTYPES = ["bool", "float16", "float32", "float64", "longdouble", "complex64",
                   "complex128", "object", "U4", "S4", "datetime64[s]", "timedelta64[s]"]

small_ints = st.integers(-3, 600).map(lit)
edge_ints = st.sampled_from(EDGE_INTS).map(lit)
odd_ints = st.one_of(small_ints, edge_ints)
odd_floats = st.one_of(st.sampled_from(EDGE_FLOATS).map(lit),
                       st.floats(allow_nan=True, allow_infinity=True).map(lit))
np_scalars = st.one_of(
    st.tuples(st.sampled_from(["int8", "uint8", "int32", "int64", "uint64"]),
              st.integers(0, 127)).map(lambda t: V(f"np.{t[0]}({t[1]})")),
    vals(V("np.uint64(2**64 - 1)", True), V("np.int64(-2**63)", True), V("np.float32('nan')"),
         V("np.float64('inf')"), V("np.float32(0.5)"), V("np.bool_(True)"), V("np.int32(-1)"),
         V("np.float16(1.0)"), V("np.longdouble('1e4000')"), V("np.complex64(1+1j)")))
odd_strings = st.one_of(
    st.text(max_size=12).map(lit),
    vals("", "a", "<s>", "</s>", "<unk>", "\x00", "<0x0A>", "\u2581", "1", "nan", "-1",
         "none", "suffix", "\ud800", "hello world " * 20, "x" * 3000))
odd_objects = vals(V("object()"), V("[]"), V("{}"), V("()"), V("1j"), V("Ellipsis"),
                   V("slice(1)"), V("range(3)"), V("iter([1, 2])"), V("b''"), V("b'\\xff\\xfe'"),
                   V("bytearray(b'ab')"), V("memoryview(b'abc')"), V("np.array([1, 2])"),
                   V("np.array(5)"), V("np.zeros((0,))"), V("[[1, 2], [3]]"), V("{1, 2}"),
                   V("lambda: 1"), V("spec"), V("model"), V("Exception('x')"))
odd_scalar = st.one_of(odd_ints, odd_floats, st.booleans().map(lit), st.none().map(lit),
                       odd_strings, np_scalars, odd_objects)


def weighted(valid: st.SearchStrategy, odd: st.SearchStrategy = odd_scalar, n: int = 3):
    """``valid`` n times as often as ``odd`` (st.one_of would flatten nested one_ofs and weigh
    every branch alike); shrinks towards ``valid``."""
    return st.integers(0, n).flatmap(lambda i: valid if i < n else odd)


flags = weighted(st.booleans().map(lit),
                 st.one_of(vals(0, 1, 2, -1, None, "", "x", NAN, V("np.bool_(False)"),
                                V("np.array([1, 2])"), V("[]"), V("[0]")), odd_scalar), n=4)


# token sequences

@st.composite
def _int_lists(draw, max_size=40, alphabet=st.integers(1, 9)):
    elem = st.one_of(alphabet, alphabet, st.integers(0, N_VOCAB - 1), st.sampled_from(EDGE_INTS))
    return draw(st.lists(elem, max_size=max_size))


@st.composite
def token_values(draw, valid_only=False):
    """A token sequence argument: mostly valid ids in one of many containers, else odd."""
    kind = draw(st.integers(0, 12 if not valid_only else 5))
    ids = draw(st.lists(st.one_of(st.integers(1, 9), st.integers(0, N_VOCAB - 1)), max_size=40))
    if kind == 0:
        return lit(ids)
    if kind == 1:
        return V(f"np.array({ids!r}, dtype=np.int32)")
    if kind == 2:
        return V(f"np.array({ids!r}, dtype={draw(st.sampled_from(NP_INT_DTYPES))!r})")
    if kind == 3:
        return lit(tuple(ids))
    if kind == 4:       # views: non-contiguous, read-only, byte-swapped
        form = draw(st.sampled_from([
            "np.repeat(np.array({0}, dtype=np.int32), 2)[::2]", "_ro({0})",
            "np.array({0}, dtype='>i4')", "np.array({0}, dtype=np.int64)[::-1]",
            "np.asfortranarray(np.array({0}, dtype=np.int32))"]))
        return V(form.format(repr(ids)))
    if kind == 5:       # long
        n = draw(st.sampled_from([255, 256, 257, 511, 512, 513, 600, 1024, 4097]))
        return V(draw(st.sampled_from(["[{k}] * {n}", "np.arange({n}) % {m} + 1",
                                       "list(range(1, {n} + 1))"]))
                 .format(k=draw(st.integers(0, 9)), n=n, m=draw(st.integers(1, 50))))
    raw = draw(_int_lists())
    if kind == 6:
        return lit(raw)                                    # ids may be out of range
    if kind == 7:
        return V(f"np.array({raw!r}, dtype=object)", any(abs(i) > BIG for i in raw))
    if kind == 8:
        d = draw(st.sampled_from(NP_INT_DTYPES + NP_OTHER_DTYPES))
        n = draw(st.integers(0, 5))
        return V(draw(st.sampled_from([f"np.zeros({n}, dtype={d!r})", f"np.ones({n}, dtype={d!r})",
                                       f"np.arange({n}).astype({d!r})"])))
    if kind == 9:
        return V(draw(st.sampled_from([
            "np.array([[1, 2], [3, 4]], dtype=np.int32)", "np.zeros((0, 3), dtype=np.int32)",
            "np.array(7, dtype=np.int32)", "[[1, 2], [3]]", "[1.5, 2.0]", "[float('nan')]",
            "[True, False]", "['1', '2']", "[None]", "[[1]]", "np.array([1.0, float('nan')])",
            "np.array([2**40], dtype=np.int64)", "np.array([-5], dtype=np.int8)",
            "np.array([4294967295], dtype=np.uint32)", "np.array([2**64 - 1], dtype=np.uint64)",
            "np.zeros(3, dtype=[('a', 'i4')])", "np.zeros(4, dtype='V4')", "[1, [2]]",
            "np.array([1, 2], dtype=np.int32).view(np.float32)", "iter([1, 2, 3])",
            "range(1, 20)", "b'\\x01\\x02'", "bytearray(b'\\x01')", "memoryview(b'\\x01\\x02')",
            "memoryview(np.arange(4, dtype=np.int32))", "{1: 2}", "{1, 2}",
            "np.ma.masked_array([1, 2], mask=[0, 1])", "np.matrix([[1, 2]])",
            "np.broadcast_to(np.int32(3), (50,))"])))
    return draw(odd_scalar)


tokens = token_values()
valid_tokens = token_values(valid_only=True)

# generation arguments: (valid values, odd values) per keyword
SAMPLING = {
    "max_tokens": (vals(0, 1, 2, 3, 8, 16, 40), odd_ints),
    "temperature": (vals(0, 0.0, 0.7, 1.0, 1.3),
                    st.one_of(vals(1e-9, 1e-30, 1e-300, 5e-324, 1e30, 1e308, INF, NAN, -1, -0.0,
                                   True, None, "1", V("np.float32(0.5)"), V("np.float64('nan')"),
                                   V("np.float16(1e-7)"), V("np.longdouble('1e-4000')")),
                              odd_scalar)),
    "top_k": (vals(0, 1, 2, 40),
              st.one_of(vals(31999, 32000, 32001, 2**31 - 1, 2**31, 2**63, -1, True, 1.5, None,
                             V("np.int64(5)"), V("np.uint64(2**64 - 1)", True)), odd_scalar)),
    "top_p": (vals(1.0, 0.9, 0.5, 0.1),
              st.one_of(vals(1e-9, 5e-324, 1e-300, 0, 0.0, -0.0, 1.0000001, NAN, INF, -1, True,
                             None, V("np.float32(1.0)")), odd_scalar)),
    "min_p": (vals(0.0, 0.05, 0.5),
              st.one_of(vals(1.0, 0.9999999, 1e-300, 5e-324, NAN, -0.0, 1.5, True, None, 0,
                             V("np.float64(1.0)")), odd_scalar)),
    "seed": (vals(None, 0, 1, 42),
             st.one_of(vals(-1, 2**64 - 1, 2**64, 2**100, -2**100, 1.5, NAN, "3", True,
                            V("np.uint64(2**64 - 1)", True)), odd_scalar)),
    "stop": (vals((), [], None, "a", " ", ["e", "o"], "the"),
             st.one_of(vals("", [""], ["a", None], [1], "\x00", ["\ud800"], b"x", {"a": 1},
                            [["a"]], "e" * 1000, ["s"] * 100, "\ufffd", "\u2581"), odd_scalar)),
}
max_tokens_v = weighted(*SAMPLING["max_tokens"], n=4)

text_v = weighted(st.one_of(st.text(max_size=30).map(lit),
                            vals("The quick brown fox jumps over the lazy dog. The quick brown",
                                 "a b a b a b a b a b a b", "hello", "1 2 3 4 5 6 7 8 9 1 2 3")),
                  st.one_of(odd_strings, st.binary(max_size=20).map(lit)), n=2)
prompt_v = st.one_of(text_v, text_v, valid_tokens, tokens)


def call(expr: str, *args: V, **kwargs: V) -> tuple[str, bool]:
    parts = [a.code for a in args] + [f"{k}={v.code}" for k, v in kwargs.items()]
    return f"{expr}({', '.join(parts)})", any(a.big for a in args) or any(
        v.big for v in kwargs.values())


@st.composite
def mixed_kwargs(draw, options: dict, max_odd: int = 1):
    """A random subset of the keywords of ``options`` (name -> (valid, odd) strategies), with
    up to ``max_odd`` of them odd and the rest valid: most calls get past validation."""
    names = [n for n in options if draw(st.booleans())]
    odd = set(draw(st.lists(st.sampled_from(names), max_size=max_odd, unique=True))) \
        if names and max_odd else set()
    return {n: draw(options[n][1] if n in odd else options[n][0]) for n in names}


@st.composite
def some_kwargs(draw, **options):
    """A random subset of keyword arguments, each from its strategy."""
    out = {}
    for name, strategy in options.items():
        if draw(st.booleans()):
            out[name] = draw(strategy)
    return out


# -- worker, statistics, checking ---------------------------------------------------------------

STATS: dict = collections.defaultdict(lambda: collections.Counter())
SAMPLES: dict = {}       # "target ExceptionType" -> statements that raised it (for a look)
# exception types that are acceptable but unusual for argument errors (looked at by hand)
UNUSUAL = ("IndexError", "KeyError", "AttributeError", "UnboundLocalError", "ZeroDivisionError",
           "RuntimeError", "AssertionError", "RecursionError", "UnicodeDecodeError",
           "BufferError", "FloatingPointError", "NotImplementedError", "StopIteration",
           "DecodeError", "InvalidBatchError", "KVCacheFullError", "SessionProcessError",
           "ContextError", "NonFiniteLogitsError", "SpecError", "OSError", "MemoryError",
           "_ArrayMemoryError")

SETUP = '''\
import gc, itertools, os
import numpy as np
import spec, spec.testing


def _need(path, make, **kw):
    """The tiny model at ``path``, synthesized (deterministically) if it is missing."""
    if not os.path.exists(path):
        make(path, vocab=spec.testing.vocab_path("llama-spm"), **kw)
    return path


def _ro(a):
    a = np.array(a, dtype=np.int32)
    a.setflags(write=False)
    return a


TINY = _need({tiny!r}, spec.testing.make_tiny_llama, **{tiny_kw!r})
BIGRAM = _need({bigram!r}, spec.testing.make_tiny_llama, **{bigram_kw!r})
MTP = _need({mtp!r}, spec.testing.make_tiny_qwen35_mtp, seed=5)
TGT4 = _need({tgt4!r}, spec.testing.make_tiny_llama, seed=2, n_layer=4)
EAGLE3 = _need({eagle3!r}, spec.testing.make_tiny_eagle3, n_embd_target=64)
DFLASH = _need({dflash!r}, spec.testing.make_tiny_dflash, target_layers=(1, 2, 3))
TMP = {tmp!r}


def _clean():
    """Empty TMP (files a drafter program saves and loads)."""
    os.makedirs(TMP, exist_ok=True)
    for name in os.listdir(TMP):
        os.remove(os.path.join(TMP, name))


_clean()
out = np.zeros(0, dtype=np.int32)               # the last draft, before any
model = spec.Model(TINY)                        # shared, never closed by a program
bigram = spec.Model(BIGRAM)
mtp_model = spec.Model(MTP, load_mtp=True)
tgt4 = spec.Model(TGT4)
eagle3 = spec.Model(EAGLE3)
dflash = spec.Model(DFLASH)
'''


@pytest.fixture(scope="module")
def setup_code(tmp_path_factory, tiny_model_path, bigram_model_path):
    d = tmp_path_factory.mktemp("fuzz")
    return SETUP.format(tiny=str(tiny_model_path), tiny_kw=TINY, bigram=str(bigram_model_path),
                        bigram_kw=BIGRAM, mtp=str(d / "mtp.gguf"), tgt4=str(d / "tgt4.gguf"),
                        eagle3=str(d / "eagle3.gguf"), dflash=str(d / "dflash.gguf"),
                        tmp=str(d / "files"))


@pytest.fixture(scope="module")
def worker(setup_code):
    w = Worker(setup_code, timeout=60.0)
    yield w
    w.close()
    path = os.environ.get("SPEC_FUZZ_STATS")
    if path:
        with open(path, "w") as f:
            json.dump({"stats": {k: dict(v) for k, v in STATS.items()},
                       "samples": {k: v[:5] for k, v in SAMPLES.items()}},
                      f, indent=1, sort_keys=True)


def _bad_step(step, big: bool) -> str | None:
    if step.exc is None:
        return None
    if "Exception" not in step.mro:
        return f"raised {step.exc}, which is not an Exception"
    if "SystemError" in step.mro:
        return f"raised SystemError (a C-level error state leaked): {step.message}"
    if "MemoryError" in step.mro and not big:
        return f"raised MemoryError on a small input: {step.message}"
    return None


# Crashes this suite found that the library does not prevent yet: name -> (a line of the dead
# worker's log that identifies it, the cause). A fuzz example dying of one of them is counted
# as "known" instead of failing (so the campaign goes on to find others); each one has a
# strict-xfail regression test at the end of this file with its minimal reproducer. Remove the
# entry together with the xfail mark once the library is fixed.
KNOWN_CRASHES: dict = {}     # all fixed (the reproducers below are their regression tests)


def _known(log: str) -> str | None:
    for name, (needle, _) in KNOWN_CRASHES.items():
        if needle in log:
            return name
    return None


def check(worker: Worker, target: str, program: list, tolerate_known: bool = True) -> None:
    """Run ``program`` (a list of ``(statement, big)``) in the worker; fail on a crash, a hang
    or an unacceptable exception, with a reproducer."""
    code = [c for c, _ in program]
    out = worker.run(code)
    stats = STATS[target]
    stats["programs"] += 1
    problem = None
    if out.kind == "crash" and tolerate_known and _known(out.log):
        stats["known crash " + _known(out.log)] += 1
    elif out.kind != "ok":
        stats[out.kind] += 1
        # the same program in a worker that has run nothing else: does it reproduce alone?
        again = worker.run(code)
        alone = "yes" if again.kind == out.kind else f"no ({again.kind} in a fresh worker)"
        what = (signal_name(out.returncode) if out.kind == "crash"
                else f"no answer within {worker.timeout:.0f} s")
        problem = (f"the worker {'crashed' if out.kind == 'crash' else 'hung'} ({what}); "
                   f"reproduces in a fresh interpreter: {alone}\n--- worker log ---\n"
                   f"{crash_summary(out.log)}")
    else:
        for (stmt, big), step in zip(program, out.steps):
            stats["statements"] += 1
            if step.exc is None:
                stats["returned"] += 1
            else:
                stats["raised"] += 1
                stats["raised " + step.exc.rsplit(".", 1)[-1]] += 1
            name = (step.exc or "").rsplit(".", 1)[-1]
            if name in UNUSUAL and not (name == "AttributeError" and "has no attribute" in
                                        step.message and stmt.startswith("d.")):
                SAMPLES.setdefault(f"{target} {name}", []).append(
                    f"{stmt[:300]} -> {step.message[:300]}")
            bad = _bad_step(step, big)
            if bad and problem is None:
                problem = f"statement `{stmt[:300]}` {bad}"
        for u in out.unraisable:
            stats["unraisable"] += 1
            stats["unraisable " + u.split(":", 1)[0]] += 1
    if problem:
        pytest.fail(f"[{target}] {problem}\n--- reproducer ---\n{render(worker.setup, code)}",
                    pytrace=False)


# -- Model ---------------------------------------------------------------------------------------

PROPS = ["architecture", "n_ctx_train", "n_embd", "n_layer", "n_layer_nextn", "n_params",
         "size_bytes", "is_recurrent", "description", "metadata", "special_tokens", "bos", "eos",
         "add_bos", "closed", "n_vocab", "path", "vocab_only", "load_mtp"]
model_path_v = weighted(vals(V("TINY"), V("BIGRAM"), V("MTP"), V("TGT4"), V("EAGLE3")),
                        st.one_of(vals(V("'/nonexistent.gguf'"), V("'/'"), V("''"), V("b''"),
                                       V("TINY.encode()"), V("__import__('pathlib').Path(TINY)"),
                                       V("TMP"), V("'/dev/null'"), V("'/proc/self/status'"),
                                       V("str(spec.testing.vocab_path('llama-spm'))"),
                                       V("TINY + '\\x00'"), V("[TINY]")),
                                  odd_scalar), n=4)


@st.composite
def model_step(draw, m="model"):
    k = draw(st.integers(0, 7))
    if k == 0:
        return call(f"{m}.tokenize", draw(text_v),
                    **draw(some_kwargs(add_special=flags, parse_special=flags)))
    if k == 1:
        return call(f"{m}.detokenize", draw(tokens),
                    **draw(some_kwargs(remove_special=flags, unparse_special=flags)))
    if k == 2:
        return call(f"{m}.token_to_piece", draw(weighted(st.integers(0, N_VOCAB - 1).map(lit),
                                                          odd_ints)),
                    **draw(some_kwargs(special=flags)))
    if k == 3:
        return call(f"{m}.is_eog", draw(weighted(st.integers(0, 3).map(lit), odd_ints)))
    if k == 4:
        return f"{m}.{draw(st.sampled_from(PROPS))}", False
    if k == 5:
        return f"{m}.eog_mask().sum()", False
    if k == 6:
        return f"repr({m})", False
    return call(f"{m}.tokenize", draw(text_v), draw(flags), draw(flags))


@given(st.lists(model_step(), min_size=1, max_size=4))
@fuzz_settings(250)
def test_model_methods(worker, program):
    check(worker, "model", program)


@st.composite
def model_lifecycle(draw):
    prog = [call("m = spec.Model", draw(model_path_v),
                 **draw(some_kwargs(vocab_only=flags, n_gpu_layers=weighted(vals(0, 1), odd_ints),
                                    load_mtp=flags)))]
    for _ in range(draw(st.integers(0, 4))):
        prog.append(draw(st.one_of(model_step("m"), st.just(("m.close()", False)),
                                   st.just(("c = spec.Context(m, n_ctx=64, n_threads=1)", False)),
                                   st.just(("c.decode([1, 2, 3])", False)),
                                   st.just(("c.close()", False)))))
    return prog


@given(model_lifecycle())
@fuzz_settings(100)
def test_model_lifecycle(worker, program):
    check(worker, "model-lifecycle", program)


# -- Context -------------------------------------------------------------------------------------

seq_v = weighted(vals(0, 0, 1, 2, -1), st.one_of(vals(3, -2, 255, 256, 257, 2**31 - 1),
                                                 odd_ints, odd_scalar), n=3)
pos_v = weighted(vals(-1, 0, 1, 5, 30, 63, 64, 127, 255, 511),
                 st.one_of(vals(-2, 512, 2**31 - 2, 2**31 - 1, -2**31), odd_ints, odd_scalar))


@st.composite
def context_step(draw, c="ctx"):
    k = draw(st.integers(0, 13))
    if k <= 3:
        return call(f"{c}.decode", draw(st.one_of(valid_tokens, valid_tokens, tokens)),
                    **draw(some_kwargs(pos=pos_v, seq_id=seq_v, all_logits=flags)))
    if k == 4:
        return f"v = {c}.logits()", False
    if k == 5:
        return draw(st.sampled_from(["float(np.nansum(v))", "v.shape", "del v",
                                     "w = np.array(v, copy=True)", "v[-1].argmax()"])), False
    if k == 6:
        return call(f"{c}.kv_remove", draw(seq_v), *draw(st.lists(pos_v, max_size=2)))
    if k == 7:
        return call(f"{c}.kv_copy", draw(seq_v), draw(seq_v), *draw(st.lists(pos_v, max_size=2)))
    if k == 8:
        return f"{c}.kv_clear()", False
    if k == 9:
        return call(f"{c}.kv_pos_{draw(st.sampled_from(['max', 'min']))}",
                    *draw(st.lists(seq_v, max_size=1)))
    if k == 10:
        return call(f"{c}.generate_greedy", draw(st.one_of(valid_tokens, tokens)),
                    draw(max_tokens_v), **draw(some_kwargs(seq_id=seq_v, stop_at_eog=flags)))
    if k == 11:
        return draw(st.sampled_from([f"{c}.close()", f"repr({c})", f"{c}.n_threads",
                                     f"{c}.closed", f"with {c}: pass"])), False
    if k == 12:         # positional misuse
        return call(f"{c}.decode", draw(valid_tokens), draw(pos_v))
    return call(f"{c}.decode", draw(valid_tokens), pos=draw(pos_v), all_logits=lit(True))


small_ctx = st.tuples(st.sampled_from([1, 8, 16, 64, 128, 256, 512]),
                      st.sampled_from([1, 2, 7, 32, 64, 512]), st.sampled_from([1, 1, 2, 3]))


@st.composite
def context_program(draw):
    n_ctx, n_batch, n_seq = draw(small_ctx)
    prog = [(f"ctx = spec.Context(model, n_ctx={n_ctx}, n_batch={n_batch}, n_threads=1, "
             f"n_seq_max={n_seq})", False)]
    prog += draw(st.lists(context_step(), min_size=1, max_size=6))
    return prog


@given(context_program())
@fuzz_settings(220)
def test_context_methods(worker, program):
    check(worker, "context", program)


CONTEXT_KW = {
    "n_ctx": (vals(8, 64, 256, 512), odd_ints),
    "n_batch": (vals(2, 8, 64, 512), odd_ints),
    "n_threads": (vals(1), vals(0, -1, 2, 1.5, None, True, "1", 2**31, -2**31)),
    "n_seq_max": (vals(1, 2), st.one_of(vals(255, 256, 257, 0, -1), odd_ints)),
    "seed": (vals(0, 1), odd_scalar),
    "ctx_type": (vals("default"), st.one_of(vals("mtp", "MTP", ""), odd_scalar)),
    "n_rs_seq": (vals(0, 1, 3), odd_ints),
    "ctx_other": (vals(None), vals(V("spec.Context(model, n_ctx=64, n_threads=1)"), V("model"),
                                   1, V("ctx0"))),
    "embeddings": (vals(False, True), flags),
}


@st.composite
def context_ctor_program(draw):
    kwargs = draw(mixed_kwargs(CONTEXT_KW, max_odd=draw(st.sampled_from([0, 1, 1, 2]))))
    kwargs.setdefault("n_threads", lit(1))
    if "n_ctx" not in kwargs and "n_batch" not in kwargs:
        kwargs["n_ctx"] = lit(64)
    owner = draw(st.sampled_from(["model", "model", "mtp_model", "bigram", "spec.Model(MTP)",
                                  "spec.Model(TINY, vocab_only=True)", "None", "1", "ctx0"]))
    prog = [("ctx0 = spec.Context(model, n_ctx=32, n_threads=1)", False),
            call("ctx = spec.Context", V(owner), **kwargs)]
    prog += draw(st.lists(context_step(), max_size=3))
    prog.append(("ctx0.close(); ctx0.decode([1])", False))
    return prog


@given(context_ctor_program())
@fuzz_settings(90)
def test_context_constructor(worker, program):
    check(worker, "context-ctor", program)


# -- Engine --------------------------------------------------------------------------------------

MODEL_FREE = ["suffix", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod",
              "ngram-cache", "llama:ngram-simple", "llama:ngram-map-k", "llama:ngram-map-k4v",
              "llama:ngram-mod", "llama:ngram-cache"]


@st.composite
def sampling_kwargs(draw):
    return draw(mixed_kwargs(SAMPLING, max_odd=draw(st.sampled_from([0, 1, 1, 2]))))


@st.composite
def batch_prompts(draw):
    k = draw(st.integers(0, 5))
    if k == 0:
        return draw(odd_scalar)
    items = draw(st.lists(st.one_of(prompt_v, prompt_v, _request_dict()), max_size=4))
    v = lit(items) if items else V("[]")
    if k == 1:
        return V(f"({v.code[1:-1]}{',' if len(items) == 1 else ''})" if items else "()", v.big)
    if k == 2:
        return V(f"iter({v.code})", v.big)
    return v


@st.composite
def _request_dict(draw):
    d = draw(sampling_kwargs())
    if draw(st.integers(0, 5)):
        d["prompt"] = draw(prompt_v)
    if not draw(st.integers(0, 6)):
        d[draw(st.sampled_from(["bogus", "trace", "n_parallel", "order"]))] = draw(odd_scalar)
    return V("{" + ", ".join(f"{k!r}: {v.code}" for k, v in d.items()) + "}",
             any(v.big for v in d.values()))


@st.composite
def engine_step(draw, e="eng"):
    k = draw(st.integers(0, 10))
    if k <= 2:
        kw = draw(sampling_kwargs())
        if draw(st.booleans()):
            kw["trace"] = draw(flags)
        return call(f"r = {e}.generate", draw(prompt_v), **kw)
    if k == 3:
        code, big = call(f"list(itertools.islice({e}.stream", draw(prompt_v),
                         **draw(sampling_kwargs()))
        return code + f", {draw(st.integers(0, 3))}))", big
    if k == 4:          # a stream left open, then something else in this thread
        code, big = call(f"g = {e}.stream", draw(prompt_v), **draw(sampling_kwargs()))
        return code + "; next(g, None)", big
    if k == 5:
        return draw(st.sampled_from(["g.close()", "del g", "list(g)", "next(g, None)"])), False
    if k == 6:
        kw = draw(sampling_kwargs())
        kw.update(draw(some_kwargs(n_parallel=weighted(vals(1, 2, 3, 8), odd_ints),
                                   order=weighted(vals("longest_first", "input"), odd_scalar))))
        return call(f"rs = {e}.generate_batch", draw(batch_prompts()), **kw)
    if k == 7:
        kw = draw(sampling_kwargs())
        kw.update(draw(some_kwargs(n_parallel=weighted(vals(1, 2, 3), odd_ints))))
        code, big = call(f"next(iter({e}.iter_batch", draw(batch_prompts()), **kw)
        return code + "), None)", big
    if k >= 8:
        # the engine's own handles used between (or, with a stream open, inside) generations
        return draw(st.sampled_from([
            f"{e}.close()", f"{e}.tokenize_prompt('abc')", "r.print_stats()", "r.stats.as_dict()",
            "r.text", f"{e}.ctx.kv_clear()", f"{e}.drafter", f"{e}.ctx.decode([1] * 100)",
            f"{e}.ctx.kv_remove(0, 2, -1)", f"{e}.ctx.decode([5, 6], pos=0)",
            f"v = {e}.ctx.logits()", f"{e}.ctx.close()",
            f"{e}.draft_ctx and {e}.draft_ctx.kv_clear()",
            f"{e}.draft_ctx and {e}.draft_ctx.decode([1] * 50)",
            f"{e}.draft_ctx and {e}.draft_ctx.close()",
            f"{e}.drafter and {e}.drafter.reset()",
            f"{e}.drafter and {e}.drafter.begin([1, 2, 3])",
            f"{e}.drafter and spec.simulate({e}.drafter, [1, 2, 1, 2, 1, 2], n_max=2)",
            f"{e}.tokenize_prompt({draw(prompt_v).code})"])), False


def _engine_ctor(draw, model_expr):
    drafter = draw(st.sampled_from(MODEL_FREE + [None, "none", "draft", "mtp", "eagle3",
                                                 "dflash"]))
    params = {}
    owner = model_expr
    if drafter == "draft":
        params = {"draft_model": V(draw(st.sampled_from(["model", "TINY", "bigram"])))}
    elif drafter == "mtp":
        owner = "mtp_model"
        params = {"n_rs_seq": lit(draw(st.sampled_from([0, 0, 2])))}
    elif drafter in ("eagle3", "dflash"):
        owner = "tgt4"
        params = {"draft_model": V(drafter)}
    kw = {"drafter": lit(drafter), "n_ctx": lit(draw(st.sampled_from([64, 128, 256, 512]))),
          "n_threads": lit(1)}
    if draw(st.booleans()):
        kw["n_draft"] = lit(draw(st.sampled_from(["auto", 1, 3, 8])))
    if draw(st.integers(0, 3)) == 0:
        kw["n_parallel"] = lit(draw(st.sampled_from([1, 2, 3])))
    if params:
        kw["drafter_params"] = lit(params)
    return call("eng = spec.Engine", V(owner), **kw)


@st.composite
def engine_program(draw):
    prog = [_engine_ctor(draw, draw(st.sampled_from(["bigram", "model"])))]
    prog += draw(st.lists(engine_step(), min_size=1, max_size=5))
    return prog


@given(engine_program())
@fuzz_settings(200)
def test_engine_requests(worker, program):
    check(worker, "engine", program)


ENGINE_KW = {
    "drafter": (vals(*MODEL_FREE, None, "none"),
                st.one_of(vals("draft", "mtp", "eagle3", "dflash", "llama:suffix", "llama:",
                               "llama:none", "", "SUFFIX", "suffix,draft", "ngram-mod,mtp",
                               "draft,mtp", "mtp,", V("['ngram-simple', 'eagle3']"),
                               V("[spec.SuffixTree(), 'draft']"), V("spec.NgramSimple(3, 4)"),
                               V("spec.SuffixTree()"),
                               V("spec.llama_drafter('ngram-mod', n_match=4, n_min=1)"),
                               V("spec.Drafter()"), V("spec.NgramSimple")), odd_scalar)),
    "n_draft": (vals("auto", 1, 4, 16),
                st.one_of(vals(0, -1, 65535, 65536, 2**31 - 1, "3", 1.5, True), odd_scalar)),
    "n_draft_max": (vals(1, 4, 16), st.one_of(vals(65535, 65536, 2**31 - 1), odd_ints)),
    "draft_cost": (vals(0.0, 0.43, 2.0), st.one_of(odd_floats, odd_scalar)),
    "n_ctx": (vals(16, 64, 512), odd_ints),
    "n_batch": (vals(2, 8, 512), odd_ints),
    "n_parallel": (vals(1, 2, 4), st.one_of(vals(255, 256, 257), odd_ints)),
    "drafter_params": (vals(None, {}), st.one_of(
        vals({"size_n": 0}, {"size_m": 2**40}, {"bogus": 1}, {"draft_model": "TINY"},
             {"n_min": -1}, {"p_min": NAN}, {"n_rs_seq": 5}, {"table_size": 0},
             {"max_depth": -1}, {"n_draft": 100}, {"static_path": "/nonexistent"},
             {"min_token_prob": NAN}, {"n_match": 2**31}, [1], "x",
             V("{'draft_model': model}"), V("{'draft_model': bigram, 'p_min': 0.5}"),
             V("{'draft_model': mtp_model}"), V("{'draft_model': eagle3}")), odd_scalar)),
}


@st.composite
def engine_ctor_program(draw):
    kw = draw(mixed_kwargs(ENGINE_KW, max_odd=draw(st.sampled_from([0, 1, 1, 2]))))
    kw["n_threads"] = draw(weighted(vals(1), vals(0, -1, None, 1.5, "1"), n=6))
    kw.setdefault("n_ctx", lit(128))
    owner = draw(weighted(vals(V("bigram"), V("BIGRAM")),
                          vals(V("mtp_model"), V("tgt4"), V("eagle3"), V("'default'"),
                               V("'nonexistent-model'"), V("None"), V("1"),
                               V("spec.Model(TINY, vocab_only=True)")), n=6))
    prog = [call("eng = spec.Engine", owner, **kw)]
    prog.append(call("eng.generate", draw(weighted(vals("a b a b a b a", [1, 2, 3]), prompt_v)),
                     max_tokens=draw(weighted(vals(4, 8), max_tokens_v))))
    prog += draw(st.lists(engine_step(), max_size=1))
    return prog


@given(engine_ctor_program())
@fuzz_settings(110)
def test_engine_constructor(worker, program):
    check(worker, "engine-ctor", program)


# -- drafters ------------------------------------------------------------------------------------

PARAMS = {
    "ngram-simple": ["size_n", "size_m"],
    "ngram-map-k": ["size_n", "size_m", "min_hits"],
    "ngram-map-k4v": ["size_n", "size_m", "min_hits"],
    "ngram-mod": ["n_match", "n_max", "n_min", "table_size"],
    "ngram-cache": ["n_draft", "static_path", "dynamic_path"],
    "suffix": ["max_depth", "max_spec_factor", "max_spec_offset", "min_token_prob",
               "max_cached_requests"],
}
param_v = weighted(vals(0, 1, 2, 3, 4, 8, 16, 0.5, 1.0),
                   st.one_of(vals(V("TMP + '/c.bin'"), V("TMP + '/missing'"), V("TMP"), "",
                                  None, 2**16, 2**31, NAN, -1.0, INF, 2**20, 32767, 32768),
                             odd_scalar), n=1)


def drafter_names_for_test():
    names = [n for n in spec.drafter_names()
             if n not in ("none", "draft", "mtp", "eagle3", "dflash")]
    assert set(MODEL_FREE) <= set(names), names
    return names


@st.composite
def drafter_ctor(draw, odd_params=True):
    name = draw(st.sampled_from(drafter_names_for_test()))
    base = name.split(":", 1)[-1]
    kw = {}
    if odd_params and draw(st.integers(0, 2)) == 0:
        for p in draw(st.lists(st.sampled_from(PARAMS[base] + ["bogus", "n_seq"]), max_size=3,
                               unique=True)):
            kw[p] = draw(param_v)
    elif base == "ngram-mod":
        kw = {"n_match": lit(draw(st.sampled_from([2, 3, 4]))), "n_min": lit(1)}
    if name.startswith("llama:") and draw(st.integers(0, 3)) == 0:
        return call("d = spec.llama_drafter", lit(base), **kw)
    return call("d = spec.make_drafter", lit(name), **kw)


hist_len = st.integers(0, 120)


@st.composite
def drafter_step(draw, d="d"):
    """One call of the drafter protocol; histories are slices of the program's stream H."""
    seq = draw(weighted(vals(0, 0, 1, 3), st.one_of(vals(255, 256, -1, 2**31 - 1), odd_ints,
                                                    odd_scalar), n=4))
    h = draw(weighted(hist_len.map(lambda a: V(f"H[:{a}]")), tokens, n=4))
    id_last = draw(weighted(hist_len.map(lambda a: V(f"int(H[{a} % len(H)])")), odd_ints, n=4))
    n_max = draw(weighted(vals(1, 4, 8, 16), odd_ints, n=3))
    k = draw(st.integers(0, 9))
    if k <= 1:
        return call(f"{d}.begin", h, **({"seq_id": seq} if draw(st.booleans()) else {}))
    if k <= 4:
        return call(f"out = {d}.draft", h, id_last, n_max,
                    **({"seq_id": seq} if draw(st.booleans()) else {}))
    if k <= 6:
        n = draw(weighted(st.integers(0, 3).map(lit), st.one_of(vals(V("len(out)")), odd_ints)))
        return call(f"{d}.accept", n, **({"seq_id": seq} if draw(st.booleans()) else {}))
    if k == 7:
        return call(f"{d}.end", *([h] if draw(st.booleans()) else []),
                    **({"seq_id": seq} if draw(st.booleans()) else {}))
    if k == 8:
        return draw(st.sampled_from([f"{d}.reset()", f"repr({d})", f"{d}.n_seq",
                                     f"spec.simulate({d}, H, n_max=4)"])), False
    # type-specific public methods (each raises AttributeError on the other types)
    return draw(st.sampled_from([
        call(f"{d}.draft_tree", h, id_last, n_max, seq), call(f"{d}.tree_stats", seq),
        (f"{d}.memory_bytes()", False), (f"{d}.n_cached", False),
        call(f"{d}.counts", draw(tokens), cache=draw(vals("context", "dynamic", "static", "x",
                                                          None, 1)), seq_id=seq),
        call(f"{d}.n_ngrams", draw(vals("context", "dynamic", "static", "")), seq),
        call(f"{d}.add_static", h), call(f"{d}.add_dynamic", h), call(f"{d}.merge_context", seq),
        call(f"{d}.reset", seq),
        call(f"{d}.save_static", draw(vals(V("TMP + '/c.bin'"), V("TMP"), V("'/proc/x'"), 1))),
        call(f"{d}.save_dynamic", draw(vals(V("TMP + '/c.bin'"), V("TMP + '/d.bin'")))),
        call(f"{d}.save_context", draw(vals(V("TMP + '/c.bin'"))), seq),
        call(f"{d}.load_static", draw(vals(V("TMP + '/c.bin'"), V("TMP + '/junk.bin'"),
                                           V("TMP + '/missing'"), V("TMP"), None))),
        call(f"{d}.load_dynamic", draw(vals(V("TMP + '/c.bin'"), V("TMP + '/junk.bin'")))),
        (f"{d}.params", False), (f"{d}.capacity", False), (f"{d}.occupancy", False),
        (f"{d}._state({seq.code})", seq.big),
    ]))


def stream_def(draw):
    """The program's token stream H: repetitive (so n-grams match and drafts happen)."""
    alphabet = draw(st.sampled_from([3, 5, 9, 40]))
    ids = draw(st.lists(st.integers(1, alphabet), min_size=1, max_size=40))
    reps = draw(st.integers(1, 5))
    return (f"H = np.array({ids!r} * {reps}, dtype=np.int32)", False)


@st.composite
def cache_file(draw):
    """Writes TMP/junk.bin: an n-gram lookup-cache file image (records of 4 key tokens, a count
    n, n (token, count) pairs; int32 little-endian) with odd values, or random bytes."""
    if draw(st.integers(0, 3)) == 0:
        data = bytes(draw(st.lists(st.integers(0, 255), max_size=64)))
    else:
        tok = st.one_of(st.integers(0, 40), st.sampled_from([-1, 31999, 32000, 2**31 - 1, -2**31]))
        count = st.one_of(st.integers(1, 5), st.sampled_from([0, -1, 2**31 - 1, -2**31]))
        words = []
        for _ in range(draw(st.integers(0, 4))):
            words += [draw(tok) for _ in range(4)]
            n = draw(st.sampled_from([1, 2, 3, 0, -1, 4, 2**31 - 1, 1000]))
            words.append(n)
            for _ in range(draw(st.sampled_from([max(0, min(n, 4)), 0, 1]))):
                words += [draw(tok), draw(count)]
        data = struct.pack(f"<{len(words)}i", *words) + draw(st.sampled_from([b"", b"", b"\x01"]))
    return f"open(TMP + '/junk.bin', 'wb').write(bytes.fromhex({data.hex()!r}))", False


@st.composite
def drafter_program(draw):
    prog = [("_clean()", False), stream_def(draw), draw(drafter_ctor())]
    if draw(st.integers(0, 3)) == 0:
        prog.append(draw(cache_file()))
    if draw(st.booleans()):
        prog.append(("d.begin(H[:8])", False))
    prog += draw(st.lists(drafter_step(), min_size=1, max_size=8))
    return prog


@given(drafter_program())
@fuzz_settings(400)
def test_drafter_protocol(worker, program):
    check(worker, "drafter", program)


@st.composite
def simulate_program(draw):
    prog = [stream_def(draw), draw(drafter_ctor(odd_params=draw(st.integers(0, 3)) == 0))]
    for _ in range(draw(st.integers(1, 2))):
        kw = draw(some_kwargs(prompt_len=weighted(vals(0, 1, 5, 20), odd_ints),
                              seq_id=weighted(vals(0, 1, 255), odd_ints),
                              record=flags))
        n_max = draw(weighted(vals(0, 1, 4, 8, 16), st.one_of(vals(2**31, 2**40, 2**62, 2**63 - 1),
                                                               odd_ints, odd_scalar)))
        toks = draw(weighted(vals(V("H"), V("H[::-1]"), V("H.tolist()")), tokens, n=4))
        if draw(st.integers(0, 5)):
            kw["n_max"] = n_max
        prog.append(call("sim = spec.simulate", V("d") if draw(st.integers(0, 8)) else
                         draw(st.one_of(vals(None, V("model"), V("spec.Drafter()")), odd_scalar)),
                         toks, **kw))
    if draw(st.booleans()):
        prog.append(draw(drafter_step()))
    return prog


@given(simulate_program())
@fuzz_settings(200)
def test_simulate(worker, program):
    check(worker, "simulate", program)


# -- model-based sessions ------------------------------------------------------------------------

def _session_pair(kind: str, n_seq: int, rs: int) -> list:
    if kind == "draft":
        return [(f"ct = spec.Context(model, n_ctx=256, n_threads=1, n_seq_max={n_seq})", False),
                (f"cd = spec.Context(bigram, n_ctx=256, n_threads=1, n_seq_max={n_seq})", False)]
    if kind == "mtp":
        return [(f"ct = spec.Context(mtp_model, n_ctx=256, n_threads=1, n_seq_max={n_seq}, "
                 f"n_rs_seq={rs})", False),
                (f"cd = spec.Context(mtp_model, n_ctx=256, n_threads=1, n_seq_max={n_seq}, "
                 f"ctx_type='mtp')", False)]
    return [(f"ct = spec.Context(tgt4, n_ctx=256, n_threads=1, n_seq_max={n_seq})", False),
            (f"cd = spec.Context({kind}, n_ctx=256, n_threads=1, n_seq_max={n_seq}, "
             f"ctx_other=ct)", False)]


CLS = {"draft": "DraftModelSession", "mtp": "MtpSession", "eagle3": "Eagle3Session",
       "dflash": "DFlashSession"}


@st.composite
def session_step(draw):
    seq = draw(weighted(vals(0, 0, 1), st.one_of(vals(2, -1, 256, True, 1.0, None,
                                                      V("np.int64(0)")), odd_ints), n=4))
    k = draw(st.integers(0, 11))
    h = draw(weighted(hist_len.map(lambda a: V(f"H[:{max(a, 1)}]")), tokens, n=4))
    if k <= 2:
        return call("ct.decode", h, **draw(some_kwargs(pos=pos_v, seq_id=st.just(seq),
                                                       all_logits=flags)))
    if k == 3:
        return draw(st.sampled_from(["s.process()", "s.process()", "s.process(None)",
                                     "s.process([1])"])), False
    if k == 4:
        return call("s.begin", seq, *([h] if draw(st.booleans()) else []))
    if k <= 6:
        n_past = draw(weighted(st.sampled_from(["len(H)", "ct.kv_pos_max() + 1", "8", "0"])
                               .map(V), st.one_of(vals(255, 256, -1, 2**31 - 1), odd_ints)))
        id_last = draw(weighted(vals(1, 2, V("int(H[-1])"), V("int(ct.logits()[-1].argmax())")),
                                st.one_of(vals(31999, 32000, -1), odd_ints)))
        return call("out = s.draft", seq, n_past, id_last)
    if k == 7:
        n = draw(weighted(vals(0, 1, V("len(out)")), st.one_of(vals(65535, 65536, -1),
                                                               odd_ints)))
        return call("s.accept", seq, n)
    if k == 8:
        return call("ct.kv_remove", seq, *draw(st.lists(pos_v, max_size=2)))
    if k == 9:
        return draw(st.sampled_from(["s.reset()", "s.stats()", "s.print_stats()",
                                     "s.need_embd()", "s.config", "repr(s)",
                                     "s.draft_ctx.kv_clear()", "ct.kv_clear()"])), False
    if k == 10:
        return draw(st.sampled_from(["ct.close()", "cd.close()", "del s", "gc.collect()",
                                     "ct.decode(H[:4], pos=0)"])), False
    # the Drafter-level interface of a session
    return draw(st.sampled_from([call("s.draft", V("H"), V("1"), draw(odd_ints)),
                                 ("s.begin(H)", False), ("s.end()", False),
                                 call("d2 = spec.simulate", V("s"), V("H"), n_max=lit(4))]))


@st.composite
def session_program(draw):
    kind = draw(st.sampled_from(["draft", "draft", "mtp", "mtp", "eagle3", "dflash"]))
    n_seq = draw(st.sampled_from([1, 1, 2]))
    prog = [stream_def(draw)] + _session_pair(kind, n_seq, draw(st.sampled_from([0, 0, 2])))
    kw = draw(some_kwargs(n_min=weighted(vals(0, 1), odd_ints),
                          p_min=weighted(vals(0.0, 0.5), odd_floats)))
    prog.append(call(f"s = spec.{CLS[kind]}", V("ct"), V("cd"), lit(n_seq),
                     draw(weighted(vals(1, 3, 4, 8), odd_ints)), **kw))
    if draw(st.integers(0, 3)):     # the usual start: prefill, process, begin
        prog += [("ct.decode(H[:16])", False), ("s.process()", False), ("s.begin(0, H[:16])",
                                                                        False)]
    prog += draw(st.lists(session_step(), min_size=1, max_size=7))
    return prog


@given(session_program())
@fuzz_settings(160)
def test_session_protocol(worker, program):
    check(worker, "session", program)


@st.composite
def session_ctor_program(draw):
    kind = draw(st.sampled_from(["draft", "mtp", "eagle3", "dflash"]))
    prog = [stream_def(draw)] + _session_pair(kind, 1, 0)
    extra = [("c2 = spec.Context(model, n_ctx=64, n_threads=1, n_seq_max=2)", False),
             ("cm = spec.Context(mtp_model, n_ctx=64, n_threads=1, ctx_type='mtp')", False)]
    prog += draw(st.lists(st.sampled_from(extra), max_size=2, unique=True))
    ctx_v = st.sampled_from(["ct", "cd", "c2", "cm", "None", "model", "1"]).map(V)
    cls = draw(st.sampled_from(list(CLS.values()) + ["Session"]))
    args = [draw(weighted(vals(V("ct")), ctx_v, n=2)), draw(weighted(vals(V("cd")), ctx_v, n=2)),
            draw(weighted(vals(1), st.one_of(vals(0, 2, 256, 257), odd_scalar))),
            draw(weighted(vals(4), st.one_of(vals(0, 65535, 65536), odd_scalar)))]
    if draw(st.integers(0, 4)) == 0:
        prog.append(draw(st.sampled_from([("ct.close()", False), ("cd.close()", False)])))
    kw = draw(some_kwargs(n_min=odd_scalar, p_min=odd_scalar))
    if draw(st.integers(0, 5)) == 0:
        prog.append(call(f"s = spec.{cls}.from_config", *args[:2],
                         draw(st.one_of(vals(V("spec.SessionConfig(1, 4)"),
                                             V("spec.SessionConfig(2, 4)"), None),
                                        odd_scalar))))
    else:
        prog.append(call(f"s = spec.{cls}", *args, **kw))
    prog += [("ct.decode(H[:8])", False), ("s.process()", False), ("s.begin(0, H[:8])", False),
             ("s.draft(0, 8, int(H[8 % len(H)]))", False)]
    prog += draw(st.lists(session_step(), max_size=2))
    return prog


@given(session_ctor_program())
@fuzz_settings(80)
def test_session_constructor(worker, program):
    check(worker, "session-ctor", program)


# -- regression tests for the known crashes ------------------------------------------------------

REPRODUCERS = {
    "context-n_seq_max-over-n_batch": [
        "spec.Context(model, n_ctx=512, n_batch=2, n_threads=1, n_seq_max=3)",
        "spec.Context(model, n_ctx=1, n_threads=1, n_seq_max=2)",
    ],
    "context-n_rs_seq-over-clamped-n_batch": [
        "spec.Context(mtp_model, n_ctx=8, n_batch=64, n_threads=1, n_rs_seq=7).decode([1])",
        "spec.Context(mtp_model, n_ctx=16, n_threads=1, n_rs_seq=20).decode([1])",
    ],
}


@pytest.mark.parametrize("name", list(REPRODUCERS))
def test_known_crash_fixed(worker, name):
    """Each statement alone: a clean exception or a return, not the end of the interpreter."""
    for stmt in REPRODUCERS[name]:
        check(worker, "known-crashes", [(stmt, False)], tolerate_known=False)
