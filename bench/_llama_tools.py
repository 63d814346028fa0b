"""Run llama.cpp's own tools (built from the same source as spec) and parse their timings."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """Path of a llama.cpp tool in spec's cached build tree, building it on first use."""
    from spec import _build_info

    path = Path(_build_info.LLAMA_CPP_BUILD) / "bin" / name
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "buildsupport" / "llama_build.py"), name],
                       check=True)
    return str(path)


def llama_bench_tg(model: str, n_gen: int, threads: int, reps: int = 3) -> float:
    """llama-bench's tg<n_gen> tokens/s (single-token decode, same threads)."""
    out = subprocess.run([tool("llama-bench"), "-m", model, "-t", str(threads), "-p", "0",
                          "-n", str(n_gen), "-r", str(reps), "-o", "json"],
                         check=True, capture_output=True, text=True, errors="replace").stdout
    return float(json.loads(out)[0]["avg_ts"])


def llama_completion(model: str, prompt_file: str, n_predict: int, threads: int,
                     n_ctx: int = 4096) -> dict:
    """Greedy generation with llama-completion; returns its eval (decode) tokens/s and text."""
    proc = subprocess.run(
        [tool("llama-completion"), "-m", model, "-f", prompt_file, "-n", str(n_predict),
         "--temp", "0", "-t", str(threads), "-c", str(n_ctx), "-no-cnv", "--no-display-prompt",
         "--simple-io", "--ignore-eos", "-b", "512"],
        check=True, capture_output=True, text=True, errors="replace")
    m = re.search(r"eval time =\s*([\d.]+) ms /\s*(\d+) runs", proc.stderr.split("prompt eval time")[-1])
    ms, runs = float(m.group(1)), int(m.group(2))
    return {"tok_s": runs / (ms / 1e3), "text": proc.stdout}


def speculative_simple(model: str, prompt_file: str, n_predict: int, threads: int, spec_type: str,
                       n_draft: int, extra: list[str] = (), n_ctx: int = 4096) -> dict:
    """llama-speculative-simple with an n-gram type; returns decode tokens/s and counters."""
    proc = subprocess.run(
        [tool("llama-speculative-simple"), "-m", model, "-f", prompt_file, "-n", str(n_predict),
         "--temp", "0", "-t", str(threads), "-c", str(n_ctx), "--spec-type", spec_type,
         "--spec-draft-n-max", str(n_draft), *extra],
        # Random-weight test models emit byte tokens that need not form valid UTF-8.
        capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"llama-speculative-simple failed: {proc.stderr[-2000:]}")
    log = proc.stderr
    m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    n, secs = int(m.group(1)), float(m.group(2))
    drafted = int(re.search(r"n_drafted = (\d+)", log).group(1))
    accepted = int(re.search(r"n_accept  = (\d+)", log).group(1))
    return {"tok_s": n / secs, "n_predict": n, "n_drafted": drafted, "n_accepted": accepted}
