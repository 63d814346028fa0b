"""The batch job on Ray Data, reading and writing JSONL or Parquet (:func:`run_ray_batch`; the
command line over it is ``python -m spec batch --ray``, :mod:`spec.cli.batch`).

The input is a JSONL (``.jsonl``, ``.json``) or Parquet (``.parquet``) file or directory of
rows (see :mod:`spec.jobs.ray`); the output is a directory of Parquet or JSONL files written by Ray
Data, one set of files per run. Re-running the same command resumes: rows whose ``id`` appears
in the output directory's files are skipped (an input with results in the directory therefore
needs an ``id`` column). A file a killed run left unreadable is renamed ``*.unreadable`` and its
rows are generated again.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from spec._loop._counters import totals_line

logger = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def input_format(path: Path) -> str:
    """The format of an input file, or of the files in an input directory."""
    suffixes = [path.suffix] if path.is_file() else sorted({p.suffix for p in path.iterdir()
                                                           if p.is_file()})
    formats = {FORMATS.get(s.lower()) for s in suffixes}
    if len(formats) != 1 or None in formats:
        raise ValueError(f"--input {path}: expected .jsonl or .parquet file(s), found "
                         f"{', '.join(suffixes) or 'nothing'}")
    return formats.pop()


def _output_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir()
                  if p.is_file() and p.suffix.lower() in FORMATS) if out_dir.is_dir() else []


def _read_table(path: Path, columns=None):
    import pyarrow.json as pj
    import pyarrow.parquet as pq
    if FORMATS[path.suffix.lower()] == "parquet":
        return pq.read_table(path, columns=columns)
    table = pj.read_json(path)
    return table.select(columns) if columns is not None else table


def read_outputs(files: list[Path], columns: list[str], optional=("id",)):
    """The given columns (and the ``optional`` ones a file has) of the output files, as one
    table; unreadable files (a run killed while writing them) are renamed ``*.unreadable`` with
    a warning and left out."""
    import pyarrow as pa
    tables = []
    for f in files:
        try:
            table = _read_table(f)
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise ValueError(f"no column(s) {missing}")
            tables.append(table.select([c for c in optional if c in table.column_names
                                        and c not in columns] + list(columns)))
        except (pa.ArrowException, OSError, ValueError) as e:
            aside = f.with_name(f.name + ".unreadable")
            f.rename(aside)
            logger.warning("%s: unreadable (%s); renamed to %s, its rows are generated again",
                           f, e, aside.name)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def run_ray_batch(input_path, output_dir, *, ray_address=None, concurrency=1, threads=None,
                  output_format=None, progress=True, batch_size=None, **options) -> dict:
    """Run (or resume) the job; returns the summary dict. ``options`` go to
    :func:`spec.ray.generate` (model, drafter, n_draft, n_parallel, n_ctx, max_tokens, ...).
    Bad arguments raise ValueError; unusable paths OSError."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data

    from spec.jobs import ray as jobs_ray

    input_path, output_dir = Path(input_path), Path(output_dir)
    if not input_path.exists():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    fmt_in = input_format(input_path)
    fmt_out = output_format or fmt_in
    if fmt_out not in ("jsonl", "parquet"):
        raise ValueError(f"--output-format must be jsonl or parquet, got {fmt_out!r}")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} is not a directory (with --ray the "
                                 f"output is a directory of {fmt_out} files)")
    threads = 1 if threads is None else threads
    t_start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = bool(progress)

    # The input (prompts) is read before the actors start: the actors may reserve every CPU of
    # the cluster, and a read task would then wait for one forever.
    read = ray.data.read_parquet if fmt_in == "parquet" else ray.data.read_json
    ds = read(str(input_path)).materialize()
    columns = ds.columns()
    if "prompt" not in columns:
        raise ValueError(f"--input {input_path} has no 'prompt' column (columns: {columns})")
    n_rows = ds.count()

    before = _output_files(output_dir)
    n_skipped = 0
    if before:
        if "id" not in columns:
            raise ValueError(f"--output {output_dir} already holds results and the input has no "
                             f"'id' column: the rows already done cannot be told apart (give "
                             f"rows an id, or write to a new directory)")
        done = read_outputs(before, ["id"])
        before = _output_files(output_dir)            # without the files renamed aside
        if done is not None and done.num_rows:
            done_ids = pc.unique(done["id"])
            ds = ds.map_batches(_drop_done, fn_args=(done_ids,),
                                batch_format="pyarrow").materialize()
            n_skipped = n_rows - ds.count()

    # One block per batch, so that every actor gets work (a small file is read as one block).
    # Each batch ends with a tail where fewer than n_parallel sequences run: batches as large
    # as the rows allow (up to 32 x n_parallel), but at least one per actor.
    n_parallel = options.get("n_parallel", 8)
    if batch_size is None:
        per_actor = -(-(n_rows - n_skipped) // concurrency)
        batch_size = max(4 * n_parallel, min(32 * n_parallel, per_actor))
    ds = ds.repartition(max(1, -(-(n_rows - n_skipped) // batch_size))).materialize()
    out = jobs_ray.generate(ds, concurrency=concurrency, threads_per_actor=threads,
                            batch_size=batch_size, **options)
    output_dir.mkdir(parents=True, exist_ok=True)
    t_gen = time.perf_counter()
    if n_skipped < n_rows:
        (out.write_parquet if fmt_out == "parquet" else out.write_json)(str(output_dir))
    wall = time.perf_counter() - t_gen
    new = [f for f in _output_files(output_dir) if f not in set(before)]
    table = read_outputs(new, list(jobs_ray.OUTPUT_COLUMNS)) if new else None
    s = jobs_ray.summarize(table if table is not None
                           else pa.table({c: pa.array([], type=f.type) for c, f in
                                          zip(jobs_ray.OUTPUT_COLUMNS, jobs_ray.OUTPUT_SCHEMA)}))
    return {
        "input": str(input_path), "output": str(output_dir), "format": fmt_out,
        "requests": n_rows, "skipped": n_skipped, "done": s.generated, "errors": s.errors,
        "error_rows": _error_rows(table), "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens, "wall_s": wall,
        "tok_s": s.generated_tokens / wall if wall > 0 else 0.0, "n_steps": s.n_steps,
        "n_drafted": s.n_drafted, "n_accepted": s.n_accepted, "accept_rate": s.accept_rate,
        "mean_accept_len": s.mean_accept_len, "concurrency": concurrency,
        "threads_per_actor": threads, "total_s": time.perf_counter() - t_start,
    }


def _drop_done(batch, done_ids):
    import pyarrow.compute as pc
    ids = batch["id"]
    return batch.filter(pc.invert(pc.is_in(ids, value_set=done_ids.cast(ids.type))))


def _error_rows(table, limit: int = 20) -> list:
    if table is None or table.num_rows == 0:
        return []
    import pyarrow.compute as pc
    bad = table.filter(pc.invert(pc.is_null(table["error"])))
    ids = bad["id"].to_pylist() if "id" in bad.column_names else [None] * bad.num_rows
    return [{"id": i, "error": e} for i, e in zip(ids, bad["error"].to_pylist())][:limit]


def format_summary(s: dict) -> str:
    lines = [f"batch (ray, {s['concurrency']} actor(s) x {s['threads_per_actor']} thread(s)): "
             f"{s['requests']} rows in {s['input']}: {s['done']} generated, {s['errors']} with "
             f"an error, {s['skipped']} skipped (already in {s['output']})"]
    for row in s["error_rows"]:
        lines.append(f"  id {row['id']!r}: {row['error']}")
    if s["errors"] > len(s["error_rows"]):
        lines.append(f"  ... ({s['errors'] - len(s['error_rows'])} more in the 'error' column)")
    lines.append(totals_line(s))
    return "\n".join(lines)
