"""spec._runtime._core: Model and Context handles, plain greedy generation, KV operations, bad input.

Greedy generation is checked against llama.cpp's own ``llama-completion`` tool built from the
same source, on a tiny random f32 model, whose top logits are far apart enough that batch shapes
and thread counts do not change the argmax chain.
"""
from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import spec.testing
from spec import _build_info
from spec._runtime._core import Context, Model
from spec._runtime._errors import (ClosedError, ContextOverflowError, InvalidBatchError, ModelLoadError,
                          SpecError)
from spec.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Hello world", "The quick brown fox", "def f(x):", "1 2 3 4"]
N_THREADS = 1     # robust on a busy 2-core machine (no OpenMP barrier spinning)


def pieces_text(model, tokens) -> str:
    """The generated text as llama.cpp prints it: the token pieces, concatenated."""
    return b"".join(model.token_to_piece(int(t)) for t in tokens).decode("utf-8", "replace")


def run_python(code: str, timeout=120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for calls that might abort the process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GGML_NO_BACKTRACE": "1"}    # an abort should not wait for gdb to attach
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(ROOT))


def crash_lines(stderr: str) -> str:
    """The informative lines of a crashed interpreter's stderr (not the debugger's backtrace)."""
    keep = [ln for ln in stderr.splitlines() if "GGML_ASSERT" in ln or "Error" in ln
            or "error" in ln]
    return "\n".join(keep[-10:]) or stderr[-1000:]


@pytest.fixture
def ctx(tiny_model):
    with Context(tiny_model, n_ctx=256, n_threads=N_THREADS) as c:
        yield c


# -- tiny model synthesis --------------------------------------------------------------------

