"""``python -m spec batch``: batched output equals single-sequence output, resume after SIGKILL,
bad input lines, strict mode, progress and summary."""
from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import spec.cli
from spec.batch import run_batch, scan_output
from spec.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
THREADS = 1          # one llama.cpp thread: spinning threads crawl on a busy 2-core machine
N_CTX = 512
MAX_TOKENS = 96        # long enough for the bigram model's output to cycle, so drafts match
N_DRAFT = 8           # fixed: "auto" follows measured timings, so its counters vary run to run

WORDS = ("alpha beta gamma delta river stone cloud market engine paper window silver garden "
         "number planet music doctor yellow castle winter orange button camera forest letter "
         "bridge").split()


def make_prompts(n: int) -> list[str]:
    """n prompts of growing lengths (3 to ~50 tokens) ending in different words."""
    out = []
    for i in range(n):
        k = (5 * i) % len(WORDS)
        out.append(" ".join(WORDS[k:] + WORDS[:k])[: 6 + 11 * i])
    return out


PROMPTS = make_prompts(12)

try:
    import spec.drafters._suffix  # noqa: F401
    SUFFIX = ["suffix"]
except ImportError:
    SUFFIX = [pytest.param("suffix", marks=pytest.mark.skip(
        reason="spec.drafters._suffix is not built"))]
DRAFTERS = ["none", "ngram-simple", *SUFFIX]


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(records: list[dict]) -> dict:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"an id appears twice: {sorted(ids, key=str)}"
    return {r["id"]: r for r in records}


def run(inp, out, model, **kw):
    kw = {"drafter": "none", "n_parallel": 3, "n_draft": N_DRAFT, "max_tokens": MAX_TOKENS,
          "n_ctx": N_CTX, "threads": THREADS, "progress": False, "log": io.StringIO(), **kw}
    return run_batch(inp, out, model=str(model), **kw)


@pytest.fixture(scope="module")
def reference(bigram_model_path):
    """Single-sequence plain greedy output of every prompt: id -> (text, tokens)."""
    with Engine(str(bigram_model_path), drafter=None, n_ctx=N_CTX, n_threads=THREADS) as engine:
        ref = {}
        for i, p in enumerate(PROMPTS):
            r = engine.generate(p, max_tokens=MAX_TOKENS)
            ref[f"p{i}"] = (r.text, r.tokens.tolist())
    assert len({text for text, _ in ref.values()}) > 3, "prompts should not all agree"
    return ref


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("batch") / "prompts.jsonl",
                       [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)])


# -- batched output == single-sequence output ------------------------------------------------


@pytest.mark.parametrize("drafter", DRAFTERS)
@pytest.mark.parametrize("n_parallel", [1, 3, 8])
def test_batched_greedy_equals_single_sequence(bigram_model_path, reference, prompts_file,
                                               tmp_path, drafter, n_parallel):
    out = tmp_path / "out.jsonl"
    code, summary = run(prompts_file, out, bigram_model_path, drafter=drafter,
                        n_parallel=n_parallel)
    assert code == 0, summary
    records = by_id(read_records(out))
    assert set(records) == set(reference)
    for rid, (text, tokens) in reference.items():
        rec = records[rid]
        assert rec["text"] == text, f"{rid}: batched output differs from single-sequence output"
        assert rec["n_generated"] == len(tokens)
        assert rec["n_accepted"] <= rec["n_drafted"]
    assert summary["done"] == len(PROMPTS) and summary["n_invalid"] == 0
    assert summary["generated_tokens"] == sum(len(t) for _, t in reference.values())
    assert summary["n_accepted"] == sum(r["n_accepted"] for r in records.values())
    if drafter == "none":
        assert summary["n_drafted"] == 0
    else:
        assert summary["n_accepted"] > 0, f"{drafter} never had a draft accepted: vacuous test"


def test_more_sequences_than_fit_the_unified_kv_cache(bigram_model_path, reference, caplog):
    """8 parallel requests need more KV cells than the caller's n_ctx holds: requests wait for
    free cells instead of failing the decode, with a warning that fewer run in parallel (the
    test above runs this case through the job)."""
    with Engine(str(bigram_model_path), drafter="ngram-simple", n_ctx=N_CTX, n_threads=THREADS,
                n_parallel=8) as engine:
        need = sum(len(engine.model.tokenize(p)) + MAX_TOKENS for p in PROMPTS[:8])
        assert need > N_CTX, "the case is not exercised"
        with caplog.at_level(logging.WARNING, logger="spec"):
            results = engine.generate_batch(PROMPTS, n_parallel=8, max_tokens=MAX_TOKENS)
        assert engine.ctx.n_ctx == N_CTX
    assert any("fewer run in parallel" in r.getMessage() for r in caplog.records)
    for i, r in enumerate(results):
        assert r.tokens.tolist() == reference[f"p{i}"][1]


