"""Render bench/results/*.json as the markdown tables quoted in bench/RESULTS.md.

    python bench/report.py            # prints markdown for every results file present
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(d: dict) -> str:
    m = d["machine"]
    return (f"_{m['cpu']}, {m['cores']} cores, {m['threads']} threads, Python {m['python']}, "
            f"{' '.join(m['features'])}; `{d['command']}`_")


def plain_decode(d: dict) -> str:
    return "\n".join([
        "| measure | tokens/s |", "|---|---|",
        f"| spec `Context.generate_greedy` | {d['spec_tok_s']:.1f} |",
        f"| llama.cpp `llama-bench` tg{d['n_gen']} | {d['llama_bench_tg_tok_s']:.1f} |",
        f"| llama.cpp `llama-completion` eval | {d['llama_completion_tok_s']:.1f} |",
        f"| **ratio spec / llama-bench** | **{d['ratio_vs_llama_bench']:.3f}** |",
        f"| **ratio spec / llama-completion** | **{d['ratio_vs_llama_completion']:.3f}** |",
        "", f"Medians of {d['rounds']} interleaved rounds. " + _machine(d)])


def end_to_end(d: dict) -> str:
    rows = ["| drafter | code speedup | code tok/step | chat speedup | chat tok/step |",
            "|---|---|---|---|---|"]
    for name in d["code_speedup"]:
        rows.append(f"| {name} | {d['code_speedup'][name]:.2f}x | "
                    f"{d['code_mean_accept_len'][name]:.2f} | {d['chat_speedup'][name]:.2f}x | "
                    f"{d['chat_mean_accept_len'][name]:.2f} |")
    rows += ["", f"Median over {d['n_prompts']} prompts of per-prompt tok/s ratios (plain "
             f"measured back to back), {d['n_gen']} new tokens, greedy. " + _machine(d)]
    return "\n".join(rows)


def side_by_side(d: dict) -> str:
    rows = ["| method | spec / llama-speculative-simple | accept rate spec | accept rate llama.cpp |",
            "|---|---|---|---|"]
    for name, r in d["methods"].items():
        rows.append(f"| {name} | {r['ratio_ours_over_theirs']:.3f} | "
                    f"{100 * r['accept_rate_ours']:.0f} % | {100 * r['accept_rate_theirs']:.0f} % |")
    rows += ["", f"Code prompts, draft length {d['n_draft']}, {d['n_gen']} new tokens, median over "
             f"{d['n_prompts']} prompts. " + _machine(d)]
    return "\n".join(rows)


def lossless(d: dict) -> str:
    rows = ["| drafter | runs | diverged | largest top-2 margin at a divergence | drafts accepted |",
            "|---|---|---|---|---|"]
    for name, r in d["drafters"].items():
        rows.append(f"| {name} | {r['runs']} | {r['diverged']} | "
                    f"{r['max_margin_at_divergence']:.3f} | {r['accepted']} |")
    noise = d["batch_shape_noise"]
    rows += ["", f"{d['n_gen']} new tokens per run, draft length {d['n_draft']}; plain greedy with "
             f"a trace is the reference. Batch-shape noise, measured by re-decoding the plain "
             f"continuations in batches of {noise['rows_per_batch']} rows: top-two margins move by "
             f"up to {noise['max_margin_shift']:.3f} (median {noise['median_margin_shift']:.4f}) "
             f"over {noise['positions']} positions, flipping {noise['greedy_flips']} greedy "
             f"tokens; every divergence above is within that bound. " + _machine(d)]
    return "\n".join(rows)


def batch(d: dict) -> str:
    rows = ["| n_parallel | plain tok/s | speculative tok/s | speedup | accept rate | "
            "drafted / step | tokens / step | generated, plain / spec | wall s, plain / spec | "
            "prompt decoding s, plain / spec |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in d["rows"].items():
        pl, sp = r["plain"], r["spec"]
        prefill = (f"{pl['prefill_s']:.1f} / {sp['prefill_s']:.1f}" if "prefill_s" in sp
                   else "—")
        rows.append(f"| {n} | {pl['tok_s']:.1f} | {sp['tok_s']:.1f} | "
                    f"{r['speedup']:.2f}x | {100 * sp['accept_rate']:.0f} % | "
                    f"{sp.get('drafted_per_step', float('nan')):.2f} | "
                    f"{sp.get('tokens_per_step', float('nan')):.2f} | "
                    f"{pl['n_generated']} / {sp['n_generated']} | "
                    f"{pl['wall_s']:.1f} / {sp['wall_s']:.1f} | {prefill} |")
    rows += ["", f"Batched speculation at 8 over one-at-a-time speculation: "
             f"{d['batched_spec_at_8_over_one_at_a_time_spec']:.2f}x. {d['n_prompts']} prompts, "
             + (f"each generated to its closing code fence (at most {d['max_tokens']} tokens)"
                if d.get("stop")
                else f"{d['max_tokens']} new tokens each")
             + (f", started {d['order'].replace('_', ' ')}" if "order" in d else "")
             + f", drafter `{d['drafter']}`; speedup = median of "
             f"{d.get('rounds', 1)} alternating rounds' ratios. " + _machine(d)]
    return "\n".join(rows)


def sessions(d: dict) -> str:
    rows = ["| session | spec tok/s | llama.cpp tok/s | spec / llama-speculative-simple | "
            "accept rate spec | accept rate llama.cpp |", "|---|---|---|---|---|---|"]
    for name, r in d["types"].items():
        rows.append(f"| {name} | {r['spec_tok_s']:.1f} | {r['llama_tok_s']:.1f} | "
                    f"{r['ratio_ours_over_theirs']:.3f} | {100 * r['accept_rate_ours']:.0f} % | "
                    f"{100 * r['accept_rate_theirs']:.0f} % |")
    rows += ["", f"{d['models']}. Draft length {d['n_draft']}, {d['n_gen']} new tokens, median "
             f"of {d['rounds']} rounds. " + _machine(d)]
    return "\n".join(rows)


def sessions_speedup(d: dict) -> str:
    return "\n".join([
        "| plain tok/s | draft-model tok/s | speedup | accept rate |", "|---|---|---|---|",
        f"| {d['plain_tok_s']:.1f} | {d['draft_tok_s']:.1f} | **{d['speedup']:.2f}x** | "
        f"{100 * d['accept_rate']:.0f} % |",
        "", f"{d['models']}; draft length {d['n_draft']}, {d['n_gen']} new tokens, median of "
        f"{d['rounds']} rounds. " + _machine(d)])


def verify_cost(d: dict) -> str:
    sizes = list(d["median_ms"])
    rows = []
    for start in range(0, len(sizes), 16):          # 16 sizes per table keeps lines readable
        chunk = sizes[start:start + 16]
        rows += ["| rows | " + " | ".join(str(n) for n in chunk) + " |",
                 "|---|" + "---|" * len(chunk),
                 "| ms | " + " | ".join(f"{d['median_ms'][n]:.1f}" for n in chunk) + " |",
                 "| × one row | " + " | ".join(f"{d['relative_to_one_row'][n]:.2f}" for n in chunk)
                 + " |"]
        if "logits_at_last_row_only_ms" in d:
            last, out = d["logits_at_last_row_only_ms"], d["output_layer_ms_per_row"]
            rows += ["| ms, logits at the last row only | "
                     + " | ".join(f"{last[n]:.1f}" for n in chunk) + " |",
                     "| output layer, ms per extra row | "
                     + " | ".join(f"{out[n]:.2f}" if n in out else "—" for n in chunk) + " |"]
        rows += [""]
    rows += [f"One sequence after a {d['context']}-token context, logits at every row, median of "
             f"{d['repeats']} interleaved repetitions. " + _machine(d)]
    return "\n".join(rows)


SECTIONS = [("plain_decode", "Plain decoding vs llama.cpp", plain_decode),
            ("verify_cost", "What a verify batch costs, by rows", verify_cost),
            ("end_to_end", "End to end: drafters vs plain decoding", end_to_end),
            ("side_by_side", "Side by side with llama-speculative-simple", side_by_side),
            ("lossless_report", "Greedy losslessness on the default model", lossless),
            ("batch_code", "Batch generation, code prompts", batch),
            ("batch_chat", "Batch generation, chat prompts", batch),
            ("batch_code_complete", "Batch generation, complete code rewrites", batch),
            ("sessions_side_by_side", "Model-based sessions vs llama-speculative-simple", sessions),
            ("sessions_speedup", "Draft-model speedup on a synthesized pair", sessions_speedup)]


def main() -> int:
    for name, title, render in SECTIONS:
        data = _load(name)
        if data is not None:
            print(f"### {title}\n\n{render(data)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
