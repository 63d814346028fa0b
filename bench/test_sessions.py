"""Model-based sessions: spec vs llama-speculative-simple on synthesized models, and draft-model
speedup over plain decoding on a tiny pair with high acceptance.

    python -m pytest bench/test_sessions.py -s

Per session type, the same GGUF files, prompt, draft length and greedy decoding on both sides;
tokens/s of the decode phase, median over rounds run back to back. Goal: spec / llama.cpp >= 0.98.
The speedup pair: a 16-layer target and a 1-layer draft drawn from the same seed with small
attention/FFN weights (both close to the same bigram table, so drafts are mostly accepted).
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import pytest

import spec
import spec.testing
from _llama_tools import speculative_simple
from conftest import THREADS, save

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
N_GEN = 128
N_DRAFT = 8
ROUNDS = 5


@pytest.fixture(scope="module")
def models():
    d = Path(tempfile.mkdtemp(prefix="spec-bench-sessions-"))
    vocab = spec.testing.vocab_path("llama-spm")
    make = spec.testing.make_tiny_llama
    big = dict(vocab=vocab, seed=3, n_embd=512, n_head=8, n_ff=2048, proj_scale=0.05)
    return {
        # draft-simple: a 4-layer target and a 1 %-noise copy (the test suite's pair, wider)
        "pair": (make(d / "tgt.gguf", vocab=vocab, seed=11, n_layer=4, n_embd=256, n_ff=512,
                      proj_scale=0.3),
                 make(d / "dft.gguf", vocab=vocab, seed=11, n_layer=4, n_embd=256, n_ff=512,
                      proj_scale=0.3, perturb=0.01)),
        "speedup": (make(d / "big.gguf", n_layer=16, **big), make(d / "small.gguf", n_layer=1, **big)),
        "mtp": (spec.testing.make_tiny_qwen35_mtp(d / "mtp.gguf", vocab=vocab, seed=5), None),
        "eagle3": (make(d / "tgt4.gguf", vocab=vocab, seed=2, n_layer=4),
                   spec.testing.make_tiny_eagle3(d / "e3.gguf", n_embd_target=64, vocab=vocab)),
    }


# (models key, our drafter, llama.cpp --spec-type, draft model on their side)
TYPES = [("pair", "draft", "draft-simple"), ("mtp", "mtp", "draft-mtp"),
         ("eagle3", "eagle3", "draft-eagle3")]


def _ours(target, drafter, draft, n_gen=N_GEN, prompt=PROMPT):
    params = {"draft_model": str(draft)} if draft is not None else None
    with spec.Engine(str(target), drafter=drafter, n_draft=N_DRAFT if drafter else "auto",
                     n_ctx=1024, n_threads=THREADS, drafter_params=params) as engine:
        engine.generate(prompt, max_tokens=8)                        # warm-up
        r = engine.generate(prompt, max_tokens=n_gen)
    return r


def test_sessions_vs_llama_speculative_simple(models):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(PROMPT)
    rows = {}
    for key, drafter, spec_type in TYPES:
        target, draft = models[key]
        extra = ["-md", str(draft)] if draft is not None else []
        ours, theirs, acc_ours, acc_theirs = [], [], [], []
        for _ in range(ROUNDS):
            r = _ours(target, drafter, draft)
            t = speculative_simple(str(target), f.name, r.stats.n_generated, THREADS, spec_type,
                                   N_DRAFT, extra, n_ctx=1024)
            ours.append(r.stats.decode_tok_s)
            theirs.append(t["tok_s"])
            acc_ours.append(r.stats.n_accepted / max(r.stats.n_drafted, 1))
            acc_theirs.append(t["n_accepted"] / max(t["n_drafted"], 1))
        med = statistics.median
        rows[drafter] = {"spec_tok_s": med(ours), "llama_tok_s": med(theirs),
                         "ratio_ours_over_theirs": med(ours) / med(theirs),
                         "accept_rate_ours": med(acc_ours), "accept_rate_theirs": med(acc_theirs),
                         "per_round": {"spec": ours, "llama": theirs}}
    save("sessions_side_by_side", {
        "command": "python -m pytest bench/test_sessions.py -s -k vs_llama",
        "n_gen": N_GEN, "n_draft": N_DRAFT, "rounds": ROUNDS, "types": rows,
        "models": "draft: 4-layer n_embd 256 llama + 1 % noise copy; mtp: tiny qwen35 (hybrid) "
                  "with one NextN block; eagle3: 4-layer n_embd 64 llama + 1-layer eagle3 draft "
                  "(random heads: accept nothing)"})


def test_draft_model_speedup(models):
    target, draft = models["speedup"]
    plain, spec_, accept = [], [], []
    for _ in range(ROUNDS):
        p = _ours(target, None, None)
        s = _ours(target, "draft", draft)
        assert s.tokens.tolist()[:32] == p.tokens.tolist()[:32]
        plain.append(p.stats.decode_tok_s)
        spec_.append(s.stats.decode_tok_s)
        accept.append(s.stats.n_accepted / max(s.stats.n_drafted, 1))
    med = statistics.median
    save("sessions_speedup", {
        "command": "python -m pytest bench/test_sessions.py -s -k speedup",
        "n_gen": N_GEN, "n_draft": N_DRAFT, "rounds": ROUNDS,
        "models": "target: 16-layer n_embd 512 llama, draft: its first layer (same seed), "
                  "attention/FFN weights scaled by 0.05",
        "plain_tok_s": med(plain), "draft_tok_s": med(spec_),
        "speedup": statistics.median(s / p for s, p in zip(spec_, plain)),
        "accept_rate": med(accept)})


def test_chain_ngram_then_draft_model(models):
    """A cheap n-gram stage before the draft model (the reference's chain order), against each
    stage alone, on the speedup pair, for two prompts: the plain one (the continuation never
    repeats an n-gram) and a grounded one (the prompt, its plain continuation, the prompt again:
    the target writes the continuation again, which the n-gram stage finds in the prompt). Rounds
    alternate the runs."""
    import numpy as np
    target, draft = models["speedup"]
    with spec.Model(str(target), vocab_only=True) as vocab:
        head = vocab.tokenize(PROMPT)
    cont = _ours(target, None, None).tokens
    prompts = {"fresh": PROMPT, "grounded": np.concatenate([head, cont, head[1:]])}
    runs = {"plain": (None, None), "ngram-simple": ("ngram-simple", None),
            "draft": ("draft", draft), "ngram-simple,draft": ("ngram-simple,draft", draft)}
    rows = []
    for kind, prompt in prompts.items():
        tok_s = {name: [] for name in runs}
        stats = {}
        for _ in range(ROUNDS):
            for name, (drafter, dm) in runs.items():
                r = _ours(target, drafter, dm, prompt=prompt)
                tok_s[name].append(r.stats.decode_tok_s)
                stats[name] = r.stats
        for name in runs:
            s = stats[name]
            rows.append({"prompt": kind, "drafter": name,
                         "tok_s": statistics.median(tok_s[name]),
                         "speedup": statistics.median(t / p for t, p in
                                                      zip(tok_s[name], tok_s["plain"])),
                         "n_drafted": s.n_drafted, "n_accepted": s.n_accepted,
                         "stages": getattr(s, "stages", None)})
            assert rows[-1]["tok_s"] > 0
    for r in rows:
        print(f"{r['prompt']:<9} {r['drafter']:<20} {r['tok_s']:8.1f} tok/s {r['speedup']:6.2f}x  "
              f"accepted {r['n_accepted']}/{r['n_drafted']}  stages {r['stages']}")
    save("sessions_chain", {
        "command": "python -m pytest bench/test_sessions.py -s -k chain",
        "n_gen": N_GEN, "n_draft": N_DRAFT, "rounds": ROUNDS,
        "models": "the speedup pair (16-layer n_embd 512 llama target, its first layer as draft)",
        "rows": rows})