def test_default_context_grows_to_hold_every_parallel_request(bigram_model_path, reference):
    with Engine(str(bigram_model_path), drafter="ngram-simple", n_threads=THREADS) as engine:
        n_ctx0 = engine.ctx.n_ctx
        max_tokens = n_ctx0 // 4                       # 8 requests need about 2 x n_ctx0 cells
        need = sum(sorted((len(engine.model.tokenize(p)) + max_tokens for p in PROMPTS),
                          reverse=True)[:8])
        assert need > n_ctx0, "the case is not exercised"
        results = engine.generate_batch(PROMPTS, n_parallel=8, max_tokens=max_tokens)
        assert engine.ctx.n_ctx >= need and engine.ctx.n_seq_max >= 8
    for i, r in enumerate(results):
        got, want = r.tokens.tolist(), reference[f"p{i}"][1]
        k = min(len(got), len(want))              # the reference ran to MAX_TOKENS
        assert k > 0 and got[:k] == want[:k]


@pytest.mark.parametrize("drafter", ["ngram-simple", *SUFFIX])
def test_request_order_does_not_change_outputs(bigram_model_path, prompts_file, tmp_path,
                                               drafter):
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    random.Random(7).shuffle(rows)
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", rows)
    # input order, so the shuffled file really starts its requests in another order
    for src, dst in ((prompts_file, "a.jsonl"), (shuffled, "b.jsonl")):
        assert run(src, tmp_path / dst, bigram_model_path, drafter=drafter, order="input")[0] == 0
    a, b = by_id(read_records(tmp_path / "a.jsonl")), by_id(read_records(tmp_path / "b.jsonl"))
    assert set(a) == set(b) == {f"p{i}" for i in range(len(PROMPTS))}
    for rid in a:
        if drafter == "ngram-simple":
            # per-sequence state only: drafts, and so every counter, depend on the request alone
            assert a[rid] == b[rid], rid
        else:
            # the suffix tree's global tree learns from earlier requests: same text, own counters
            assert a[rid]["text"] == b[rid]["text"], rid


