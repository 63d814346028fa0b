"""Plain greedy decoding: spec's nogil loop vs llama.cpp's llama-bench and llama-completion.

    python -m pytest bench/test_plain_decode.py -s

Goal: ratio spec / llama.cpp >= 0.97 (the Python package adds no measurable cost).
"""
from __future__ import annotations

import statistics
import tempfile

import spec
from _llama_tools import llama_bench_tg, llama_completion
from conftest import THREADS, save

N_GEN = 128
ROUNDS = 5
PROMPT = "The history of the printing press begins"


def test_plain_decode_vs_llama_cpp(default_model_path):
    model = spec.Model(default_model_path)
    ctx = spec.Context(model, n_ctx=1024, n_threads=THREADS)
    prompt = model.tokenize(PROMPT)
    ctx.generate_greedy(prompt, 16)                      # warm-up
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(PROMPT)
    ours, bench, completion = [], [], []
    text_ours = text_theirs = None
    for _ in range(ROUNDS):                              # interleaved: same machine state
        tokens, _, decode_s = ctx.generate_greedy(prompt, N_GEN, stop_at_eog=False)
        assert len(tokens) == N_GEN
        ours.append((N_GEN - 1) / decode_s)
        text_ours = model.detokenize(tokens)
        bench.append(llama_bench_tg(default_model_path, N_GEN, THREADS, reps=1))
        run = llama_completion(default_model_path, f.name, N_GEN, THREADS, n_ctx=1024)
        completion.append(run["tok_s"])
        text_theirs = run["text"]
    # Same build, same prompt, same greedy rule: the same text.
    assert text_theirs.startswith(text_ours[:200]) or text_ours.startswith(text_theirs[:200])
    med = statistics.median
    save("plain_decode", {
        "command": "python -m pytest bench/test_plain_decode.py -s",
        "n_gen": N_GEN, "rounds": ROUNDS,
        "spec_tok_s": med(ours), "llama_bench_tg_tok_s": med(bench),
        "llama_completion_tok_s": med(completion),
        "ratio_vs_llama_bench": med(ours) / med(bench),
        "ratio_vs_llama_completion": med(ours) / med(completion),
        "per_round": {"spec": ours, "llama_bench": bench, "llama_completion": completion},
    })
