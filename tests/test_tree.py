"""Tree verification: branches in a verify batch's spare rows, as temporary sequence ids.

Whether a step has spare rows depends on the measured verify cost, so these tests calibrate the
loop's cost model with costs a million times the tiny model's real ones (a real batch moves a
size's running mean by a quarter of the difference, so they hold for dozens of batches): 8 rows
cost least from 5 rows up, so every step whose batch has 5-7 rows fills up to 8 with branches.

The drafts come from a prompt built on the bigram model's own greedy cycle (see cycle_prompt):
the suffix drafter's path takes a decoy where a branch holds the continuation the model emits.
"""
import numpy as np
import pytest

import spec
from spec import Context, Engine
from spec.divergence import context_params

from _lossless import assert_lossless

# seconds by batch rows: 8 rows cost far less than 5-7; sizes up to 7 grow with the rows
FAKE_COST = {**{r: 1e6 * (1 + r / 10) for r in range(1, 8)}, 8: 1.0,
             **{r: 2e6 * (1 + r / 10) for r in range(9, 13)}}
SEPARATOR = [7, 8, 9]


def calibrated(engine: Engine) -> Engine:
    loop = engine._loop(True)
    for _ in range(3):
        for rows, seconds in FAKE_COST.items():
            loop.observe_cost(rows, seconds)
    return engine


def traced(engine, prompt, n, **kw):
    return engine.generate(prompt, max_tokens=n, trace=True, **kw)


def cycle_prompt(model, start: int, fork: int = 30) -> list[int]:
    """The start of the model's greedy cycle, cut at position ``fork`` and followed twice by a
    decoy and once by the cycle's own next tokens, then the cycle's first 10 tokens: the
    generation runs along the cycle; at position ``fork`` = 30, the drafter's path takes the decoy (2 of
    3 occurrences) while a branch holds the true continuation, which the model emits."""
    with Engine(model, drafter=None) as plain:
        out = [int(t) for t in plain.generate([40 + start, 41, 42], max_tokens=240).tokens]
    period = next(p for p in range(1, 110) if out[-p:] == out[-2 * p:-p])
    assert period > 24, f"the model's greedy cycle is {period} tokens: too short for the test"
    laps = out[-period:] * 3
    decoy = [t for t in range(100, 140) if t not in laps][:10]
    return (SEPARATOR + laps[:fork] + decoy) * 2 + SEPARATOR + laps[:fork + 8] + SEPARATOR \
        + laps[:10]


def test_tree_rows_are_verified_and_the_output_stays_lossless(bigram_model):
    prompt = cycle_prompt(bigram_model, 0)
    with Engine(bigram_model, drafter=None) as plain:
        reference = traced(plain, prompt, 100)
    with calibrated(Engine(bigram_model, drafter="suffix", n_draft=6, tree=True)) as engine:
        assert engine._loop(True).tree
        result = traced(engine, prompt, 100)
    st = result.stats
    assert st.n_branch_rows > 0, "no step filled its spare rows with branches"
    assert st.n_branch_accepted > 0, "no token was accepted through a branch"
    assert st.n_accepted >= st.n_branch_accepted
    assert_lossless(bigram_model, reference, result)


def test_a_rejected_branch_leaves_no_cell_behind(bigram_model):
    # cut at 60, in the cycle's second lap: shorter matches see the cycle's first lap, so the
    # path is right and the branch holds the decoy; the replay checks that every later
    # decode continues the sequence's KV memory exactly
    prompt = cycle_prompt(bigram_model, 0, fork=60)
    with Engine(bigram_model, drafter=None) as plain:
        reference = traced(plain, prompt, 100)
    with calibrated(Engine(bigram_model, drafter="suffix", n_draft=6, tree=True)) as engine:
        result = traced(engine, prompt, 100)
    assert result.stats.n_branch_rows > 0
    assert result.stats.n_branch_accepted == 0
    assert_lossless(bigram_model, reference, result)


def test_a_batch_job_with_trees_is_lossless(bigram_model):
    prompts = [cycle_prompt(bigram_model, k) for k in range(3)]
    with Engine(bigram_model, drafter=None, n_parallel=2) as plain:
        reference = plain.generate_batch(prompts, n_parallel=2, max_tokens=100, trace=True)
    with calibrated(Engine(bigram_model, drafter="suffix", n_draft=6, tree=True,
                           n_parallel=2)) as engine:
        results = engine.generate_batch(prompts, n_parallel=2, max_tokens=100, trace=True)
        assert engine.ctx.n_seq_max == 2 + spec.engine.N_BRANCH_SEQS
    assert sum(r.stats.n_branch_rows for r in results) > 0
    for a, b in zip(reference, results):
        assert_lossless(bigram_model, a, b)


