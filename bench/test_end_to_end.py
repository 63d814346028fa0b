"""End to end on the default model: plain vs every drafter, and spec vs llama-speculative-simple.

    python -m pytest bench/test_end_to_end.py -s

Greedy, 128 new tokens, 2 threads. Code prompts: HumanEval functions to rewrite with renamed
parameters (input-grounded). Chat prompts: first turns of ShareGPT conversations. Speedup =
median over prompts of (drafter tok/s) / (plain tok/s), both measured back to back per prompt.
Goals: best drafter >= 2.0x on code; every drafter with n_draft="auto" >= 0.95x on chat;
spec / llama-speculative-simple >= 0.98 for every shared method.
"""
from __future__ import annotations

import os
import statistics
import tempfile

import numpy as np
import pytest

import spec
from _llama_tools import speculative_simple
from _workloads import chat_prompts, code_prompts
from conftest import THREADS, save

N_GEN = 128
N_PROMPTS = int(os.environ.get("SPEC_BENCH_PROMPTS", 8))
N_CTX = 2048
AUTO_DRAFTERS = ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache",
                 "suffix", "llama:ngram-simple", "llama:ngram-map-k", "llama:ngram-mod"]
# Shared methods, same parameters on both sides: (our name, llama --spec-type, params, CLI flags)
SHARED = [
    ("ngram-simple", {"size_n": 3, "size_m": 16},
     ["--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m", "16"]),
    ("ngram-map-k", {"size_n": 3, "size_m": 16},
     ["--spec-ngram-map-k-size-n", "3", "--spec-ngram-map-k-size-m", "16"]),
    ("ngram-map-k4v", {"size_n": 3, "size_m": 16},
     ["--spec-ngram-map-k4v-size-n", "3", "--spec-ngram-map-k4v-size-m", "16"]),
    ("ngram-mod", {"n_match": 8, "n_max": 16, "n_min": 2},
     ["--spec-ngram-mod-n-match", "8", "--spec-ngram-mod-n-max", "16", "--spec-ngram-mod-n-min", "2"]),
]
N_DRAFT_SHARED = 16


def _tok_s(result: spec.Result) -> float:
    return result.stats.decode_tok_s


@pytest.fixture(scope="module")
def model(default_model_path):
    m = spec.Model(default_model_path)
    yield m
    m.close()


def _speedups(model, prompts, configs):
    """{config: [per-prompt speedup]}, plain measured right before each config on each prompt."""
    engines = {name: spec.Engine(model, drafter=d, n_draft=nd, n_ctx=N_CTX, n_threads=THREADS,
                                 drafter_params=p)
               for name, (d, nd, p) in configs.items()}
    plain = spec.Engine(model, drafter=None, n_ctx=N_CTX, n_threads=THREADS)
    plain.generate(prompts[0], max_tokens=8)                 # warm-up
    ratios = {name: [] for name in configs}
    accept = {name: [] for name in configs}
    for prompt in prompts:
        for name, engine in engines.items():
            base = plain.generate(prompt, max_tokens=N_GEN)
            result = engine.generate(prompt, max_tokens=N_GEN)
            assert result.stats.n_generated > 0
            ratios[name].append(_tok_s(result) / _tok_s(base))
            accept[name].append(result.stats.mean_accept_len)
    return ({name: statistics.median(r) for name, r in ratios.items()},
            {name: statistics.median(a) for name, a in accept.items()})


def test_drafters_code_and_chat(model):
    configs = {f"{d} auto": (d, "auto", None) for d in AUTO_DRAFTERS}
    configs.update({f"{d} n=8": (d, 8, None) for d in ("ngram-simple", "ngram-mod", "suffix")})
    code, code_acc = _speedups(model, code_prompts(N_PROMPTS), configs)
    chat, chat_acc = _speedups(model, chat_prompts(N_PROMPTS), configs)
    save("end_to_end", {
        "command": "python -m pytest bench/test_end_to_end.py -s -k code_and_chat",
        "n_gen": N_GEN, "n_prompts": N_PROMPTS,
        "code_speedup": code, "code_mean_accept_len": code_acc,
        "chat_speedup": chat, "chat_mean_accept_len": chat_acc,
    })


