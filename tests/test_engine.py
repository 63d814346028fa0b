"""The speculative engine: lossless greedy output, KV consistency, sampling, bad input."""
from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import pytest

import spec
from spec import Context
from spec.engine import DRAFTERS, Engine

from _lossless import assert_lossless

# Every drafter the engine knows by name, Cython and llama.cpp's own.
ALL_DRAFTERS = [*DRAFTERS, *(f"llama:{n}" for n in DRAFTERS if n.startswith("ngram"))]
# Drafters that learn only from the running sequence (ngram-cache needs repeated 1-4-grams with
# strict thresholds; it is exercised for losslessness but not required to accept).
MUST_ACCEPT = [d for d in ALL_DRAFTERS if "ngram-cache" not in d]

@pytest.fixture(scope="module")
def grounded(bigram_model):
    """A prompt whose continuation repeats earlier text (the bigram model's output cycles), with
    a corrupted copy of that continuation inside the prompt so drafts are partially rejected."""
    engine = Engine(bigram_model, drafter=None, n_ctx=2048)
    head = bigram_model.tokenize("def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")
    cont = engine.generate(head, max_tokens=240).tokens
    corrupted = cont.copy()
    corrupted[::9] = (corrupted[::9] + 7) % bigram_model.n_vocab
    prompt = np.concatenate([head, corrupted, head[1:]])
    plain = engine.generate(prompt, max_tokens=200, trace=True)
    engine.close()
    return prompt, plain


@pytest.mark.parametrize("drafter", ALL_DRAFTERS)
@pytest.mark.parametrize("n_draft", [3, "auto"])
def test_greedy_speculation_is_lossless(bigram_model, grounded, drafter, n_draft):
    prompt, plain = grounded
    with Engine(bigram_model, drafter=drafter, n_draft=n_draft, n_ctx=2048) as engine:
        result = engine.generate(prompt, max_tokens=200, trace=True)
    assert_lossless(bigram_model, plain, result)
    assert len(result.tokens) == len(plain.tokens)
    st = result.stats
    assert st.n_generated == len(result.tokens)
    assert st.n_accepted <= st.n_drafted
    assert sum(st.accept_hist) == st.n_steps
    # every step emits accepted + 1 tokens, but the first token comes from the prefill
    assert st.n_accepted + st.n_steps == st.n_generated - 1
    if drafter in MUST_ACCEPT:
        assert st.n_accepted > 0, f"{drafter} never had a draft accepted: the test is vacuous"


@pytest.mark.parametrize("drafter", ["ngram-simple", "suffix", "llama:ngram-map-k"])
def test_partial_acceptance_rolls_back_kv(bigram_model, grounded, drafter):
    prompt, plain = grounded
    with Engine(bigram_model, drafter=drafter, n_draft=8, n_ctx=2048) as engine:
        result = engine.generate(prompt, max_tokens=200, trace=True)
        hist = np.array(result.stats.accept_hist)
        partial = hist[:-1].sum() - hist[0]           # steps with 0 < accepted < full draft
        assert result.stats.n_accepted > 0
        assert partial > 0 or hist[0] > 0, "no draft was ever rejected: rollback untested"
        assert_lossless(bigram_model, plain, result)
        # The KV memory holds exactly prompt + generated minus the last (undecoded) token.
        n_kv = len(prompt) + len(result.tokens) - 1
        assert engine.ctx.kv_pos_max(0) == n_kv - 1
        # Decoding the last token on the engine's KV gives the logits a fresh prefill gives.
        last = result.tokens[-1:]
        engine.ctx.decode(last, pos=n_kv)
        seen = engine.ctx.logits()[-1].copy()
    everything = np.concatenate([prompt, result.tokens])
    with spec.Context(bigram_model, n_ctx=2048) as fresh:
        fresh.decode(everything)
        expected = fresh.logits()[-1].copy()
    np.testing.assert_allclose(seen, expected, atol=1e-3, rtol=1e-3)


