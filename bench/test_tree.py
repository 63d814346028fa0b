"""Tree verification against the linear draft, on the default model.

    python -m pytest bench/test_tree.py -s [-k against_linear | -k sequence_ids]

Greedy, 128 new tokens, suffix drafter with n_draft="auto", the code-rewrite and chat prompts
of the end-to-end benchmark. Per prompt, plain, linear and tree run back to back (in that order,
then again in the reverse order of the two drafting engines: two rounds). Figures: the median
over prompts of each engine's tok/s over plain's, the median of per-prompt (tree / linear) in
tokens per verify-second (generated tokens / time in verify decodes) and in wall tok/s, and the
branch rows the tree engine verified and the tokens they won. Goal (issue #13): tree tokens per
verify-second >= 1.1x linear on code.
"""
from __future__ import annotations

import os
import statistics

import pytest

import spec
from _workloads import chat_prompts, code_prompts
from conftest import THREADS, save

N_GEN = 128
N_PROMPTS = int(os.environ.get("SPEC_BENCH_PROMPTS", 8))
N_CTX = 2048


@pytest.fixture(scope="module")
def model(default_model_path):
    m = spec.Model(default_model_path)
    yield m
    m.close()


def _run(engine, prompt):
    r = engine.generate(prompt, max_tokens=N_GEN)
    return r.stats


def _workload(model, prompts):
    make = dict(model=model, n_ctx=N_CTX, n_threads=THREADS)
    plain = spec.Engine(drafter=None, **make)
    linear = spec.Engine(drafter="suffix", **make)
    tree = spec.Engine(drafter="suffix", tree=True, **make)
    for e in (plain, linear, tree):
        e.generate(prompts[0], max_tokens=8)                # warm-up
    rows = []
    for i, prompt in enumerate(prompts):
        for rnd in range(2):
            base = _run(plain, prompt)
            order = (("linear", linear), ("tree", tree))
            runs = dict((name, _run(e, prompt)) for name, e in (order if rnd == 0 else order[::-1]))
            rows.append({"prompt": i, "round": rnd, "plain_tok_s": base.decode_tok_s,
                         **{f"{n}_{k}": v for n, st in runs.items() for k, v in (
                             ("tok_s", st.decode_tok_s),
                             ("verify_tok_s", st.n_generated / st.verify_s),
                             ("steps", st.n_steps), ("branch_rows", st.n_branch_rows),
                             ("branch_accepted", st.n_branch_accepted))}})
    for e in (plain, linear, tree):
        e.close()
    med = statistics.median
    return {
        "linear_speedup": med(r["linear_tok_s"] / r["plain_tok_s"] for r in rows),
        "tree_speedup": med(r["tree_tok_s"] / r["plain_tok_s"] for r in rows),
        "tree_over_linear_tok_s": med(r["tree_tok_s"] / r["linear_tok_s"] for r in rows),
        "tree_over_linear_verify_tok_s": med(r["tree_verify_tok_s"] / r["linear_verify_tok_s"]
                                             for r in rows),
        "tree_steps": sum(r["tree_steps"] for r in rows),
        "linear_steps": sum(r["linear_steps"] for r in rows),
        "branch_rows": sum(r["tree_branch_rows"] for r in rows),
        "branch_accepted": sum(r["tree_branch_accepted"] for r in rows),
        "runs": rows,
    }


def test_tree_against_linear(model):
    results = {"code": _workload(model, code_prompts(N_PROMPTS)),
               "chat": _workload(model, chat_prompts(N_PROMPTS))}
    for name, r in results.items():
        print(f"{name}: linear {r['linear_speedup']:.2f}x, tree {r['tree_speedup']:.2f}x plain; "
              f"tree / linear: tok/s {r['tree_over_linear_tok_s']:.3f}, per verify-second "
              f"{r['tree_over_linear_verify_tok_s']:.3f}; {r['branch_rows']} branch rows in "
              f"{r['tree_steps']} steps won {r['branch_accepted']} tokens")
    save("tree", {"command": "python -m pytest bench/test_tree.py -s -k against_linear",
                  "n_gen": N_GEN,
                  "n_prompts": N_PROMPTS, **results})


def test_extra_sequence_ids(model):
    """What the tree engine's 3 extra sequence ids cost without any branch: the linear suffix
    engine on a context for 1 sequence against one for 4 (Gemma-3's sliding-window cache grows
    with the sequence count), one request at a time, alternating per prompt."""
    out = {}
    for kind, prompts in (("code", code_prompts(N_PROMPTS)), ("chat", chat_prompts(N_PROMPTS))):
        make = dict(model=model, drafter="suffix", n_ctx=N_CTX, n_threads=THREADS)
        one, four = spec.Engine(n_parallel=1, **make), spec.Engine(n_parallel=4, **make)
        for e in (one, four):
            e.generate(prompts[0], max_tokens=8)
        ratios = []
        for prompt in prompts:
            for rnd in range(2):
                pair = (one, four) if rnd == 0 else (four, one)
                st = {id(e): _run(e, prompt) for e in pair}
                ratios.append(st[id(four)].decode_tok_s / st[id(one)].decode_tok_s)
        one.close()
        four.close()
        out[kind] = {"four_over_one_tok_s": statistics.median(ratios), "ratios": ratios}
        print(f"{kind}: 4 sequence ids / 1, tok/s {out[kind]['four_over_one_tok_s']:.3f}")
    save("tree_sequence_ids", {"command": "python -m pytest bench/test_tree.py -s -k sequence_ids",
                               "n_gen": N_GEN, "n_prompts": N_PROMPTS, **out})
