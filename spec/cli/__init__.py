"""Command line: ``python -m spec {info,generate,demo,batch}``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from spec.cli._options import add_generation_options, add_model_options
from spec.cli.batch import add_arguments as add_batch_arguments, cmd_batch

DEMO_PROMPT = '''Here is a Python function:

```python
def moving_average(values, window):
    """Return the moving averages of values over a sliding window."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            averages.append(total / window)
    return averages
```

The same function, with the variable `values` renamed to `samples`:

```python
'''


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="llama.cpp commit, build flags, CPU features, backends and "
                                "devices")

    gen = sub.add_parser("generate", help="generate text for one prompt")
    add_model_options(gen)
    src = gen.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text (default: standard input when it is piped, "
                                      "else none: generate from the model's start token)")
    src.add_argument("--prompt-file", type=Path, help="file holding the prompt")
    add_generation_options(gen)
    gen.add_argument("--draft-model", type=Path, default=None,
                     help="draft GGUF for --drafter draft / eagle3 / dflash (alone or as "
                          "a chain's stage: --drafter ngram-mod,draft)")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.add_argument("--trace", action="store_true",
                     help="with --json: add per-token top-1 minus top-2 logit margins")

    demo = sub.add_parser("demo", help="the same grounded prompt with and without speculation")
    add_model_options(demo)
    demo.add_argument("--drafter", default="suffix")
    demo.add_argument("--max-tokens", type=int, default=128)
    demo.add_argument("--json", action="store_true")

    add_batch_arguments(sub.add_parser("batch", help="resumable batch generation: JSONL prompts "
                                                     "in, one JSON line per finished request out"))
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if verbose:
        logging.getLogger("spec.llama").setLevel(logging.INFO)


def cmd_info(args) -> int:
    from spec import _build_info
    from spec._runtime import _core
    print(f"spec {__import__('spec').__version__}")
    print(f"llama.cpp commit: {_build_info.LLAMA_CPP_COMMIT}")
    print(f"llama.cpp source: {_build_info.LLAMA_CPP_SRC}")
    print(f"llama.cpp build:  {_build_info.LLAMA_CPP_BUILD}")
    print(f"cmake flags:      {' '.join(_build_info.CMAKE_FLAGS)}")
    feats = _core.cpu_features()
    print("cpu features:     " + " ".join(k for k, v in feats.items() if v))
    print(f"backends:         {', '.join(_core.backends())}")
    for dev in _core.devices():
        memory = (f", {dev['memory_free'] / 2**30:.1f} / {dev['memory_total'] / 2**30:.1f} GiB free"
                  if dev["memory_total"] else "")
        print(f"device:           {dev['name']} ({dev['type']}): {dev['description']}{memory}")
    print(f"system info:      {_core.system_info().strip()}")
    return 0


def _engine(args, drafter):
    from spec.engine import Engine
    draft_model = getattr(args, "draft_model", None)
    return Engine(args.model, drafter=drafter, n_draft=getattr(args, "n_draft", "auto"),
                  n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                  drafter_params=({"draft_model": draft_model,
                                   "draft_n_gpu_layers": args.n_gpu_layers}
                                  if draft_model else None))


def cmd_generate(args) -> int:
    if args.prompt is not None:
        prompt = args.prompt
    elif args.prompt_file is not None:
        prompt = args.prompt_file.read_text()
    else:
        prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    with _engine(args, args.drafter) as engine:
        result = engine.generate(prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                 seed=args.seed, stop=args.stop, trace=args.trace)
    st = result.stats
    if args.json:
        out = {
            "text": result.text, "tokens": result.tokens.tolist(), "n_prompt": st.n_prompt,
            "n_generated": st.n_generated, "prefill_s": st.prefill_s, "decode_s": st.decode_s,
            "decode_tok_s": st.decode_tok_s, "drafter": args.drafter, "n_steps": st.n_steps,
            "n_drafted": st.n_drafted, "n_accepted": st.n_accepted, "accept_rate": st.accept_rate,
            "mean_accept_len": st.mean_accept_len, "draft_s": st.draft_s, "verify_s": st.verify_s,
            "sample_s": st.sample_s,
        }
        if st.stages:           # a chain: each stage's share, in the reference's terms
            out["stages"] = st.stages
        if args.trace:
            out["margins"] = [float(m) for m in result.margins]
        print(json.dumps(out))
    else:
        print(result.text)
        print(st.format(), file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from spec.engine import Engine
    from spec._runtime._core import Model
    from spec.models import resolve
    model = Model(resolve(args.model), n_gpu_layers=args.n_gpu_layers)
    rows = {}
    for label, drafter in (("plain", "none"), (args.drafter, args.drafter)):
        with Engine(model, drafter=drafter, n_ctx=args.n_ctx, n_threads=args.threads) as engine:
            engine.generate(DEMO_PROMPT, max_tokens=8)           # warm-up
            rows[label] = engine.generate(DEMO_PROMPT, max_tokens=args.max_tokens, trace=True)
    plain, spec_ = rows["plain"], rows[args.drafter]
    speedup = spec_.stats.decode_tok_s / plain.stats.decode_tok_s if plain.stats.decode_tok_s else 0
    n = min(len(plain.tokens), len(spec_.tokens))
    diverged = [i for i in range(n) if plain.tokens[i] != spec_.tokens[i]][:1]
    same = not diverged and len(plain.tokens) == len(spec_.tokens)
    if same:
        agreement = "identical to plain greedy"
    elif diverged:
        i = diverged[0]
        agreement = (f"equal to plain greedy up to token {i}, where the plain run's top two "
                     f"logits differ by only {plain.margins[i]:.3f} (a near-tie that batched and "
                     f"single-token kernels round differently)")
    else:
        agreement = "a prefix of plain greedy (stopped early)"
    if args.json:
        print(json.dumps({"plain_tok_s": plain.stats.decode_tok_s,
                          "spec_tok_s": spec_.stats.decode_tok_s, "speedup": speedup,
                          "drafter": args.drafter, "accept_rate": spec_.stats.accept_rate,
                          "mean_accept_len": spec_.stats.mean_accept_len, "identical": same,
                          "first_divergence": diverged[0] if diverged else None,
                          "margin_at_divergence": float(plain.margins[diverged[0]]) if diverged else None}))
        return 0
    print(spec_.text)
    print("-" * 60)
    print(f"model: {model.path}")
    print(f"plain decoding:        {plain.stats.decode_tok_s:7.1f} tok/s")
    print(f"speculative ({args.drafter}): {spec_.stats.decode_tok_s:7.1f} tok/s  "
          f"(accepted {100 * spec_.stats.accept_rate:.0f} % of drafts, "
          f"{spec_.stats.mean_accept_len:.2f} tok/step)")
    print(f"speedup:               {speedup:7.2f}x")
    print(f"output: {agreement}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    from spec._runtime._errors import SpecError
    try:
        return {"info": cmd_info, "generate": cmd_generate, "demo": cmd_demo,
                "batch": cmd_batch}[args.command](args)
    except (SpecError, OSError, ValueError) as e:     # OSError: missing, directory, unreadable
        print(f"error: {e}", file=sys.stderr)
        return 2