def test_plain_engine_equals_context_greedy_loop(tiny_model):
    prompt = tiny_model.tokenize("The quick brown fox")
    with spec.Context(tiny_model, n_ctx=256) as ctx:
        expected, _, _ = ctx.generate_greedy(prompt, 40)
    with Engine(tiny_model, drafter=None, n_ctx=256) as engine:
        got = engine.generate(prompt, max_tokens=40).tokens
    np.testing.assert_array_equal(got, expected)


def test_stream_pieces_join_to_generate_text(bigram_model, grounded):
    prompt, plain = grounded
    with Engine(bigram_model, drafter="suffix", n_ctx=2048) as engine:
        pieces = list(engine.stream(prompt, max_tokens=60))
        result = engine.generate(prompt, max_tokens=60)
    assert len(pieces) > 1
    assert "".join(pieces) == result.text
    np.testing.assert_array_equal(result.tokens, plain.tokens[:60])


def test_stop_string_ends_generation(tiny_model):
    with Engine(tiny_model, drafter=None, n_ctx=256) as engine:
        full = engine.generate("The quick brown fox", max_tokens=30).text
        stop = full[10:14]
        cut = engine.generate("The quick brown fox", max_tokens=30, stop=[stop]).text
    assert cut == full[:full.find(stop)]


def test_sampling_is_reproducible_and_speculation_still_accepts(bigram_model, grounded):
    prompt, _ = grounded
    kw = dict(max_tokens=120, temperature=0.5, seed=1234)
    with Engine(bigram_model, drafter="ngram-simple", n_draft=6, n_ctx=2048) as engine:
        a = engine.generate(prompt, **kw)
        b = engine.generate(prompt, **kw)
        c = engine.generate(prompt, **{**kw, "seed": 99})
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert a.stats.n_accepted > 0


def test_keyboard_interrupt_leaves_engine_usable(tiny_model):
    prompt = tiny_model.tokenize("Once upon a time")
    with Engine(tiny_model, drafter="suffix", n_ctx=4096) as engine:
        expected = engine.generate(prompt, max_tokens=50).tokens
        timer = threading.Timer(0.2, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            engine.generate(prompt, max_tokens=4000)       # seconds of work: interrupted
        timer.cancel()
        again = engine.generate(prompt, max_tokens=50).tokens
    np.testing.assert_array_equal(again, expected)


def test_keyboard_interrupt_stops_plain_greedy_decoding(tiny_model):
    """Context.generate_greedy checks for signals every ~50 ms of work, not every token."""
    ctx = Context(tiny_model, n_ctx=4096)
    prompt = tiny_model.tokenize("Once upon a time")
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        ctx.generate_greedy(prompt, 4000, stop_at_eog=False)
    timer.cancel()
    assert time.perf_counter() - t0 < 5
    ctx.close()


@pytest.mark.parametrize("kwargs, error", [
    (dict(drafter="no-such-drafter"), ValueError),
    (dict(drafter="llama:suffix"), ValueError),
    (dict(drafter=42), TypeError),
    (dict(n_draft=0), ValueError),
    (dict(n_draft=-3), ValueError),
    (dict(n_draft="fast"), ValueError),
])
def test_bad_engine_arguments(tiny_model_path, kwargs, error):
    with pytest.raises(error):
        Engine(str(tiny_model_path), **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1),
    dict(top_k=-1), dict(max_tokens=-1), dict(stop=[""]),
])
def test_bad_generation_arguments(tiny_model, kwargs):
    with Engine(tiny_model, drafter=None, n_ctx=256) as engine:
        with pytest.raises(ValueError):
            engine.generate("hello", **kwargs)


def test_prompt_that_does_not_fit(tiny_model):
    with Engine(tiny_model, drafter="ngram-simple", n_ctx=256) as engine:
        n_ctx = engine.ctx.n_ctx                      # llama.cpp pads the requested size
        with pytest.raises(spec.ContextOverflowError, match=f"n_ctx={n_ctx}"):
            engine.generate(np.arange(10, 10 + n_ctx - 8, dtype=np.int32), max_tokens=16)
        with pytest.raises(ValueError, match="not a token id"):
            engine.generate(np.array([1, 2, tiny_model.n_vocab]), max_tokens=4)
        with pytest.raises(ValueError, match="empty"):
            engine.generate(np.array([], dtype=np.int32), max_tokens=4)


