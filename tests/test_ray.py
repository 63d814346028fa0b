"""spec.ray and ``python -m spec batch --ray`` on a real local Ray cluster (2 CPUs, no mocks):
outputs equal Engine.generate_batch, a killed actor loses and duplicates nothing, bad rows get an
error column, a missing model names the node, the CLI round trips and resumes."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='Ray Data is not installed: pip install "spec[ray]"')
pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install "spec[ray]"')
import pyarrow as pa                                    # noqa: E402  (after the skip)
import pyarrow.parquet as pq                            # noqa: E402

import spec                                             # noqa: E402
import spec.cli                                         # noqa: E402
import spec.ray                                         # noqa: E402
from spec.engine import Engine                          # noqa: E402

pytestmark = pytest.mark.ray

N_CTX = 512
MAX_TOKENS = 48
N_DRAFT = 8                 # fixed: "auto" follows timings
OPTIONS = dict(drafter="suffix", n_draft=N_DRAFT, n_parallel=3, n_ctx=N_CTX,
               max_tokens=MAX_TOKENS)
WORDS = "alpha beta gamma delta river stone cloud market engine paper window silver".split()


def prompts(n: int) -> list[str]:
    return [" ".join(WORDS[i % len(WORDS):] + WORDS[:i % len(WORDS)])[: 5 + 7 * i]
            for i in range(n)]


ROWS = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts(10))]


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(bigram_model_path):
    """Engine.generate_batch on ROWS in one process: id -> (text, tokens)."""
    with Engine(str(bigram_model_path), n_threads=1, **{k: v for k, v in OPTIONS.items()
                                                       if k in ("drafter", "n_draft", "n_ctx")}
                ) as engine:
        results = engine.generate_batch([r["prompt"] for r in ROWS], n_parallel=3,
                                        max_tokens=MAX_TOKENS)
    ref = {row["id"]: (r.text, r.tokens.tolist()) for row, r in zip(ROWS, results)}
    assert len({text for text, _ in ref.values()}) > 3, "prompts should not all agree"
    return ref


def outputs_by_id(rows) -> dict:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"an id appears twice: {sorted(ids)}"
    return {r["id"]: r for r in rows}


def run_ray(rows, model, **kw):
    ds = ray.data.from_items(rows)
    return spec.ray.generate(ds, model=str(model), **{**OPTIONS, "concurrency": 2,
                                                      "threads_per_actor": 1, "batch_size": 4,
                                                      **kw}).take_all()


def test_outputs_through_two_actors_equal_generate_batch(cluster, bigram_model_path, reference):
    out = outputs_by_id(run_ray(ROWS, bigram_model_path))
    assert set(out) == set(reference)
    for rid, (text, tokens) in reference.items():
        row = out[rid]
        assert row["error"] is None
        assert list(row["tokens"]) == tokens, rid
        assert row["text"] == text
        assert row["n_generated"] == len(tokens)
        assert row["finish_reason"] == ("length" if len(tokens) == MAX_TOKENS else "stop")
        assert row["prompt"] == next(r["prompt"] for r in ROWS if r["id"] == rid)  # passed on
    assert sum(r["n_drafted"] for r in out.values()) > 0, "the suffix drafter never drafted"


class _DiesOnFirstBatch(spec.ray.BatchGenerator):
    """Generates its first batch, then exits hard before returning it (once per job: the first
    actor to create the marker file dies; Ray restarts it and retries the batch)."""

    marker = None           # set by the test

    def __call__(self, batch):
        out = super().__call__(batch)
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return out
        os._exit(1)


def test_an_actor_killed_mid_job_loses_and_duplicates_no_row(cluster, bigram_model_path,
                                                              reference, tmp_path, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "died"
    monkeypatch.setattr(_DiesOnFirstBatch, "marker", str(marker))
    monkeypatch.setattr(spec.ray, "BatchGenerator", _DiesOnFirstBatch)
    out = outputs_by_id(run_ray(ROWS, bigram_model_path))
    assert marker.exists(), "no actor died: the test did not test anything"
    assert set(out) == set(reference)                   # every id exactly once
    for rid, (text, tokens) in reference.items():
        assert list(out[rid]["tokens"]) == tokens and out[rid]["text"] == text, rid


def test_bad_rows_get_an_error_and_the_job_goes_on(cluster, bigram_model_path, reference):
    bad = [
        {"id": "no-prompt", "prompt": None},
        {"id": "neg-max", "prompt": "alpha", "max_tokens": -1},
        {"id": "hot", "prompt": "alpha", "temperature": -0.5},
        {"id": "seed", "prompt": "alpha", "seed": 2.5},
        {"id": "long", "prompt": " ".join(WORDS * 80)},
    ]
    rows = [{**r, "max_tokens": None, "temperature": None, "seed": None} for r in ROWS[:4]]
    rows += [{"max_tokens": None, "temperature": None, "seed": None, **r} for r in bad]
    out = outputs_by_id(run_ray(rows, bigram_model_path))
    errors = {rid: row["error"] for rid, row in out.items() if row["error"] is not None}
    assert set(errors) == {r["id"] for r in bad}
    assert "missing 'prompt'" in errors["no-prompt"]
    assert "max_tokens must be an integer >= 0" in errors["neg-max"]
    assert "temperature must be a number >= 0" in errors["hot"]
    assert "seed must be a 64-bit integer" in errors["seed"]
    assert "exceed the context window" in errors["long"]
    for rid in errors:
        assert out[rid]["text"] is None and out[rid]["tokens"] is None
    for r in ROWS[:4]:                                  # the good rows are untouched
        assert list(out[r["id"]]["tokens"]) == reference[r["id"]][1]
    s = spec.ray.summarize(pa.Table.from_pylist(list(out.values())))
    assert (s.rows, s.generated, s.errors) == (9, 4, 5)


def test_a_missing_model_path_fails_at_actor_start_naming_node_and_path(cluster, tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(Exception) as info:
        run_ray(ROWS[:2], missing, concurrency=1)
    message = str(info.value)
    assert str(missing) in message
    assert "not available on node" in message and ray.util.get_node_ip_address() in message


def test_a_model_name_resolves_on_the_actor(cluster, default_model_path):
    out = run_ray(ROWS[:1], "default", concurrency=1, max_tokens=4, n_ctx=None)
    assert out[0]["error"] is None and out[0]["n_generated"] == 4


class _RepeatLast(spec.PythonDrafter):
    def draft(self, history, id_last, n_max, seq_id=0):
        hits = np.flatnonzero(history == id_last)
        return history[hits[-1] + 1:][:n_max] if hits.size else ()


def test_a_python_drafter_class_is_built_on_each_actor(cluster, bigram_model_path, reference):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = outputs_by_id(run_ray(ROWS, bigram_model_path, drafter=_RepeatLast))
    for rid, (text, tokens) in reference.items():
        assert list(out[rid]["tokens"]) == tokens, rid
    assert sum(r["n_accepted"] for r in out.values()) > 0


@pytest.mark.parametrize("bad, message", [
    (dict(n_parallel=0), "n_parallel must be"), (dict(concurrency=0), "concurrency must be"),
    (dict(threads_per_actor=1.5), "threads_per_actor must be"),
    (dict(temperature=-1), "temperature must be"), (dict(order="random"), "order must be"),
    (dict(n_draft="long"), "n_draft must be"),
])
def test_bad_arguments_are_refused_before_anything_runs(bad, message):
    # no cluster needed: the arguments are checked before the pipeline is built
    with pytest.raises(ValueError, match=message):
        spec.ray.generate(object(), **bad)


def test_row_parameters_from_arrow_columns():
    # an integer column with nulls comes back as floats; a null takes the default
    assert spec.ray._row_params({"prompt": "a", "max_tokens": 8.0, "seed": None,
                                 "temperature": float("nan")}) == {"prompt": "a",
                                                                   "max_tokens": 8}
    with pytest.raises(ValueError, match="max_tokens must be an integer"):
        spec.ray._row_params({"prompt": "a", "max_tokens": 8.5})
    with pytest.raises(ValueError, match="'prompt' must be a string"):
        spec.ray._row_params({"prompt": 3})


# -- the command line --------------------------------------------------------------------------


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(args, capsys) -> tuple[int, dict]:
    code = spec.cli.main(["batch", "--ray", "--no-progress", "--json", "--n-parallel", "3",
                          "--n-ctx", str(N_CTX), "--max-tokens", str(MAX_TOKENS), "--drafter",
                          "suffix", "--n-draft", str(N_DRAFT), "--concurrency", "2",
                          "--batch-size", "4", *map(str, args)])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def read_dir(path: Path) -> list[dict]:
    rows = []
    for f in sorted(path.iterdir()):
        if f.suffix == ".parquet":
            rows += pq.read_table(f).to_pylist()
        elif f.suffix == ".json":
            rows += [json.loads(line) for line in f.read_text().splitlines()]
    return rows


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_cli_round_trip_and_resume(cluster, bigram_model_path, reference, tmp_path, capsys, fmt):
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS[:6])
    out_dir = tmp_path / "out"
    code, s = cli(["--model", bigram_model_path, "--input", inp, "--output", out_dir,
                   "--output-format", fmt], capsys)
    assert code == 0 and (s["requests"], s["done"], s["skipped"], s["errors"]) == (6, 6, 0, 0)
    first = outputs_by_id(read_dir(out_dir))
    assert set(first) == {r["id"] for r in ROWS[:6]}
    for rid, row in first.items():
        assert list(row["tokens"]) == reference[rid][1] and row["text"] == reference[rid][0]
    assert s["generated_tokens"] == sum(len(reference[rid][1]) for rid in first)

    # more rows, then a re-run: only the new ones are generated
    write_jsonl(inp, ROWS)
    code, s = cli(["--model", bigram_model_path, "--input", inp, "--output", out_dir,
                   "--output-format", fmt], capsys)
    assert code == 0 and (s["requests"], s["done"], s["skipped"]) == (10, 4, 6)
    everything = outputs_by_id(read_dir(out_dir))        # each id exactly once
    assert set(everything) == set(reference)
    for rid, row in everything.items():
        assert list(row["tokens"]) == reference[rid][1]

    # nothing left: the job generates nothing
    code, s = cli(["--model", bigram_model_path, "--input", inp, "--output", out_dir,
                   "--output-format", fmt], capsys)
    assert code == 0 and (s["done"], s["skipped"]) == (0, 10)


def test_cli_parquet_input_and_an_unreadable_output_file(cluster, bigram_model_path, reference,
                                                         tmp_path, capsys, caplog):
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS[:4]), inp)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "killed-run.parquet").write_bytes(b"PAR1 truncated")   # a run killed mid-write
    code, s = cli(["--model", bigram_model_path, "--input", inp, "--output", out_dir], capsys)
    assert code == 0 and (s["done"], s["skipped"]) == (4, 0)
    assert (out_dir / "killed-run.parquet.unreadable").exists()
    assert "unreadable" in caplog.text
    rows = outputs_by_id(read_dir(out_dir))
    assert {rid: list(r["tokens"]) for rid, r in rows.items()} == {
        r["id"]: reference[r["id"]][1] for r in ROWS[:4]}


def test_cli_refuses_what_it_cannot_do(cluster, bigram_model_path, tmp_path, capsys):
    no_ids = write_jsonl(tmp_path / "no-ids.jsonl", [{"prompt": "alpha beta"}])
    out_dir = tmp_path / "out"
    assert cli(["--model", bigram_model_path, "--input", no_ids, "--output", out_dir],
               capsys)[0] == 0                          # without ids: runs, cannot resume
    assert spec.cli.main(["batch", "--ray", "--model", str(bigram_model_path), "--input",
                          str(no_ids), "--output", str(out_dir)]) == 2
    assert "no 'id' column" in capsys.readouterr().err
    text = tmp_path / "prompts.txt"
    text.write_text("alpha\n")
    assert spec.cli.main(["batch", "--ray", "--input", str(text), "--output",
                          str(tmp_path / "o")]) == 2
    assert "expected .jsonl or .parquet" in capsys.readouterr().err
    assert spec.cli.main(["batch", "--input", str(no_ids), "--output", str(tmp_path / "o.jsonl"),
                          "--concurrency", "2"]) == 2
    assert "--concurrency need(s) --ray" in capsys.readouterr().err