def test_side_by_side_with_llama_speculative_simple(model, default_model_path):
    prompts = code_prompts(N_PROMPTS)
    rows = {}
    for name, params, flags in SHARED:
        engine = spec.Engine(model, drafter=name, n_draft=N_DRAFT_SHARED, n_ctx=N_CTX,
                             n_threads=THREADS, drafter_params=params)
        engine.generate(prompts[0], max_tokens=8)
        ratios, ours_acc, theirs_acc = [], [], []
        for prompt in prompts:
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.write(prompt)
            theirs = speculative_simple(default_model_path, f.name, N_GEN, THREADS, name,
                                        N_DRAFT_SHARED, flags, n_ctx=N_CTX)
            ours = engine.generate(prompt, max_tokens=N_GEN)
            os.unlink(f.name)
            ratios.append(_tok_s(ours) / theirs["tok_s"])
            ours_acc.append(ours.stats.n_accepted / max(ours.stats.n_drafted, 1))
            theirs_acc.append(theirs["n_accepted"] / max(theirs["n_drafted"], 1))
        engine.close()
        rows[name] = {"ratio_ours_over_theirs": statistics.median(ratios),
                      "accept_rate_ours": statistics.median(ours_acc),
                      "accept_rate_theirs": statistics.median(theirs_acc)}
    save("side_by_side", {
        "command": "python -m pytest bench/test_end_to_end.py -s -k side_by_side",
        "n_gen": N_GEN, "n_prompts": N_PROMPTS, "n_draft": N_DRAFT_SHARED, "methods": rows,
    })
    assert all(r["accept_rate_ours"] > 0 for r in rows.values())


def _top2_margins(rows):
    top2 = np.partition(rows, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _batch_shape_noise(model, prompts, references, rows_per_batch):
    """Re-decode each plain continuation in verify-shaped batches (rows_per_batch tokens, logits
    at every row) after the same prefill: how far the top-two margins move with the batch shape
    alone, and how many greedy tokens that flips."""
    ctx = spec.Context(model, n_ctx=N_CTX, n_threads=THREADS)
    shifts, flips = [], 0
    for prompt, ref in zip(prompts, references):
        toks = model.tokenize(prompt)
        ctx.kv_clear()
        ctx.decode(toks, pos=0)
        cont = ref.tokens
        # row j of the batch starting at token k predicts token k + j + 1
        for k in range(0, len(cont) - 1, rows_per_batch):
            chunk = cont[k:k + rows_per_batch]
            ctx.decode(chunk, pos=len(toks) + k, all_logits=True)
            logits = np.array(ctx.logits())
            for j in range(len(chunk)):
                i = k + j + 1
                if i >= len(cont):
                    break
                shifts.append(abs(float(_top2_margins(logits[j:j + 1])[0]) - float(ref.margins[i])))
                flips += int(np.argmax(logits[j]) != cont[i])
    ctx.close()
    return max(shifts), statistics.median(shifts), flips, len(shifts)


def test_lossless_report(model):
    """How often greedy speculation diverges from plain greedy on the default model, and at
    what margin. The near-tie bound is measured, not chosen: the largest change of a top-two
    margin when the plain continuation is merely re-decoded in verify-shaped batches."""
    drafters = ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache",
                "suffix", "llama:ngram-simple", "llama:ngram-mod"]
    prompts = code_prompts(N_PROMPTS) + chat_prompts(N_PROMPTS)
    plain = spec.Engine(model, drafter=None, n_ctx=N_CTX, n_threads=THREADS)
    references = [plain.generate(p, max_tokens=64, trace=True) for p in prompts]
    plain.close()
    noise_max, noise_median, noise_flips, noise_positions = _batch_shape_noise(
        model, prompts, references, 9)
    rows = {}
    for name in drafters:
        engine = spec.Engine(model, drafter=name, n_draft=8, n_ctx=N_CTX, n_threads=THREADS)
        diverged, margins, accepted = 0, [], 0
        for prompt, ref in zip(prompts, references):
            out = engine.generate(prompt, max_tokens=64)
            accepted += out.stats.n_accepted
            n = min(len(ref.tokens), len(out.tokens))
            diff = [i for i in range(n) if ref.tokens[i] != out.tokens[i]]
            if diff:
                diverged += 1
                margins.append(float(ref.margins[diff[0]]))
        engine.close()
        rows[name] = {"runs": len(prompts), "diverged": diverged, "accepted": accepted,
                      "max_margin_at_divergence": max(margins, default=0.0)}
    save("lossless_report", {"command": "python -m pytest bench/test_end_to_end.py -s -k lossless",
                             "n_gen": 64, "n_draft": 8, "drafters": rows,
                             "batch_shape_noise": {"rows_per_batch": 9, "positions": noise_positions,
                                                   "max_margin_shift": noise_max,
                                                   "median_margin_shift": noise_median,
                                                   "greedy_flips": noise_flips}})
    for name, r in rows.items():
        assert r["accepted"] > 0, name
        assert r["max_margin_at_divergence"] <= noise_max, (name, r, noise_max)