def test_budget_is_never_overrun(bigram_model, grounded):
    prompt, _ = grounded
    for max_tokens in (1, 2, 3, 17):
        with Engine(bigram_model, drafter="ngram-simple", n_draft=16, n_ctx=2048) as engine:
            result = engine.generate(prompt, max_tokens=max_tokens)
        assert len(result.tokens) == max_tokens


@pytest.mark.slow
@pytest.mark.parametrize("drafter", ["ngram-simple", "ngram-map-k", "ngram-mod", "suffix",
                                     "llama:ngram-simple"])
def test_lossless_on_the_default_model(default_model, drafter):
    from spec.cli import DEMO_PROMPT
    with Engine(default_model, drafter=None) as engine:
        plain = engine.generate(DEMO_PROMPT, max_tokens=64, trace=True)
    with Engine(default_model, drafter=drafter, n_draft=8) as engine:
        result = engine.generate(DEMO_PROMPT, max_tokens=64, trace=True)
    assert result.stats.n_accepted > 0
    # Q4_K weights quantize activations per batch: near-ties may flip, each one proven
    assert_lossless(default_model, plain, result)


@pytest.mark.slow
def test_a_batch_job_is_lossless_on_the_default_model(default_model):
    """Four requests sharing each verify batch equal their plain single runs (each divergence
    proven a rounding flip in the exact multi-sequence batch it was decoded in)."""
    from spec.cli import DEMO_PROMPT
    prompts = [DEMO_PROMPT, "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
               "List three facts about the moon.", "Translate to French: good morning, friends."]
    with Engine(default_model, drafter=None) as engine:
        plain = [engine.generate(p, max_tokens=48, trace=True) for p in prompts]
    with Engine(default_model, drafter="suffix") as engine:
        results = engine.generate_batch(prompts, n_parallel=4, max_tokens=48, trace=True)
    assert sum(r.stats.n_accepted for r in results) > 0
    for want, got in zip(plain, results):
        assert_lossless(default_model, want, got)


@pytest.fixture(scope="module")
def default_model(default_model_path):
    model = spec.Model(default_model_path)
    yield model
    model.close()