def test_longest_requests_start_first(bigram_model_path, reference):
    """order="longest_first" starts the requests reserving the most cells (prompt + max_tokens)
    first, ties in input order; "input" keeps input order. With one slot, requests finish in
    the order they start. The outputs do not depend on the order."""
    max_tokens = [MAX_TOKENS, MAX_TOKENS, 8, MAX_TOKENS, 8, MAX_TOKENS]
    requests = [{"prompt": PROMPTS[i], "max_tokens": m} for i, m in enumerate(max_tokens)]
    requests.append({"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS})     # ties with request 1
    with Engine(str(bigram_model_path), drafter="ngram-simple", n_draft=N_DRAFT, n_ctx=N_CTX,
                n_threads=THREADS) as engine:
        cells = [len(engine.model.tokenize(r["prompt"])) + r["max_tokens"] for r in requests]
        want = sorted(range(len(requests)), key=lambda i: (-cells[i], i))
        assert want != list(range(len(requests))), "the case is not exercised"
        longest = list(engine.iter_batch(requests, n_parallel=1))
        in_input = list(engine.iter_batch(requests, n_parallel=1, order="input"))
        with pytest.raises(ValueError, match="order must be one of"):
            engine.generate_batch(requests, order="shortest")
    assert [i for i, _ in longest] == want
    assert [i for i, _ in in_input] == list(range(len(requests)))
    by_index = dict(longest)
    for i, r in in_input:
        assert by_index[i].tokens.tolist() == r.tokens.tolist()
        m = requests[i]["max_tokens"]
        assert r.tokens.tolist() == reference[f"p{PROMPTS.index(requests[i]['prompt'])}"][1][:m]


@pytest.mark.parametrize("bad, error, message", [
    ({"prompt": "x", "seed": "abc"}, TypeError, "seed must be a 64-bit integer"),
    ({"prompt": "x", "temperature": -1.0}, ValueError, "temperature"),
    ({"prompt": "x", "max_tokens": -2}, ValueError, "max_tokens"),
    ({"prompt": "x " * 600}, ValueError, "exceed the context window"),
    ({"prompt": []}, ValueError, "prompt is empty"),
    ({"prompt": [10**9]}, ValueError, "not a token id"),
    ({"text": "x"}, ValueError, "unknown keys"),
    ({"prompt": "x", "stop": [""]}, ValueError, "stop"),
    ({"prompt": "x", "stop": 5}, TypeError, "stop must be a string or a list"),
    ({"prompt": "x", "max_tokens": "5"}, TypeError, "max_tokens must be an integer"),
])
def test_a_bad_request_is_named_before_anything_is_generated(bigram_model_path, bad, error,
                                                              message):
    requests = [PROMPTS[0], {"prompt": PROMPTS[1]}, bad]
    with Engine(str(bigram_model_path), drafter="ngram-simple", n_ctx=N_CTX,
                n_threads=THREADS) as engine:
        results = engine.iter_batch(requests, n_parallel=2, max_tokens=8)
        with pytest.raises(error, match=rf"request 2: .*{message}"):
            next(results)
        assert engine.ctx.kv_pos_max(0) == -1, "a request was decoded before the check"


def test_n_parallel_larger_than_the_number_of_prompts(bigram_model_path, reference, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl",
                      [{"id": i, "prompt": PROMPTS[i]} for i in range(3)])
    code, summary = run(inp, tmp_path / "out.jsonl", bigram_model_path, drafter="ngram-simple",
                        n_parallel=16)
    assert code == 0 and summary["done"] == 3
    records = by_id(read_records(tmp_path / "out.jsonl"))
    assert {i: r["text"] for i, r in records.items()} == {
        i: reference[f"p{i}"][0] for i in range(3)}


# -- resume ----------------------------------------------------------------------------------


def cli_command(model, inp, out, max_tokens):
    return [sys.executable, "-m", "spec", "batch", "--model", str(model), "--input", str(inp),
            "--output", str(out), "--drafter", "ngram-simple", "--n-draft", str(N_DRAFT), "--n-parallel", "3",
            "--max-tokens", str(max_tokens), "--n-ctx", "2048", "--threads", str(THREADS),
            "--json"]


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_resume_after_sigkill_equals_an_uninterrupted_run(bigram_model_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    inp = write_jsonl(tmp_path / "in.jsonl",
                      [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    out, full = tmp_path / "out.jsonl", tmp_path / "full.jsonl"
    max_tokens = 300          # requests finish in waves of 3, each wave a good fraction of a second
    proc = subprocess.Popen(cli_command(bigram_model_path, inp, out, max_tokens), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while complete_lines(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the job ended on its own first: {err.decode()}"
    n_killed = complete_lines(out)
    assert 2 <= n_killed < len(PROMPTS), "the job was not interrupted part-way"
    assert len(scan_output(out.read_bytes()).done) == n_killed

    resumed = subprocess.run(cli_command(bigram_model_path, inp, out, max_tokens), env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] == n_killed
    assert summary["done"] == len(PROMPTS) - n_killed

    uninterrupted = subprocess.run(cli_command(bigram_model_path, inp, full, max_tokens), env=env,
                                   capture_output=True, text=True, timeout=120)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    got, want = by_id(read_records(out)), by_id(read_records(full))
    assert set(got) == {f"r{i}" for i in range(len(PROMPTS))}
    assert got == want            # ngram-simple: every counter is per request, so all equal
    assert all(r["n_generated"] == max_tokens for r in got.values())


def test_ctrl_c_keeps_finished_lines_and_reports(bigram_model_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # four times the prompts: the job must still be running when the signal lands (with 12 it
    # once finished first on a loaded machine)
    prompts = PROMPTS * 4
    inp = write_jsonl(tmp_path / "in.jsonl",
                      [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)])
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(cli_command(bigram_model_path, inp, out, 300), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while complete_lines(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["error"] == "interrupted" and "re-run to resume" in stderr
    records = read_records(out)         # complete lines only
    assert summary["done"] == len(records) >= 1
    assert summary["remaining"] == len(prompts) - len(records) > 0


def test_partial_and_corrupt_output_lines_are_dropped_and_regenerated(bigram_model_path,
                                                                      prompts_file, tmp_path):
    full = tmp_path / "full.jsonl"
    assert run(prompts_file, full, bigram_model_path, drafter="ngram-simple")[0] == 0
    lines = full.read_bytes().splitlines(keepends=True)
    want = by_id(read_records(full))

    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])   # killed mid-line
    code, summary = run(prompts_file, out, bigram_model_path, drafter="ngram-simple")
    assert code == 0
    assert summary["partial_line_dropped"] and summary["output_dropped"] == []
    assert summary["skipped"] == len(lines) - 1 and summary["done"] == 1
    assert by_id(read_records(out)) == want
    assert out.read_bytes().startswith(b"".join(lines[:-1]))   # nothing written was lost

    # a complete line that is not a result (edited or corrupted file) is removed, its id redone
    out.write_bytes(b"".join(lines[:3]) + b"garbage\n" + b"".join(lines[4:]))
    log = io.StringIO()
    code, summary = run(prompts_file, out, bigram_model_path, drafter="ngram-simple", log=log)
    assert code == 0 and summary["done"] == 1
    assert [d["line"] for d in summary["output_dropped"]] == [4]
    assert f"{out}:4" in log.getvalue()
    assert by_id(read_records(out)) == want

    # nothing left to do: no model load, nothing generated, file unchanged
    before = out.read_bytes()
    code, summary = run(prompts_file, out, bigram_model_path)
    assert code == 0 and summary["done"] == 0 and summary["skipped"] == len(PROMPTS)
    assert out.read_bytes() == before


# -- bad input -------------------------------------------------------------------------------

BAD_INPUT = [
    (1, {"id": "v1", "prompt": "alpha beta"}, None),
    (2, '{"id": "b2", "prompt": ', "malformed JSON"),
    (3, "[1, 2]", "expected a JSON object"),
    (4, {"id": "b4"}, "missing 'prompt'"),
    (5, {"id": "b5", "prompt": ["alpha"]}, "'prompt' must be a string"),
    (6, {"prompt": "no id"}, "missing 'id'"),
    (7, {"id": "v1", "prompt": "again"}, "duplicate id \"v1\" (first on line 1)"),
    (8, {"id": "b8", "prompt": "x", "max_tokens": -3}, "max_tokens must be an integer >= 0"),
    (9, {"id": "b9", "prompt": "x", "max_tokens": "ten"}, "max_tokens must be an integer"),
    (10, {"id": "b10", "prompt": "x", "max_tokens": True}, "max_tokens must be an integer"),
    (11, {"id": "b11", "prompt": "x", "temperature": -1}, "temperature must be a number >= 0"),
    (12, {"id": "b12", "prompt": "x", "seed": 1.5}, "seed must be a 64-bit integer"),
    (13, {"id": "b13", "prompt": "x", "stop": [""]}, "stop must be a non-empty string"),
    (14, {"id": "b14", "prompt": "x", "top_p": 0}, "top_p must be a number in (0, 1]"),
    (15, {"id": "b15", "prompt": "word " * 600}, f"exceed the context window n_ctx={N_CTX}"),
    (16, {"id": "b16", "prompt": "x", "max_tokens": 1000}, "max_tokens (1000) exceed the context"),
    (17, "", None),
    (18, {"id": "v2", "prompt": "gamma", "max_tokens": 5, "temperature": 0.7, "seed": 9,
          "stop": "zzzz"}, None),
    (19, {"id": 19, "prompt": "an integer id"}, None),
    (20, {"id": True, "prompt": "x"}, "'id' must be a non-empty string or an integer"),
    (21, {"id": "b21", "prompt": "x", "colour": "red"}, "unknown key(s) ['colour']"),
    (22, b"\xff\xfe{}", "not UTF-8"),
]


def write_bad_input(path: Path) -> Path:
    with open(path, "wb") as f:
        for _, row, _ in BAD_INPUT:
            if isinstance(row, dict):
                row = json.dumps(row)
            f.write((row.encode() if isinstance(row, str) else row) + b"\n")
    return path


def batch_cli(capsys, model, inp, out, *extra):
    code = spec.cli.main(["batch", "--model", str(model), "--input", str(inp), "--output",
                          str(out), "--n-ctx", str(N_CTX), "--threads", str(THREADS),
                          "--max-tokens", "8", "--json", "--no-progress", *extra])
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if captured.out.strip() else None
    return code, summary, captured.err


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tiny_model_path, tmp_path, capsys):
    inp = write_bad_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    code, summary, err = batch_cli(capsys, tiny_model_path, inp, out)
    assert code == 0, err
    expected = {line: why for line, _, why in BAD_INPUT if why}
    got = {x["line"]: x["reason"] for x in summary["invalid"]}
    assert set(got) == set(expected)
    for line, why in expected.items():
        assert why in got[line], (line, got[line])
        assert f"line {line}: {got[line]}" in err             # the stderr summary lists them
    assert summary["n_invalid"] == len(expected)
    assert summary["requests"] == summary["done"] == 3
    records = by_id(read_records(out))
    assert set(records) == {"v1", "v2", 19}
    assert records["v1"]["n_generated"] == 8 and records["v2"]["n_generated"] <= 5


def test_strict_exits_2_and_writes_nothing(tiny_model_path, tmp_path, capsys):
    inp = write_bad_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    code, summary, err = batch_cli(capsys, tiny_model_path, inp, out, "--strict")
    assert code == 2 and summary["exit_code"] == 2 and summary["done"] == 0
    assert summary["n_invalid"] == sum(1 for _, _, why in BAD_INPUT if why)
    assert "--strict" in err
    assert not out.exists()
    # an existing output, even one with a partial last line, is left exactly as it was
    old = b'{"id": "v1", "text": "x"}\n{"id": "v2", "te'
    out.write_bytes(old)
    code, _, _ = batch_cli(capsys, tiny_model_path, inp, out, "--strict")
    assert code == 2 and out.read_bytes() == old
    # only the context check fails: still detected before anything is generated
    inp2 = write_jsonl(tmp_path / "in2.jsonl", [{"id": 1, "prompt": "x"},
                                                 {"id": 2, "prompt": "x", "max_tokens": 999}])
    code, summary, _ = batch_cli(capsys, tiny_model_path, inp2, tmp_path / "out2.jsonl",
                                 "--strict")
    assert code == 2 and [x["line"] for x in summary["invalid"]] == [2]
    assert not (tmp_path / "out2.jsonl").exists()


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_input(tiny_model_path, tmp_path, capsys, content):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content)
    code, summary, err = batch_cli(capsys, tiny_model_path, inp, tmp_path / "out.jsonl")
    assert code == 0, err
    assert summary["requests"] == summary["done"] == summary["n_invalid"] == 0
    assert summary["generated_tokens"] == 0 and summary["error"] is None
    assert "0 requests" in err


def test_bad_arguments_and_files(tiny_model_path, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "x"}])
    code, _, err = batch_cli(capsys, tiny_model_path, tmp_path / "missing.jsonl",
                             tmp_path / "out.jsonl")
    assert code == 2 and "missing.jsonl" in err
    code, _, err = batch_cli(capsys, tiny_model_path, inp, inp)
    assert code == 2 and "is the input file" in err
    code, _, err = batch_cli(capsys, tiny_model_path, inp, tmp_path / "o.jsonl",
                             "--temperature", "-1")
    assert code == 2 and "--temperature" in err
    for bad in ("0", "257", "two"):
        with pytest.raises(SystemExit):
            spec.cli.main(["batch", "--input", str(inp), "--output", "o", "--n-parallel", bad])
        assert "--n-parallel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        spec.cli.main(["batch", "--input", str(inp), "--output", "o", "--order", "shortest"])
    assert "--order" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--order must be one of"):
        run(inp, tmp_path / "o.jsonl", tiny_model_path, order="longest-first")
    assert not (tmp_path / "o.jsonl").exists()


def test_progress_bar_only_when_asked(tiny_model_path, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": p}
                                             for i, p in enumerate(PROMPTS[:4])])
    log = io.StringIO()       # not a terminal: no bar by default
    run(inp, tmp_path / "a.jsonl", tiny_model_path, progress=None, log=log)
    assert "\r" not in log.getvalue()
    log = io.StringIO()
    code, summary = run(inp, tmp_path / "b.jsonl", tiny_model_path, progress=True, log=log,
                        max_tokens=4)
    assert code == 0
    text = log.getvalue()
    assert "\rbatch:" in text and "4/4" in text and "tok/s" in text and "accepted" in text
    assert text.endswith("\r")        # the bar is cleared before the summary is printed


def test_a_second_job_on_the_same_output_is_refused(tiny_model_path, tmp_path, capsys):
    import fcntl
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "x"}])
    out = tmp_path / "out.jsonl"
    with open(out, "ab") as held:             # as a running job holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = batch_cli(capsys, tiny_model_path, inp, out)
        assert code == 2 and "another batch job" in err
        assert out.read_bytes() == b""
    code, summary, _ = batch_cli(capsys, tiny_model_path, inp, out)   # lock released: runs
    assert code == 0 and summary["done"] == 1


