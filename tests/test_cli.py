"""``python -m spec``: generate (JSON output, prompt files), info, and its error exits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spec import _build_info

ROOT = Path(__file__).resolve().parents[1]
JSON_KEYS = {"text", "tokens", "n_prompt", "n_generated", "prefill_s", "decode_s", "decode_tok_s",
             "n_steps", "n_drafted", "n_accepted", "accept_rate", "mean_accept_len", "draft_s",
             "verify_s"}


def run_cli(*args, timeout=120, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "spec", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(ROOT), input=stdin)


def pieces_text(model, tokens) -> str:
    return b"".join(model.token_to_piece(int(t)) for t in tokens).decode("utf-8", "replace")


def generate_json(model_path, *args):
    r = run_cli("generate", "--model", model_path, "--threads", 1, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_generate_json(tiny_model, tiny_model_path):
    out = generate_json(tiny_model_path, "--prompt", "Hello world", "--max-tokens", 8)
    assert JSON_KEYS <= out.keys()
    assert out["n_generated"] == len(out["tokens"]) <= 8
    assert out["n_prompt"] == len(tiny_model.tokenize("Hello world"))
    # the text is the generated pieces (a continuation keeps its leading space)
    assert out["text"] == pieces_text(tiny_model, out["tokens"])
    assert out["n_drafted"] == 0 and out["n_accepted"] == 0
    assert out["prefill_s"] >= 0 and out["decode_s"] >= 0


def test_generate_json_equals_the_library(tiny_model, tiny_model_path):
    from spec._runtime._core import Context
    with Context(tiny_model, n_ctx=256, n_threads=1) as ctx:
        expected = ctx.generate_greedy(tiny_model.tokenize("The quick brown fox"), 8)[0]
    out = generate_json(tiny_model_path, "--prompt", "The quick brown fox", "--max-tokens", 8)
    assert out["tokens"] == expected.tolist()


def test_prompt_file(tiny_model_path, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("Hello world")
    from_file = generate_json(tiny_model_path, "--prompt-file", f, "--max-tokens", 6)
    inline = generate_json(tiny_model_path, "--prompt", "Hello world", "--max-tokens", 6)
    assert from_file["tokens"] == inline["tokens"]
    assert from_file["n_prompt"] == inline["n_prompt"]


def test_plain_text_output(tiny_model, tiny_model_path):
    r = run_cli("generate", "--model", tiny_model_path, "--threads", 1, "--prompt", "Hello world",
                "--max-tokens", 4)
    assert r.returncode == 0, r.stderr
    out = generate_json(tiny_model_path, "--prompt", "Hello world", "--max-tokens", 4)
    assert r.stdout == out["text"] + "\n"
    assert "generated 4 tok" in r.stderr


def test_info_prints_the_commit():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert _build_info.LLAMA_CPP_COMMIT in r.stdout
    assert "llama.cpp commit" in r.stdout
    # the default build: the CPU backend and its one device
    assert "backends:         CPU" in r.stdout
    assert any(line.startswith("device:") and "(cpu)" in line for line in r.stdout.splitlines())


def test_missing_model_file(tmp_path):
    missing = tmp_path / "missing.gguf"
    r = run_cli("generate", "--model", missing, "--prompt", "x", "--max-tokens", 2)
    assert r.returncode == 2
    assert str(missing) in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_prompt_file(tiny_model_path, tmp_path):
    r = run_cli("generate", "--model", tiny_model_path, "--prompt-file", tmp_path / "none.txt")
    assert r.returncode == 2
    assert "none.txt" in r.stderr and "Traceback" not in r.stderr


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    r = run_cli("generate", "--model", bad, "--prompt", "x", "--max-tokens", 2)
    assert r.returncode == 2
    assert "not a GGUF" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5"])
def test_bad_n_draft_is_an_argparse_error(tiny_model_path, value):
    r = run_cli("generate", "--model", tiny_model_path, "--prompt", "x", f"--n-draft={value}")
    assert r.returncode == 2
    assert "--n-draft" in r.stderr and "usage:" in r.stderr
    assert "Traceback" not in r.stderr


def test_prompt_from_piped_stdin(tiny_model_path):
    r = run_cli("generate", "--model", tiny_model_path, "--threads", 1, "--json",
                "--max-tokens", 6, stdin="Hello world")
    assert r.returncode == 0, r.stderr
    inline = generate_json(tiny_model_path, "--prompt", "Hello world", "--max-tokens", 6)
    assert json.loads(r.stdout)["tokens"] == inline["tokens"]


def test_no_prompt_generates_from_the_start_token(tiny_model, tiny_model_path):
    out = generate_json(tiny_model_path, "--max-tokens", 5)     # stdin empty: no prompt at all
    assert out["n_prompt"] == len(tiny_model.tokenize("")) == 1   # the BOS token alone
    assert out["n_generated"] == 5


def test_prompt_and_prompt_file_exclude_each_other(tiny_model_path, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("x")
    r = run_cli("generate", "--model", tiny_model_path, "--prompt", "x", "--prompt-file", f)
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_unknown_drafter_is_an_argparse_error(tiny_model_path):
    r = run_cli("generate", "--model", tiny_model_path, "--prompt", "x", "--drafter", "nope")
    assert r.returncode == 2 and "--drafter" in r.stderr and "Traceback" not in r.stderr