@pytest.mark.parametrize("drafter", ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-cache"])
def test_requests_do_not_inherit_per_sequence_drafter_state(bigram_model, grounded, drafter):
    """generate() after an unrelated longer request drafts exactly as on a fresh engine: the map
    drafters' keys and acceptance caps and ngram-cache's context cache start over per request.
    (The llama:<type> wrappers keep llama.cpp's own semantics, which fail this: its begin keeps
    a slot's state for a prompt assumed to extend the previous one.)"""
    prompt, _ = grounded
    head = bigram_model.tokenize("for i in range(10):\n    print(i * i)\n")
    with Engine(bigram_model, drafter=None, n_ctx=2048) as plain:
        cont = plain.generate(head, max_tokens=60).tokens
    other = np.concatenate([head, cont, head[1:]])      # shorter than the first request
    with Engine(bigram_model, drafter=drafter, n_draft=8, n_ctx=2048) as fresh:
        want = fresh.generate(other, max_tokens=120)
    with Engine(bigram_model, drafter=drafter, n_draft=8, n_ctx=2048) as reused:
        reused.generate(prompt, max_tokens=200)
        got = reused.generate(other, max_tokens=120)
    assert got.tokens.tolist() == want.tokens.tolist()
    assert (got.stats.n_drafted, got.stats.n_accepted, got.stats.accept_hist) == \
        (want.stats.n_drafted, want.stats.n_accepted, want.stats.accept_hist)
    if drafter != "ngram-cache":
        assert want.stats.n_accepted > 0, "no draft was accepted: the comparison is vacuous"


def _ratio(cost: dict) -> float:
    """One row's verify cost as a fraction of a one-row step: what decides if a draft pays."""
    return cost["b"] / (cost["a"] + cost["b"])


def test_cost_model_fits_varied_batches_and_recovers_when_drafting_stops(tiny_model):
    from spec._loop._engine import Loop
    from spec._loop._params import Drafting

    a, b = 0.010, 0.004                                   # seconds: a 1-row step costs 14 ms
    with spec.Context(tiny_model, n_ctx=256) as ctx:
        loop = Loop(ctx, None, Drafting(draft_cost=0.43))
        for i in range(200):                              # drafting: sizes 1..9 rows
            n = 1 + i % 9
            loop.observe_cost(n, a + b * n)
        assert loop.cost_model["a"] == pytest.approx(a, rel=0.1)
        assert loop.cost_model["b"] == pytest.approx(b, rel=0.1)

        # A few very slow big batches (a cold start) fit a steep b: drafts stop paying ...
        for n in (9, 9, 9, 9, 1, 9, 9, 1):
            loop.observe_cost(n, 0.001 + 0.02 * n)
        assert _ratio(loop.cost_model) > 0.55
        # ... and with every batch one row from then on, the fit must come back to the prior
        # ratio (0.43) rather than keep the steep slope forever.
        for _ in range(300):
            loop.observe_cost(1, a + b)
        assert _ratio(loop.cost_model) == pytest.approx(0.43, abs=0.05)
        assert loop.cost_model["a"] + loop.cost_model["b"] == pytest.approx(a + b, rel=0.05)
        with pytest.raises(ValueError, match="n_rows"):
            loop.observe_cost(0, 0.01)


def _tiled_cost(rows: int) -> float:
    """A CPU-like verify cost (seconds): rows in tiles of 4 are cheap, leftover rows are not."""
    return 0.010 + 0.003 * rows + (0.012 * (rows % 4) if rows > 4 else 0.0)


def _measure(loop, sizes, cost=_tiled_cost):
    for n in sizes:
        loop.observe_cost(n, cost(n))


def test_plan_lands_on_measured_cheap_batch_sizes(tiny_model):
    from spec._loop._engine import Loop
    from spec._loop._params import Drafting

    with spec.Context(tiny_model, n_ctx=256) as ctx:
        loop = Loop(ctx, None, Drafting(draft_cost=0.43))
        _measure(loop, list(range(1, 41)))
        table = loop.cost_model["table"]
        assert table[16] == pytest.approx(_tiled_cost(16)) and len(table) == 40
        # 8 sequences decoding plain fill 8 rows; one drafted token each (16 rows) pays, and so
        # does any total on a tile; 9..11 rows never do
        alpha = [0.85] * 8
        lengths = loop._plan(alpha, [16] * 8)
        assert (8 + lengths.sum()) % 4 == 0 and lengths.sum() >= 8
        # drafts of uneven acceptance: the best ones get the tokens, the total stays on a tile
        lengths = loop._plan([0.95, 0.9, 0.3, 0.2], [8, 8, 8, 8])
        assert (4 + lengths.sum()) % 4 == 0
        assert lengths[0] >= lengths[1] >= lengths[2] >= lengths[3]
        # a probe that must be verified is topped up to the next cheap size rather than
        # leaving the batch at 9 rows
        lengths = loop._plan([0.1] * 7 + [0.9], [0] * 7 + [8], forced=[0] * 7 + [1])
        assert lengths[7] >= 1 and (8 + lengths.sum()) % 4 == 0
        # sequences outside the batch get nothing; hopeless drafts are not verified
        assert loop._plan([0.9, 0.9], [-1, 4])[0] == 0
        assert loop._plan([0.0, 0.0], [4, 4]).tolist() == [0, 0]
        with pytest.raises(ValueError, match="forced"):
            loop._plan([0.5], [2], forced=[3])
        with pytest.raises(ValueError, match="acceptances"):
            loop._plan([1.5], [2])


def test_plan_trusts_a_long_run_of_matched_drafts(tiny_model):
    from spec._loop._engine import Loop
    from spec._loop._params import Drafting

    with spec.Context(tiny_model, n_ctx=256) as ctx:
        loop = Loop(ctx, None, Drafting(draft_cost=0.43))
        _measure(loop, list(range(1, 70)))
        # a low measured rate and no run: nothing pays
        assert loop._plan([0.1], [64], run=[0]).tolist() == [0]
        # the same rate after 40 matched tokens in a row: the run is trusted to continue
        # (r / (r + 1) per token), and the draft grows with the run
        lengths = [int(loop._plan([0.1], [64], run=[r])[0]) for r in (8, 40, 200)]
        assert 0 < lengths[0] <= lengths[1] <= lengths[2]
        assert lengths[2] >= 32 and (1 + lengths[2]) % 4 == 0
        with pytest.raises(ValueError, match="runs"):
            loop._plan([0.5], [2], run=[-1])


def test_cost_table_entries_expire_and_exploration_tries_stale_tiles(tiny_model):
    from spec._loop._engine import Loop
    from spec._loop._params import Drafting

    with spec.Context(tiny_model, n_ctx=256) as ctx:
        loop = Loop(ctx, None, Drafting(draft_cost=0.43))
        _measure(loop, list(range(1, 41)))
        # one unlucky slow measurement of 16 rows keeps the plan off 16 ...
        loop.observe_cost(16, 1.0)
        assert 8 + loop._plan([0.85] * 8, [16] * 8).sum() != 16
        # ... only while fresh: after many batches of other sizes it falls back to the line,
        # and exploration measures it again (the nearest stale tile to the best size)
        _measure(loop, [8, 12] * 200)
        assert 16 not in loop.cost_model["table"]
        explored = 8 + loop._plan([0.85] * 8, [16] * 8, explore=True).sum()
        assert explored % 4 == 0 and explored not in (8, 12)
        loop.observe_cost(int(explored), _tiled_cost(int(explored)))
        assert explored in loop.cost_model["table"]


def test_auto_drafts_of_later_requests_start_from_the_jobs_acceptance(bigram_model):
    # The bigram model's output cycles, so a prompt holding one cycle of it is continued by
    # drafts that almost always pass.
    head = bigram_model.tokenize("def add(a, b):\n    return a + b\n")
    with Engine(bigram_model, drafter=None, n_ctx=2048) as plain:
        cont = plain.generate(head, max_tokens=200).tokens
    prompt = np.concatenate([head, cont, head[1:]])
    # a fixed draft length keeps the counters independent of timings; the job's acceptance is
    # learned from every verified draft either way
    with Engine(bigram_model, drafter="ngram-simple", n_draft=4, n_ctx=2048) as engine:
        first = engine.generate(prompt, max_tokens=120)
        rate = first.stats.n_accepted / first.stats.n_drafted
        learned = engine._loops[False].job_acceptance
        assert rate > 0.9 and learned > 0.8          # moved up from the 0.6 prior
        second = engine.generate(prompt, max_tokens=120)
        assert second.stats.n_accepted > 0


def test_a_closed_engine_refuses_work(tiny_model):
    engine = Engine(tiny_model, drafter="ngram-simple", n_ctx=256)
    engine.close()
    with pytest.raises(spec.SpecError, match="engine is closed"):
        engine.generate("hello", max_tokens=2)
    with pytest.raises(spec.SpecError, match="engine is closed"):
        list(engine.stream("hello", max_tokens=2))
    # a batch for more sequences than the context holds used to build itself a new context
    with pytest.raises(spec.SpecError, match="engine is closed"):
        engine.generate_batch(["hello", "world"], n_parallel=2, max_tokens=2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_parallel=0), ValueError, r"n_parallel must be in \[1, 256\]"),
    (dict(n_parallel=257), ValueError, "LLAMA_MAX_SEQ"),
    (dict(n_parallel=1.5), TypeError, "n_parallel must be an integer"),
    (dict(n_draft_max=0), ValueError, "n_draft_max must be > 0"),
    (dict(n_draft=0), ValueError, "n_draft must be > 0"),
    (dict(n_draft=2**31 - 1), ValueError, "n_draft=2147483647 must be < n_batch=512"),
    (dict(n_draft_max=64, n_batch=64), ValueError, "n_draft_max=64 must be < n_batch=64"),
    (dict(n_draft=True), ValueError, "n_draft must be a positive int or 'auto'"),
    (dict(n_draft="long"), ValueError, "n_draft must be a positive int or 'auto'"),
    (dict(n_draft=4, n_draft_max=8), ValueError, "n_draft_max bounds n_draft='auto'"),
    (dict(n_draft_max=2.5), ValueError, "n_draft_max must be a positive int"),
    (dict(draft_cost=-1), ValueError, "draft_cost must be a number >= 0"),
    (dict(draft_cost=float("nan")), ValueError, "draft_cost must be a number >= 0"),
    (dict(n_batch=0), ValueError, "n_batch must be a positive int"),
])
def test_bad_engine_arguments_are_named(tiny_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        Engine(tiny_model, n_ctx=256, **kwargs)


def test_threads_sharing_an_engine_take_turns(bigram_model, grounded):
    """Concurrent generate() calls on one engine used to decode into its context at once and
    crash the interpreter; they now run one after another with the same outputs."""
    prompt, _ = grounded
    prompts = [prompt[:n] for n in (40, 60, 80, 100)]
    with Engine(bigram_model, drafter="ngram-simple", n_draft=4, n_ctx=1024) as engine:
        want = [engine.generate(p, max_tokens=40).tokens.tolist() for p in prompts]
        got, errors = {}, []

        def work(i):
            try:
                got[i] = engine.generate(prompts[i], max_tokens=40).tokens.tolist()
            except Exception as e:          # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert [got[i] for i in range(len(prompts))] == want


def test_one_unfinished_generation_per_thread(bigram_model, grounded):
    prompt, plain = grounded
    with Engine(bigram_model, drafter="ngram-simple", n_draft=4, n_ctx=1024) as engine:
        first = engine.stream(prompt, max_tokens=30)
        next(first)
        with pytest.raises(spec.EngineBusyError, match="unfinished"):
            engine.generate(prompt, max_tokens=5)
        with pytest.raises(spec.EngineBusyError):
            next(engine.iter_batch([prompt], n_parallel=1))
        first.close()                               # hands the engine back
        result = engine.generate(prompt, max_tokens=30)
    np.testing.assert_array_equal(result.tokens, plain.tokens[:30])


def test_close_during_an_open_stream(bigram_model, grounded):
    """The stream's next step raises ClosedError; the contexts are freed as it ends."""
    prompt, _ = grounded
    engine = Engine(bigram_model, drafter="ngram-simple", n_ctx=1024)
    pieces = engine.stream(prompt, max_tokens=30)
    next(pieces)
    engine.close()
    assert not engine.ctx.closed                    # still in use by the stream
    with pytest.raises(spec.ClosedError, match="engine is closed"):
        list(pieces)
    assert engine.ctx.closed
    with pytest.raises(spec.ClosedError, match="engine is closed"):
        engine.generate(prompt, max_tokens=2)


def test_close_from_another_thread_waits_for_the_generation(bigram_model, grounded):
    prompt, plain = grounded
    engine = Engine(bigram_model, drafter=None, n_ctx=1024)
    pieces = engine.stream(prompt, max_tokens=60)
    text = [next(pieces)]
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(timeout=0.5)
    assert closer.is_alive() and not engine.ctx.closed, "close() did not wait for the stream"
    text += list(pieces)
    closer.join(timeout=10)
    assert not closer.is_alive() and engine.ctx.closed
    assert "".join(text) == plain.text[:len("".join(text))] and len(text) > 1