def test_prompts_longer_than_the_batch_prefill_in_chunks_between_steps(bigram_model_path,
                                                                        reference):
    """n_batch=16: long prompts are prefilled 16 rows at a time, one chunk before each step's
    verify batch, while running sequences keep generating, and drafts shrink to fit the batch;
    outputs unchanged."""
    with Engine(str(bigram_model_path), drafter="ngram-simple", n_draft=N_DRAFT, n_ctx=N_CTX,
                n_batch=16, n_threads=THREADS) as engine:
        assert max(len(engine.model.tokenize(p)) for p in PROMPTS) > 16, "no prompt is chunked"
        results = engine.generate_batch(PROMPTS, n_parallel=3, max_tokens=MAX_TOKENS)
        with pytest.raises(ValueError, match="n_batch"):
            engine.generate_batch(PROMPTS, n_parallel=17)
        with pytest.raises(TypeError, match="n_parallel must be an integer"):
            engine.generate_batch(PROMPTS, n_parallel=2.5)
    for i, r in enumerate(results):
        assert r.tokens.tolist() == reference[f"p{i}"][1], f"p{i}"
    assert sum(r.stats.n_accepted for r in results) > 0


def test_drafts_leave_room_for_a_prompt_joining_the_verify_batch(bigram_model_path):
    """n_batch=8: a prompt whose last chunk is decoded joins that step's verify batch, so the
    running sequence's draft is capped as if the prompt were already generating (7 drafted
    rows + its last token + the joining token would overflow the batch)."""
    from spec._loop._engine import Loop, Sequence
    from spec._loop._params import Drafting
    with Engine(str(bigram_model_path), drafter="ngram-simple", n_draft=7, n_ctx=N_CTX,
                n_batch=8, n_parallel=2, n_threads=THREADS) as engine:
        tokenize = engine.model.tokenize
        prompt = tokenize(PROMPTS[0])
        # a prompt that already holds the model's output cycle: every step drafts in full
        cycling = np.concatenate([prompt, engine.generate(prompt, max_tokens=MAX_TOKENS).tokens])
        short = tokenize(PROMPTS[1])[:6]
        running = Sequence(0, cycling, 40, 7)
        joining = Sequence(1, short, 40, 7)
        loop = Loop(engine.ctx, engine.drafter, Drafting(7))
        loop.start(running)
        loop.run([running], max_steps=2)
        assert running.stats()["n_drafted"] == 2 * 7, "the running sequence does not draft in full"
        loop.start(joining, interleave=True)
        loop.run([running, joining], max_steps=1)     # prefill, then both verify
        assert not joining.prefilling and joining.n_generated == 2
        assert running.stats()["n_drafted"] == 2 * 7 + 3     # 8 // 2 - 1 rows of draft
        loop.run([running, joining])
        assert running.tokens.tolist() == engine.generate(cycling, max_tokens=40).tokens.tolist()
        assert joining.tokens.tolist() == engine.generate(short, max_tokens=40).tokens.tolist()