def test_sampling_falls_back_to_the_path(bigram_model):
    prompt = cycle_prompt(bigram_model, 0)
    with calibrated(Engine(bigram_model, drafter="suffix", n_draft=6, tree=True)) as engine:
        result = engine.generate(prompt, max_tokens=48, temperature=0.8, seed=1)
    assert result.stats.n_branch_rows == 0
    assert result.stats.n_generated > 0


def test_tree_needs_a_model_free_drafter_and_a_bool(tiny_model):
    with pytest.raises(TypeError, match="tree must be True or False"):
        Engine(tiny_model, drafter="suffix", tree=1)
    with pytest.raises(ValueError, match="model-free drafter"):
        Engine(tiny_model, drafter="draft", tree=True)


def test_branch_ids_are_not_sequence_slots(bigram_model):
    with Engine(bigram_model, drafter="suffix", tree=True) as engine:
        loop = engine._loop(False)
        assert loop.n_slots == engine.ctx.n_seq_max - spec.engine.N_BRANCH_SEQS == 1
        sq = loop.sequence(1, [5, 6, 7], 4)
        with pytest.raises(ValueError, match="hold tree branches"):
            loop.start(sq)


def test_rows_shared_by_sequences_are_decoded_recorded_and_replayed(tiny_model):
    with Context(tiny_model, n_ctx=64, n_batch=16, n_seq_max=3) as ctx:
        ctx.record()
        ctx.decode([5, 6, 7], seq_id=0)
        ctx.kv_copy(0, 1)
        # a root shared by sequences 0 and 1, then one token each at the same position
        rows = np.array([[8, 3, 0, 1], [9, 4, 0, 1], [10, 4, 1, 1]], dtype=np.int32)
        ctx.decode_rows(rows, [(0, 1), (0,), (1,)])
        branch = ctx.logits()[2].copy()
        assert ctx.kv_pos_max(0) == ctx.kv_pos_max(1) == 4
        ops = ctx.recorded()
        params = context_params(ctx)
    assert ops[-1][0] == "decode" and ops[-1][2] == ((0, 1), (0,), (1,))
    assert np.array_equal(ops[-1][1], rows)
    # the same token after the same prefix, as a plain sequence: the same logits up to rounding
    with Context(tiny_model, n_ctx=64, n_batch=16, n_seq_max=3) as ctx:
        ctx.decode([5, 6, 7, 8, 10], seq_id=2)
        np.testing.assert_allclose(ctx.logits()[-1], branch, atol=1e-3)
    with Context(tiny_model, **params) as ctx:
        for op in ops:
            if op[0] == "decode":
                ctx.decode_rows(op[1], op[2] if len(op) > 2 else None)
            elif op[0] == "copy":
                ctx.kv_copy(*op[1:])
        np.testing.assert_array_equal(ctx.logits()[2], branch)


@pytest.mark.parametrize("seqs, match", [
    ([(0,), (0,)], "holds 2 rows' sequences for 1 rows"),
    ([(1, 0)], "starting with rows"),
    ([(0, 0)], "distinct"),
    ([(0, 7)], "seq_id must be in"),
])
def test_bad_row_sequences_are_named(tiny_model, seqs, match):
    with Context(tiny_model, n_ctx=32, n_batch=8, n_seq_max=2) as ctx:
        with pytest.raises(ValueError, match=match):
            ctx.decode_rows(np.array([[5, 0, 0, 1]]), seqs)


@pytest.fixture(scope="module")
def default_model(default_model_path):
    model = spec.Model(default_model_path)
    yield model
    model.close()


# Three copies of a function, then a fourth that differs in one line, then the start of
# another: the model copies the latest, the suffix drafter's path the majority, and its branch
# the latest's line. The separator is longer than the drafter's 24-token context, so every
# copy's lines are seen after the same context.
_X = 'def area(width, height):\n    """Area of a rectangle."""\n    return width * height\n'
_Y = 'def area(width, height):\n    """Area of a rectangle."""\n    return height * width\n'
_SEP = ("\n\n# This is the next copy of the same small function, which is written out again in "
        "full just below this line.\n")
REWRITE_PROMPT = "".join(_SEP + f for f in (_X, _X, _X, _Y)) + _SEP + "def area(width, height):\n"


@pytest.mark.slow
def test_trees_on_the_default_models_sliding_window_cache(default_model):
    """Gemma-3 keeps a sliding-window KV cache beside the full one; llama.cpp forwards seq_cp
    and seq_rm to both, so branches hand over their cells there too (each divergence from
    plain proven a rounding flip in the exact batch, shared rows and all)."""
    with Engine(default_model, drafter=None) as plain:
        reference = traced(plain, REWRITE_PROMPT, 48)
    with calibrated(Engine(default_model, drafter="suffix", n_draft=6, tree=True)) as engine:
        result = traced(engine, REWRITE_PROMPT, 48)
    assert result.stats.n_branch_accepted > 0, "no token was accepted through a branch"
    assert_lossless(default_model, reference, result)
