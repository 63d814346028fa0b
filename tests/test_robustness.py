"""Inputs and call patterns that used to crash the interpreter or give wrong results.

Each crash is reproduced in a separate interpreter (``run_python``): on the code before its fix
it killed the process; now it must end with a clean Python exception.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import spec
import spec.testing
from spec._runtime._core import Context, Model
from spec._loop._engine import Loop, Sequence
from spec._loop._params import Drafting
from spec._runtime._errors import (ClosedError, ContextOverflowError, EngineBusyError,
                          NonFiniteLogitsError)
from spec.engine import Engine, make_drafter
from test_core import crash_lines, gguf_tensor_offset, run_python

N_THREADS = 1
CYTHON_DRAFTERS = ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache",
                   "suffix"]
ALL_DRAFTERS = CYTHON_DRAFTERS + ["llama:ngram-simple", "llama:ngram-mod"]


def assert_clean(r, expected: str):
    assert r.returncode == 0, f"crashed (rc {r.returncode}): {crash_lines(r.stderr)}"
    assert expected in r.stdout, (r.stdout, r.stderr[-2000:])


# -- sequence ids and positions ---------------------------------------------------------------

def test_kv_remove_rejects_seq_id_below_minus_one(tiny_model):
    with Context(tiny_model, n_ctx=64, n_threads=N_THREADS) as ctx:
        with pytest.raises(ValueError, match="seq_id"):
            ctx.kv_remove(-2)
        ctx.kv_remove(-1)           # every sequence: allowed


def test_kv_remove_seq_below_minus_one_does_not_abort(tiny_model_path):
    r = run_python(f"""
        from spec._runtime._core import Context, Model
        ctx = Context(Model({str(tiny_model_path)!r}), n_ctx=64, n_threads=1)
        try:
            ctx.kv_remove(-5)
        except ValueError as e:
            print("ValueError", e)
    """)
    assert_clean(r, "ValueError")


@pytest.mark.parametrize("name", ALL_DRAFTERS)
@pytest.mark.parametrize("seq_id", [2**31 - 1, 10**6, 256, -1])
def test_simulate_bounds_seq_id_like_begin(name, seq_id):
    drafter = make_drafter(name)
    tokens = np.arange(40, dtype=np.int32) % 7
    with pytest.raises(ValueError, match="seq_id"):
        spec.simulate(drafter, tokens, n_max=4, seq_id=seq_id)
    assert spec.simulate(drafter, tokens, n_max=4, seq_id=255).n_calls > 0


def test_simulate_huge_seq_id_in_subprocess():
    r = run_python("""
        import numpy as np, spec
        for name in ["suffix", "ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache"]:
            try:
                spec.simulate(spec.make_drafter(name), np.arange(30) % 5, n_max=4,
                              seq_id=2**31 - 1)
            except ValueError:
                print("ValueError", name)
    """)
    assert r.returncode == 0, crash_lines(r.stderr)
    assert r.stdout.count("ValueError") == 5, r.stdout


def test_decode_position_near_int32_max_is_an_overflow(tiny_model):
    with Context(tiny_model, n_ctx=64, n_threads=N_THREADS) as ctx:
        with pytest.raises(ContextOverflowError):
            ctx.decode([1, 2], pos=2**31 - 1)


# -- token ids outside int32 ------------------------------------------------------------------

@pytest.mark.parametrize("bad", [2**32 + 300, -(2**32) + 300, 2**63 - 1])
def test_token_ids_outside_int32_are_rejected_not_wrapped(tiny_model, bad):
    tokens = np.array([1, bad], dtype=np.int64)
    with Context(tiny_model, n_ctx=64, n_threads=N_THREADS) as ctx:
        with pytest.raises(ValueError, match="token"):
            ctx.decode(tokens)
    with pytest.raises(ValueError, match="token"):
        tiny_model.detokenize(tokens)
    with Engine(tiny_model, drafter="suffix", n_ctx=128, n_threads=N_THREADS) as engine:
        with pytest.raises(ValueError, match="token"):
            engine.generate(tokens, max_tokens=2)
        with pytest.raises(ValueError, match="token"):
            list(engine.stream(tokens, max_tokens=2))
        with pytest.raises(ValueError, match="token"):
            engine.generate_batch([tokens], max_tokens=2)
    assert np.array([2**32 + 300]).astype(np.int32)[0] == 300     # what the cast did before


def test_uint64_token_ids_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="token"):
        tiny_model.detokenize(np.array([2**32 + 5], dtype=np.uint64))


# -- threads ----------------------------------------------------------------------------------

def test_model_close_while_tokenize_runs_in_another_thread(tiny_model_path):
    # tokenize runs without the GIL; close() used to free the vocabulary under it (5 of 5 runs)
    r = run_python(f"""
        import threading, time
        from spec._runtime._core import Context, Model
        from spec._runtime._errors import ClosedError
        text = "hello world, " * 400000
        for round in range(5):
            model = Model({str(tiny_model_path)!r})
            out = {{}}
            def work():
                try:
                    out["n"] = len(model.tokenize(text))
                except ClosedError:
                    out["n"] = "closed"
            t = threading.Thread(target=work)
            t.start()
            time.sleep(0.05)
            model.close()
            t.join()
            print("tokenize", out["n"])
        for round in range(5):
            model = Model({str(tiny_model_path)!r})
            out = {{}}
            def work():
                try:
                    ctx = Context(model, n_ctx=4096, n_threads=1)
                    ctx.decode([1, 2, 3])
                    ctx.close()
                    out["r"] = "ok"
                except ClosedError:
                    out["r"] = "closed"
            t = threading.Thread(target=work)
            t.start()
            time.sleep(0.01)
            model.close()
            t.join()
            print("context", out["r"])
    """, timeout=300)
    assert r.returncode == 0, f"crashed (rc {r.returncode}): {crash_lines(r.stderr)}"
    assert r.stdout.count("tokenize") == 5 and r.stdout.count("context") == 5, r.stdout


def test_model_close_waits_for_tokenize(tiny_model_path):
    model = Model(tiny_model_path)
    done = threading.Event()
    result = {}

    def work():
        result["n"] = len(model.tokenize("hello world, " * 200000))
        done.set()

    t = threading.Thread(target=work)
    t.start()
    model.close()               # must not free the vocabulary under the running tokenize
    t.join()
    assert model.closed
    assert result.get("n", 0) > 200000 or not done.is_set()
    with pytest.raises(ClosedError):
        model.tokenize("x")


@pytest.mark.parametrize("name", ["suffix", "ngram-map-k", "llama:ngram-simple"])
def test_a_drafter_serves_one_engine_at_a_time(tiny_model, name):
    drafter = make_drafter(name)
    with Engine(tiny_model, drafter=drafter, n_ctx=256, n_threads=N_THREADS) as a, \
            Engine(tiny_model, drafter=drafter, n_ctx=256, n_threads=N_THREADS) as b:
        stream = a.stream("Hello world", max_tokens=8)
        next(stream)                                    # a's generation holds the drafter
        with pytest.raises(EngineBusyError, match="another engine"):
            b.generate("Hello", max_tokens=4)
        with pytest.raises(EngineBusyError):
            drafter.begin([1, 2, 3])                     # nor may research code drive it now
        rest = list(stream)
        assert isinstance(rest, list)
        b.generate("Hello", max_tokens=4)               # free again once a's generation ended
        drafter.begin([1, 2, 3])


def test_a_drafter_shared_by_engines_in_threads_does_not_crash(tiny_model_path):
    # the suffix tree crashed 7 of 7 runs (double free) when two engines drove it at once
    r = run_python(f"""
        import threading
        import spec
        from spec._runtime._errors import EngineBusyError
        model = spec.Model({str(tiny_model_path)!r})
        for name in ["suffix", "llama:ngram-simple", "ngram-map-k"]:
            drafter = spec.make_drafter(name)
            engines = [spec.Engine(model, drafter=drafter, n_ctx=512, n_threads=1)
                       for _ in range(3)]
            outcomes = []
            def work(engine):
                for _ in range(4):
                    try:
                        engine.generate("Hello world " * 5, max_tokens=24)
                        outcomes.append("ok")
                    except EngineBusyError:
                        outcomes.append("busy")
            threads = [threading.Thread(target=work, args=(e,)) for e in engines]
            for t in threads: t.start()
            for t in threads: t.join()
            print(name, len(outcomes), outcomes.count("ok") >= 1)
    """, timeout=300)
    assert r.returncode == 0, f"crashed (rc {r.returncode}): {crash_lines(r.stderr)}"
    assert r.stdout.split("\n")[:3] == [f"{n} 12 True" for n in
                                        ["suffix", "llama:ngram-simple", "ngram-map-k"]], r.stdout


def test_context_calls_from_another_thread_during_a_generation_are_refused(tiny_model):
    with Engine(tiny_model, drafter="suffix", n_ctx=256, n_threads=N_THREADS) as engine:
        expected = engine.generate("Hello world", max_tokens=12).tokens
        stream = engine.stream("Hello world", max_tokens=12)
        next(stream)
        errors = []

        def meddle():
            for call in (engine.ctx.kv_clear, lambda: engine.ctx.decode([5]), engine.ctx.close):
                try:
                    call()
                except EngineBusyError as e:
                    errors.append(e)

        t = threading.Thread(target=meddle)
        t.start()
        t.join()
        assert len(errors) == 3
        list(stream)
        # the output was not changed by the refused calls
        assert engine.generate("Hello world", max_tokens=12).tokens.tolist() == expected.tolist()
        engine.ctx.kv_clear()                   # free once the generation ended


def test_raw_context_close_during_an_engine_generation_in_threads(tiny_model_path):
    r = run_python(f"""
        import threading, time
        import spec
        from spec._runtime._errors import ClosedError, EngineBusyError
        engine = spec.Engine({str(tiny_model_path)!r}, drafter="suffix", n_ctx=2048, n_threads=1)
        def gen():
            try:
                for _ in range(3):
                    engine.generate("Hello world " * 20, max_tokens=200)
            except ClosedError:
                pass
        t = threading.Thread(target=gen)
        t.start()
        busy = 0
        for _ in range(50):
            time.sleep(0.01)
            try:
                engine.ctx.kv_clear()
            except EngineBusyError:
                busy += 1
        t.join()
        print("busy", busy > 0)
    """, timeout=300)
    assert_clean(r, "busy True")


# -- recurrent rollback depth -----------------------------------------------------------------

def test_n_rs_seq_bounded_by_the_batch(tiny_model):
    # llama.cpp asserts n_ubatch > n_rs_seq + 1 (llama_batch_allocr::split_equal)
    with pytest.raises(ValueError, match="n_rs_seq"):
        Context(tiny_model, n_ctx=64, n_batch=16, n_rs_seq=15, n_threads=N_THREADS)


def test_n_rs_seq_bound_on_an_mtp_model(tmp_path, vocab_path):
    path = spec.testing.make_tiny_qwen35_mtp(tmp_path / "mtp.gguf", vocab=vocab_path("llama-spm"))
    model = Model(path, load_mtp=True)
    with pytest.raises(ValueError, match="n_rs_seq"):
        Engine(model, drafter="mtp", n_ctx=256, n_threads=N_THREADS,
               drafter_params={"n_rs_seq": 1000})
    with pytest.raises(ValueError, match="n_rs_seq"):
        Context(model, n_ctx=256, n_batch=64, n_rs_seq=63, n_threads=N_THREADS)
    with Context(model, n_ctx=256, n_batch=64, n_rs_seq=62, n_threads=N_THREADS) as ctx:
        ctx.decode(np.arange(1, 100, dtype=np.int32))   # the largest depth allowed decodes


# -- NaN weights ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_model_path(tiny_model_path, tmp_path_factory):
    data = bytearray(tiny_model_path.read_bytes())
    off = gguf_tensor_offset(bytes(data), "output_norm.weight")
    data[off:off + 4 * 64] = np.full(64, np.nan, dtype=np.float32).tobytes()
    path = tmp_path_factory.mktemp("nan") / "nan.gguf"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("drafter", [None, "suffix"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_weights_raise_instead_of_emitting_token_zero(nan_model_path, drafter, temperature):
    with Engine(str(nan_model_path), drafter=drafter, n_ctx=128, n_threads=N_THREADS) as engine:
        with pytest.raises(NonFiniteLogitsError, match="nan.gguf"):
            engine.generate("Hello world", max_tokens=8, temperature=temperature, seed=1)
        with pytest.raises(NonFiniteLogitsError):
            engine.generate_batch(["Hello", "world"], n_parallel=2, max_tokens=8)
        engine.ctx.kv_clear()               # still usable afterwards


def test_nan_weights_in_the_plain_loop(nan_model_path):
    model = Model(nan_model_path)
    with Context(model, n_ctx=64, n_threads=N_THREADS) as ctx:
        with pytest.raises(NonFiniteLogitsError):
            ctx.generate_greedy(model.tokenize("Hello"), 4)


# -- arguments --------------------------------------------------------------------------------

def test_a_single_string_is_not_a_batch(tiny_model):
    with Engine(tiny_model, drafter=None, n_ctx=128, n_threads=N_THREADS) as engine:
        with pytest.raises(TypeError, match="single string"):
            engine.generate_batch("abc")
        with pytest.raises(TypeError, match="single string"):
            engine.generate_batch(b"abc")


@pytest.mark.parametrize("kw", [{"temperature": "0.7"}, {"top_p": "1"}, {"min_p": None},
                                {"top_k": 2.5}, {"temperature": True}])
def test_sampling_parameters_of_the_wrong_type_are_named(tiny_model, kw):
    with Engine(tiny_model, drafter=None, n_ctx=128, n_threads=N_THREADS) as engine:
        with pytest.raises(TypeError, match=next(iter(kw))):
            engine.generate("Hello", max_tokens=2, **kw)


def test_empty_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="empty"):
        Engine("")
    with pytest.raises(FileNotFoundError, match="empty"):
        Model("")


def test_bytes_and_pathlike_model_paths(tiny_model_path):
    for path in (bytes(tiny_model_path), tiny_model_path, str(tiny_model_path)):
        with Model(path) as model:
            assert model.n_vocab == 32000


@pytest.mark.parametrize("name", ALL_DRAFTERS)
def test_accept_more_than_the_last_draft_is_refused(name):
    drafter = make_drafter(name)
    history = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3] * 6, dtype=np.int32)
    drafter.begin(history)
    with pytest.raises(ValueError, match="last draft"):
        drafter.accept(1)                              # before any draft
    draft = drafter.draft(history, id_last=4, n_max=4)
    with pytest.raises(ValueError, match="last draft"):
        drafter.accept(len(draft) + 1)
    drafter.accept(len(draft))
    with pytest.raises(ValueError, match="last draft"):
        drafter.accept(1)                              # once per draft


@pytest.mark.parametrize("name", CYTHON_DRAFTERS)
def test_draft_scans_only_the_history_it_has_not_seen(name):
    """draft() costs O(1) in the history length: an int32 history is scanned past what earlier
    calls of the sequence scanned, and a shorter (new) history is scanned whole."""
    drafter = make_drafter(name)
    history = np.array([1, 2, 3, 4] * 40, dtype=np.int32)
    drafter.begin(history[:8])
    drafter.draft(history[:100], id_last=1, n_max=4)
    grown = history.copy()
    grown[150] = -2
    with pytest.raises(ValueError, match=r"history\[150\] = -2"):
        drafter.draft(grown, id_last=1, n_max=4)
    fresh = history[:20].copy()
    fresh[3] = -9
    with pytest.raises(ValueError, match=r"history\[3\] = -9"):
        drafter.draft(fresh, id_last=1, n_max=4)
    for bad in ([1, 2, -3, 4], np.array([1, -3], dtype=np.int64)):   # converted: checked whole
        with pytest.raises(ValueError, match="not a token id"):
            drafter.draft(bad, id_last=1, n_max=4)


def test_a_history_changed_in_place_cannot_draft_a_negative_id():
    drafter = spec.NgramSimple(size_n=2, size_m=4)
    history = np.array([7, 1, 2, 3, 4, 9, 9, 9, 9, 1, 2, 3], dtype=np.int32)
    drafter.begin(history[:2])
    assert drafter.draft(history, id_last=4, n_max=4).tolist() == [9, 9, 9, 9]
    history[5] = -5                     # behind the scanned length: not scanned again
    with pytest.raises(ValueError, match="draft holds -5"):
        drafter.draft(history, id_last=4, n_max=4)


def test_a_sequence_smaller_than_the_loop_drafts_is_refused(tiny_model):
    with Context(tiny_model, n_ctx=128, n_threads=N_THREADS) as ctx:
        loop = Loop(ctx, make_drafter("suffix"), Drafting(16))
        small = Sequence(0, tiny_model.tokenize("Hello"), 8, 4)
        with pytest.raises(ValueError, match="drafts"):
            loop.start(small)
        with pytest.raises(ValueError, match="sequence id"):
            loop.start(Sequence(3, tiny_model.tokenize("Hello"), 8, 16))


def test_cli_generate_with_a_directory_as_model(tmp_path):
    from test_cli import run_cli
    r = run_cli("generate", "--model", tmp_path, "--prompt", "x", "--max-tokens", 2)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "directory" in r.stderr
