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


def _code_and_chat(model, configs, name: str, selector: str) -> None:
    """Speedups of configs on both workloads, saved as bench/results/<name>.json."""
    code, code_acc = _speedups(model, code_prompts(N_PROMPTS), configs)
    chat, chat_acc = _speedups(model, chat_prompts(N_PROMPTS), configs)
    save(name, {
        "command": f"python -m pytest bench/test_end_to_end.py -s -k {selector}",
        "n_gen": N_GEN, "n_prompts": N_PROMPTS,
        "code_speedup": code, "code_mean_accept_len": code_acc,
        "chat_speedup": chat, "chat_mean_accept_len": chat_acc,
    })


def test_drafters_code_and_chat(model):
    configs = {f"{d} auto": (d, "auto", None) for d in AUTO_DRAFTERS}
    configs.update({f"{d} n=8": (d, 8, None) for d in ("ngram-simple", "ngram-mod", "suffix")})
    _code_and_chat(model, configs, "end_to_end", "code_and_chat")


def test_ngram_draft_caps_under_auto(model):
    """The n-gram drafters' longest draft (size_m, ngram-mod's n_max) at the engine's
    defaults (16) and at 48, with n_draft="auto" planning the verified prefix."""
    configs = {}
    for d, key in (("ngram-simple", "size_m"), ("ngram-map-k", "size_m"),
                   ("ngram-map-k4v", "size_m"), ("ngram-mod", "n_max")):
        for cap in (16, 48):
            configs[f"{d} {key}={cap}"] = (d, "auto", {key: cap})
    _code_and_chat(model, configs, "ngram_caps", "caps")


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


def test_lossless_report(model):
    """How often greedy speculation diverges from plain greedy on the default model, and proof
    that every divergence is a rounding flip: both runs are traced, and at the first difference
    each run's decodes are replayed in their exact batches (spec.divergence); each run's token
    must be the target's argmax there. Single requests for every drafter, then a suffix batch
    job at n_parallel 4."""
    from spec.divergence import explain_divergence
    drafters = ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache",
                "suffix", "llama:ngram-simple", "llama:ngram-mod"]
    prompts = code_prompts(N_PROMPTS) + chat_prompts(N_PROMPTS)
    plain = spec.Engine(model, drafter=None, n_ctx=N_CTX, n_threads=THREADS)
    references = [plain.generate(p, max_tokens=64, trace=True) for p in prompts]
    plain.close()

    def tally(outputs):
        row = {"runs": len(outputs), "diverged": 0, "proven": 0, "accepted": 0,
               "plain_margins_at_divergence": []}
        for ref, out in zip(references, outputs):
            row["accepted"] += out.stats.n_accepted
            d = explain_divergence(model, ref, out)
            if d is not None:
                row["diverged"] += 1
                row["proven"] += d.proven
                row["plain_margins_at_divergence"].append(d.reference_replayed.margin)
        return row

    rows = {}
    for name in drafters:
        engine = spec.Engine(model, drafter=name, n_draft=8, n_ctx=N_CTX, n_threads=THREADS)
        rows[name] = tally([engine.generate(p, max_tokens=64, trace=True) for p in prompts])
        engine.close()
    engine = spec.Engine(model, drafter="suffix", n_ctx=N_CTX, n_threads=THREADS)
    rows["suffix auto, batch of 4"] = tally(engine.generate_batch(prompts, n_parallel=4,
                                                                  max_tokens=64, trace=True))
    engine.close()
    save("lossless_report", {"command": "python -m pytest bench/test_end_to_end.py -s -k lossless",
                             "n_gen": 64, "n_draft": 8, "drafters": rows})
    print("\n| drafter | runs | diverged | proven rounding flips | largest plain margin at a "
          "divergence | drafts accepted |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['runs']} | {r['diverged']} | {r['proven']} | "
              f"{max(r['plain_margins_at_divergence'], default=0):.3f} | {r['accepted']} |")
    for name, r in rows.items():
        assert r["accepted"] > 0, name
        assert r["proven"] == r["diverged"], (name, r)