def test_a_new_prompt_prefills_while_running_sequences_generate(bigram_model_path):
    from spec._loop._engine import Loop, Sequence
    with Engine(str(bigram_model_path), drafter=None, n_ctx=N_CTX, n_batch=16, n_parallel=2,
                n_threads=THREADS) as engine:
        tokenize = engine.model.tokenize
        running = Sequence(0, tokenize(PROMPTS[0]), 40, 0)
        long_prompt = PROMPTS[-1] + " " + PROMPTS[-2]
        joining = Sequence(1, tokenize(long_prompt), 40, 0)
        n_steps = -(-joining.n_prompt // 16)     # a prompt chunk of n_batch rows per step
        assert n_steps >= 2, "the prompt fits one step: chunking is not exercised"
        loop = Loop(engine.ctx)
        loop.start(running)
        loop.start(joining, interleave=True)
        assert joining.prefilling and joining.n_generated == 0
        loop.run([running, joining], max_steps=n_steps - 1)
        assert running.n_generated == n_steps and joining.prefilling
        loop.run([running, joining], max_steps=1)
        assert running.n_generated == n_steps + 1
        # its first token, sampled from the prompt's logits, is decoded in the same step's verify
        assert not joining.prefilling and joining.n_generated == 2
        assert joining.prefill_s > 0
        loop.run([running, joining])
        single = engine.generate(long_prompt, max_tokens=40)
        assert joining.tokens.tolist() == single.tokens.tolist()