def test_make_tiny_llama_is_deterministic(tmp_path, vocab_path):
    vocab = vocab_path("llama-spm")
    a = spec.testing.make_tiny_llama(tmp_path / "a.gguf", vocab=vocab, n_layer=1, seed=7)
    b = spec.testing.make_tiny_llama(tmp_path / "b.gguf", vocab=vocab, n_layer=1, seed=7)
    c = spec.testing.make_tiny_llama(tmp_path / "c.gguf", vocab=vocab, n_layer=1, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.stat().st_size == c.stat().st_size


# -- metadata and vocabulary -----------------------------------------------------------------

def test_metadata(tiny_model):
    md = tiny_model.metadata
    assert tiny_model.architecture == "llama" == md["general.architecture"]
    assert md["llama.block_count"] == "2"
    assert md["llama.embedding_length"] == "64"
    assert tiny_model.n_ctx_train == 4096 == int(md["llama.context_length"])
    assert tiny_model.n_layer == 2 and tiny_model.n_embd == 64
    assert tiny_model.n_params > 0 and tiny_model.size_bytes > 0
    assert "llama" in tiny_model.description


def test_special_tokens_match_the_vocabulary_file(tiny_model, vocab_path):
    kv = {k: v for k, _, _, v in spec.testing.read_tokenizer_kv(vocab_path("llama-spm"))}
    assert tiny_model.n_vocab == len(kv["tokenizer.ggml.tokens"])
    st = tiny_model.special_tokens
    assert st["bos"] == tiny_model.bos == kv["tokenizer.ggml.bos_token_id"]
    assert st["eos"] == tiny_model.eos == kv["tokenizer.ggml.eos_token_id"]
    assert tiny_model.token_to_piece(tiny_model.eos, special=True) == \
        kv["tokenizer.ggml.tokens"][tiny_model.eos]
    assert tiny_model.add_bos == kv.get("tokenizer.ggml.add_bos_token", True)
    toks = tiny_model.tokenize("Hello", add_special=True)
    assert toks[0] == tiny_model.bos
    assert tiny_model.tokenize("Hello", add_special=False).tolist() == toks[1:].tolist()


def test_eog(tiny_model):
    assert tiny_model.is_eog(tiny_model.eos)
    assert not tiny_model.is_eog(tiny_model.tokenize("Hello", add_special=False)[0])
    mask = tiny_model.eog_mask()
    assert mask.dtype == bool and mask.shape == (tiny_model.n_vocab,)
    assert mask[tiny_model.eos]
    assert [int(t) for t in np.flatnonzero(mask)] == \
        [t for t in range(tiny_model.n_vocab) if tiny_model.is_eog(t)]


# -- greedy generation -----------------------------------------------------------------------

def test_greedy_is_deterministic(tiny_model, ctx):
    prompt = tiny_model.tokenize("Once upon a time")
    first, prefill_s, decode_s = ctx.generate_greedy(prompt, 24)
    second = ctx.generate_greedy(prompt, 24)[0]
    assert first.dtype == np.int32 and len(first) == 24
    assert prefill_s >= 0 and decode_s >= 0
    assert first.tolist() == second.tolist()
    with Context(tiny_model, n_ctx=512, n_batch=3, n_threads=N_THREADS) as fresh:
        assert fresh.generate_greedy(prompt, 24)[0].tolist() == first.tolist()


def test_greedy_equals_argmax_of_decoded_logits(tiny_model, ctx):
    """The nogil loop is the argmax chain of decode() + logits()."""
    prompt = tiny_model.tokenize("The quick brown fox")
    out = ctx.generate_greedy(prompt, 10)[0]
    ctx.kv_clear()
    ctx.decode(prompt)
    manual = []
    for _ in range(10):
        tok = int(np.argmax(ctx.logits()[-1]))
        manual.append(tok)
        ctx.decode([tok])
    assert manual == out.tolist()


def test_stop_at_eog_false_runs_the_full_budget(tiny_model, ctx):
    prompt = tiny_model.tokenize("Hello")
    stopping = ctx.generate_greedy(prompt, 16)[0]
    running = ctx.generate_greedy(prompt, 16, stop_at_eog=False)[0]
    assert len(running) == 16
    assert running[:len(stopping)].tolist() == stopping.tolist()


def gguf_tensor_offset(data: bytes, name: str) -> int:
    """Byte offset of tensor ``name``'s data in a GGUF v3 file (default 32-byte alignment)."""
    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    off = 24

    def skip_value(off, vtype):
        if vtype == 8:                                  # string
            return off + 8 + struct.unpack_from("<Q", data, off)[0]
        if vtype == 9:                                  # array
            sub, n = struct.unpack_from("<IQ", data, off)
            off += 12
            if sub in scalar:
                return off + n * scalar[sub]
            for _ in range(n):
                off = skip_value(off, sub)
            return off
        return off + scalar[vtype]

    alignment = 32
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", data, off)
        key = data[off + 8:off + 8 + n]
        off += 8 + n
        (vtype,) = struct.unpack_from("<I", data, off)
        if key == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", data, off + 4)
        off = skip_value(off + 4, vtype)
    found = None
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", data, off)
        tname = data[off + 8:off + 8 + n].decode()
        off += 8 + n
        (n_dims,) = struct.unpack_from("<I", data, off)
        off += 4 + 8 * n_dims + 4
        (rel,) = struct.unpack_from("<Q", data, off)
        off += 8
        if tname == name:
            found = rel
    assert found is not None, name
    return (off + alignment - 1) // alignment * alignment + found


def test_greedy_stops_at_eog(tiny_model, tiny_model_path, tmp_path):
    """Give EOS the output row of the 4th greedy token (x1.01): greedy then picks EOS there.
    The loop stops before it; with stop_at_eog=False it is emitted and generation goes on."""
    prompt = tiny_model.tokenize("Hello world")
    with Context(tiny_model, n_ctx=64, n_threads=N_THREADS) as c:
        plain = c.generate_greedy(prompt, 8)[0]
    assert len(plain) == 8
    data = bytearray(tiny_model_path.read_bytes())
    n_embd = tiny_model.n_embd
    head = np.frombuffer(data, dtype=np.float32, count=tiny_model.n_vocab * n_embd,
                         offset=gguf_tensor_offset(data, "output.weight")).reshape(-1, n_embd)
    head[tiny_model.eos] = head[plain[3]] * np.float32(1.01)
    path = tmp_path / "eos.gguf"
    path.write_bytes(data)
    with Model(path) as model, Context(model, n_ctx=64, n_threads=N_THREADS) as c:
        stopped = c.generate_greedy(prompt, 8)[0]
        assert stopped.tolist() == plain[:3].tolist()
        running = c.generate_greedy(prompt, 8, stop_at_eog=False)[0]
        assert len(running) == 8
        assert running[:4].tolist() == [*plain[:3].tolist(), model.eos]


def test_max_tokens_zero_still_prefills(tiny_model, ctx):
    prompt = tiny_model.tokenize("Hello world")
    out = ctx.generate_greedy(prompt, 0)[0]
    assert out.size == 0
    assert ctx.kv_pos_max(0) == len(prompt) - 1


@pytest.fixture(scope="module")
def llama_completion() -> Path:
    binary = Path(_build_info.LLAMA_CPP_BUILD) / "bin" / "llama-completion"
    if not binary.exists():
        r = subprocess.run([sys.executable, "buildsupport/llama_build.py", "llama-completion"],
                           cwd=str(ROOT), capture_output=True, text=True)
        if r.returncode != 0 or not binary.exists():
            pytest.skip(f"could not build llama-completion ({binary}): {r.stderr[-500:]}")
    return binary


def completion_text(binary, model_path, prompt, n) -> str:
    """llama-completion's greedy continuation. Its output goes through an asynchronous log
    thread that can drop the tail on exit under load; the final "\\n\\n" marks a full print."""
    cmd = [str(binary), "-m", str(model_path), "-p", prompt, "-n", str(n), "--temp", "0",
           "-t", str(N_THREADS), "-c", "256", "-no-cnv", "--no-display-prompt", "--simple-io"]
    for _ in range(3):
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
        if r.stdout.endswith(b"\n\n"):
            return r.stdout[:-2].decode("utf-8", "replace")
    raise AssertionError(f"llama-completion never printed its final newlines: {r.stdout!r}")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_equals_llama_completion(tiny_model, tiny_model_path, ctx, llama_completion,
                                        prompt):
    n = 12
    # llama-completion tokenizes its prompt with add_special=true, parse_special=true
    tokens = tiny_model.tokenize(prompt, add_special=True, parse_special=True)
    ours = ctx.generate_greedy(tokens, n)[0]
    assert len(ours) == n, "the prompt reaches an EOG token; pick another prompt"
    assert completion_text(llama_completion, tiny_model_path, prompt, n) == \
        pieces_text(tiny_model, ours)


def test_detokenize_drops_the_spm_prefix_space(tiny_model, ctx):
    """detokenize() is llama_detokenize: with an SPM vocabulary it drops the leading space of
    the first piece (it treats the tokens as a whole text), which the pieces keep."""
    out = ctx.generate_greedy(tiny_model.tokenize("Hello world"), 8)[0]
    text = pieces_text(tiny_model, out)
    expected = text[1:] if text.startswith(" ") else text
    assert tiny_model.detokenize(out) == expected


def test_engine_without_drafter_equals_generate_greedy(tiny_model, ctx):
    for prompt in PROMPTS:
        tokens = tiny_model.tokenize(prompt)
        ours = ctx.generate_greedy(tokens, 16)[0]
        with Engine(tiny_model, drafter=None, n_ctx=256, n_threads=N_THREADS) as engine:
            result = engine.generate(prompt, max_tokens=16, temperature=0.0, seed=1)
        assert result.tokens.tolist() == ours.tolist(), prompt
        assert result.text == pieces_text(tiny_model, ours)
        assert result.stats.n_generated == len(ours) and result.stats.n_prompt == len(tokens)
        assert result.stats.n_drafted == 0


# -- logits views ----------------------------------------------------------------------------

def test_logits_view_shape_and_rows(tiny_model, ctx):
    tokens = tiny_model.tokenize("Hello world, this is a test")
    ctx.decode(tokens, all_logits=True)
    view = ctx.logits()
    assert view.dtype == np.float32 and view.shape == (len(tokens), tiny_model.n_vocab)
    assert np.isfinite(view).all()
    last = view[-1].copy()
    ctx.kv_clear()
    ctx.decode(tokens)
    assert ctx.logits().shape == (1, tiny_model.n_vocab)
    np.testing.assert_allclose(ctx.logits()[0], last, rtol=0, atol=1e-4)


def test_logits_view_outlives_close(tiny_model):
    c = Context(tiny_model, n_ctx=64, n_threads=N_THREADS)
    c.decode(tiny_model.tokenize("Hello world"), all_logits=True)
    view = c.logits()
    expected = view.copy()
    c.close()
    assert c.closed
    with pytest.raises(ClosedError):
        c.logits()
    with pytest.raises(ClosedError):
        c.decode([1])
    junk = [np.random.default_rng(0).standard_normal(view.size).astype(np.float32)
            for _ in range(4)]                      # reuse of freed memory would show here
    np.testing.assert_array_equal(view, expected)
    del view, junk
    gc.collect()
    c.close()                                       # idempotent


def test_logits_view_keeps_an_unreferenced_context_alive(tiny_model):
    c = Context(tiny_model, n_ctx=64, n_threads=N_THREADS)
    c.decode(tiny_model.tokenize("Hello world"), all_logits=True)
    view = c.logits()
    expected = view.copy()
    del c
    gc.collect()
    np.testing.assert_array_equal(view, expected)
    del view
    gc.collect()


def test_model_close_waits_for_its_contexts(tiny_model_path):
    model = Model(tiny_model_path)
    c = Context(model, n_ctx=64, n_threads=N_THREADS)
    prompt = model.tokenize("Hello")
    before = c.generate_greedy(prompt, 4)[0]
    model.close()
    assert model.closed
    with pytest.raises(ClosedError):
        model.tokenize("Hello")
    with pytest.raises(ClosedError):
        Context(model, n_ctx=64)
    assert c.generate_greedy(prompt, 4)[0].tolist() == before.tolist()  # weights still there
    view = c.logits()
    expected = view.copy()
    c.close()                                       # the view now holds context and model
    model.close()
    np.testing.assert_array_equal(view, expected)
    del view
    gc.collect()


# -- KV memory -------------------------------------------------------------------------------

def test_kv_remove_then_redecode(tiny_model, ctx):
    tokens = tiny_model.tokenize("Hello world, this is a test of the cache")
    n, k = len(tokens), 4
    ctx.decode(tokens, all_logits=True)
    full = ctx.logits().copy()
    assert ctx.kv_pos_max(0) == n - 1
    assert ctx.kv_pos_min(0) == 0
    assert ctx.kv_remove(0, k, -1)
    assert ctx.kv_pos_max(0) == k - 1
    ctx.decode(tokens[k:], all_logits=True)       # default position: after the last one
    np.testing.assert_allclose(ctx.logits(), full[k:], rtol=0, atol=1e-4)
    assert ctx.kv_remove(0, k + 1, -1)
    ctx.decode(tokens[k + 1:k + 2], pos=k + 1)     # explicit position
    np.testing.assert_allclose(ctx.logits()[0], full[k + 1], rtol=0, atol=1e-4)
    ctx.kv_clear()
    assert ctx.kv_pos_max(0) == -1


def test_kv_copy_between_sequences(tiny_model):
    tokens = tiny_model.tokenize("Hello world, this is a test")
    with Context(tiny_model, n_ctx=256, n_seq_max=2, n_threads=N_THREADS) as c:
        c.decode(tokens[:-1], seq_id=0)
        c.kv_copy(0, 1)
        assert c.kv_pos_max(1) == len(tokens) - 2
        c.decode(tokens[-1:], seq_id=1)
        on_copy = c.logits()[0].copy()
        assert c.kv_pos_max(0) == len(tokens) - 2      # the source is untouched
        c.decode(tokens[-1:], seq_id=0)
        np.testing.assert_allclose(c.logits()[0], on_copy, rtol=0, atol=1e-4)
        assert c.kv_remove(-1)                         # every sequence
        assert c.kv_pos_max(0) == -1 and c.kv_pos_max(1) == -1


def test_decode_at_an_occupied_position_is_an_invalid_batch(tiny_model, ctx):
    tokens = tiny_model.tokenize("Hello world")
    ctx.decode(tokens)
    with pytest.raises(InvalidBatchError):
        ctx.decode(tokens[:1], pos=0)


# -- bad input -------------------------------------------------------------------------------

def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        Model(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("this is not a model\n")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        Model(path)


def test_model_path_is_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError):
        Model(tmp_path)


def test_truncated_gguf(tmp_path, tiny_model_path):
    data = tiny_model_path.read_bytes()
    cuts = {"header": 100, "metadata": 4000, "tensor-data": len(data) // 2, "tail": len(data) - 64}
    paths = []
    for name, cut in cuts.items():
        p = tmp_path / f"trunc-{name}.gguf"
        p.write_bytes(data[:cut])
        paths.append(str(p))
    # first in a separate interpreter: an abort inside llama.cpp must not take pytest down
    r = run_python(f"""
        from spec._runtime._core import Model
        from spec._runtime._errors import ModelLoadError
        for p in {paths!r}:
            try:
                Model(p)
            except ModelLoadError:
                print("ModelLoadError")
            else:
                print("loaded")
    """)
    assert r.returncode == 0, \
        f"loading a truncated GGUF crashed (rc {r.returncode}): {crash_lines(r.stderr)}"
    assert r.stdout.split() == ["ModelLoadError"] * len(paths), r.stdout
    for p in paths:
        with pytest.raises(ModelLoadError):
            Model(p)


@pytest.mark.parametrize("call", ["detokenize", "token_to_piece", "is_eog", "decode",
                                  "generate_greedy"])
@pytest.mark.parametrize("bad", [-1, "n_vocab", 2**31 - 1])
def test_token_ids_outside_the_vocabulary(tiny_model, ctx, call, bad):
    bad = tiny_model.n_vocab if bad == "n_vocab" else bad
    with pytest.raises(ValueError, match=str(bad)):
        if call == "detokenize":
            tiny_model.detokenize([1, bad])
        elif call == "token_to_piece":
            tiny_model.token_to_piece(bad)
        elif call == "is_eog":
            tiny_model.is_eog(bad)
        elif call == "decode":
            ctx.decode([1, bad])
        else:
            ctx.generate_greedy([1, bad], 2)


def test_token_arrays_must_be_1d_integers(ctx):
    with pytest.raises(ValueError, match="1-D"):
        ctx.decode([[1, 2]])
    with pytest.raises(TypeError, match="integer"):
        ctx.decode([1.5, 2.0])
    with pytest.raises(ValueError, match="empty"):
        ctx.decode([])
    with pytest.raises(ValueError, match="empty"):
        ctx.generate_greedy([], 4)
    with pytest.raises(ValueError, match="max_tokens"):
        ctx.generate_greedy([1], -1)


def test_tokenize_rejects_non_text(tiny_model):
    """An int is not text: bytes(5) would silently tokenize five NUL bytes."""
    with pytest.raises(TypeError):
        tiny_model.tokenize(5)


def test_closed_model(tiny_model_path):
    model = Model(tiny_model_path, vocab_only=True)
    with model:
        assert model.tokenize("Hi").size > 0
    assert model.closed
    for call in (lambda: model.tokenize("Hi"), lambda: model.detokenize([1]),
                 lambda: model.token_to_piece(1), lambda: model.is_eog(2),
                 lambda: model.metadata, lambda: model.eos):
        with pytest.raises(ClosedError):
            call()
    model.close()                                   # idempotent


def test_closed_context(tiny_model):
    with Context(tiny_model, n_ctx=64, n_threads=N_THREADS) as c:
        pass
    assert c.closed
    for call in (lambda: c.decode([1]), lambda: c.generate_greedy([1], 2), c.kv_clear,
                 lambda: c.kv_pos_max(0), lambda: c.kv_remove(0), c.logits):
        with pytest.raises(ClosedError):
            call()


@pytest.mark.parametrize("name", ["n_ctx", "n_batch", "n_threads", "n_seq_max"])
@pytest.mark.parametrize("value", [0, -1])
def test_context_sizes_must_be_positive(tiny_model, name, value):
    with pytest.raises(ValueError, match=name):
        Context(tiny_model, **{name: value})


def test_prompt_plus_max_tokens_over_n_ctx(tiny_model, ctx):
    prompt = tiny_model.tokenize("Hello world")
    max_tokens = ctx.n_ctx - len(prompt) + 1
    with pytest.raises(ContextOverflowError) as info:
        ctx.generate_greedy(prompt, max_tokens)
    msg = str(info.value)
    assert str(len(prompt)) in msg and str(max_tokens) in msg and str(ctx.n_ctx) in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, SpecError)
    # exactly full is fine
    assert len(ctx.generate_greedy(prompt, ctx.n_ctx - len(prompt))[0]) <= ctx.n_ctx - len(prompt)


def test_decode_past_n_ctx(tiny_model, ctx):
    with pytest.raises(ContextOverflowError, match=str(ctx.n_ctx)):
        ctx.decode(np.full(ctx.n_ctx + 1, 100, dtype=np.int32))
    with pytest.raises(ContextOverflowError):
        ctx.decode([100], pos=ctx.n_ctx)
    with pytest.raises(ValueError, match="pos must be >= 0"):
        ctx.decode([100], pos=-5)


def test_bad_sequence_ids(tiny_model, ctx):
    for call in (lambda: ctx.decode([1], seq_id=1), lambda: ctx.decode([1], seq_id=-1),
                 lambda: ctx.kv_pos_max(1), lambda: ctx.kv_copy(0, 1),
                 lambda: ctx.kv_remove(1), lambda: ctx.generate_greedy([1], 2, seq_id=5)):
        with pytest.raises(ValueError, match="seq_id"):
            call()


def test_context_over_a_vocab_only_model_raises(vocab_path):
    """A vocabulary-only model has no weights: running it must raise, not abort the process."""
    r = run_python(f"""
        from spec._runtime._core import Model, Context
        m = Model({str(vocab_path("llama-spm"))!r}, vocab_only=True)
        try:
            c = Context(m, n_ctx=64)
            c.decode([1, 2, 3])
        except Exception as e:
            print("raised", type(e).__name__)
        else:
            print("no error")
    """)
    assert r.returncode == 0, f"interpreter died (rc {r.returncode}): {crash_lines(r.stderr)}"
    assert r.stdout.startswith("raised"), r.stdout


def test_a_live_logits_view_is_never_left_dangling(tiny_model):
    """A decode with more output rows than llama.cpp's buffer holds reallocates it: with a
    logits() view alive that decode is refused (the view used to point into freed memory)."""
    ctx = Context(tiny_model, n_ctx=256, n_batch=64)
    tokens = np.arange(3, 43, dtype=np.int32)
    ctx.decode(tokens[:4])
    view = ctx.logits()
    first = view.copy()
    with pytest.raises(BufferError, match="delete \\(or copy\\) the view"):
        ctx.decode(tokens[4:20], all_logits=True)
    np.testing.assert_array_equal(view, first)       # untouched: nothing was decoded
    del view
    ctx.decode(tokens[4:20], all_logits=True)        # the buffer grows to 16 rows
    view = ctx.logits()
    assert view.shape[0] == 16
    ctx.decode(tokens[20:28], all_logits=True)       # fits the buffer: a view may stay alive
    assert view.shape[0] == 16 and ctx.logits().shape[0] == 8
    del view
    ctx.close()


def test_threads_sharing_a_context_take_turns(tiny_model):
    """Decodes run without the GIL: two threads used to drive one llama.cpp context at once
    (the process aborted). Each method now holds the context's lock; outputs are unchanged."""
    prompts = [np.arange(5 + 3 * i, 25 + 3 * i, dtype=np.int32) for i in range(4)]
    with Context(tiny_model, n_ctx=512, n_seq_max=4, n_threads=1) as ctx:
        want = []
        for seq, p in enumerate(prompts):
            want.append(ctx.generate_greedy(p, 12, seq_id=seq, stop_at_eog=False)[0].tolist())
            ctx.kv_remove(seq)
        got, errors = {}, []

        def work(seq):
            try:
                for _ in range(3):
                    ctx.kv_remove(seq)
                    ctx.decode(prompts[seq], pos=0, seq_id=seq)
                    assert ctx.kv_pos_max(seq) == len(prompts[seq]) - 1
                    view = ctx.logits()
                    del view
                ctx.kv_remove(seq)
                got[seq] = ctx.generate_greedy(prompts[seq], 12, seq_id=seq,
                                               stop_at_eog=False)[0].tolist()
            except Exception as e:          # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert [got[s] for s in range(4)] == want
