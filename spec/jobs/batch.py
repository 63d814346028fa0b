"""Resumable offline generation over a JSONL file of prompts (:func:`run_batch`; the command
line over it is ``python -m spec batch``, :mod:`spec.cli.batch`).

Input: one JSON object per line, ``{"id": ..., "prompt": ...}`` with optional per-request
``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``seed`` and ``stop`` (they
override the command-line values). Blank lines are ignored; ids are strings or integers.

Output: one JSON line per finished request (``id``, ``text``, ``n_prompt``, ``n_generated``,
``finish_reason`` and the speculation counters), in finishing order; requests start longest
first unless ``--order input``. Each line goes to the file in a single write and is fsync'd
before the next request is reported, so an interrupted job leaves only complete lines plus at
most one partial last line. Re-running the same command resumes: complete lines are kept, a
partial last line is cut off, and requests whose id is already in the output are skipped.

Bad input lines (malformed JSON, missing or non-string prompt, missing or duplicate id, bad
per-request values, a prompt that does not fit the context with its ``max_tokens``) are reported
with their line numbers and skipped; with ``--strict`` the job exits with code 2 before anything
is generated or written.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from spec._runtime._core import MAX_SEQ
from spec._loop._counters import StepCounters, totals_line
from spec.jobs._requests import PARAM_KEYS, check_params, fit, generate, is_int as _is_int

#: Keys an input line may hold.
REQUEST_KEYS = ("id", "prompt", *PARAM_KEYS)
#: Per-request speculation counters copied from :class:`spec.engine.Stats` into each output line.
STAT_KEYS = ("n_steps", "n_drafted", "n_accepted", "accept_rate", "mean_accept_len")

#: Most sequences one llama.cpp context decodes together (LLAMA_MAX_SEQ).
MAX_PARALLEL = MAX_SEQ
#: Orders requests may start in (see :meth:`spec.Engine.iter_batch`).
ORDERS = ("longest_first", "input")


# -- input ------------------------------------------------------------------------------------


@dataclass
class Request:
    """One valid input line."""
    line: int                     # 1-based line number in the input file
    id: str | int
    params: dict                  # prompt, max_tokens, temperature, top_k, top_p, min_p, seed, stop


@dataclass
class Invalid:
    """One input line that is not generated, and why."""
    line: int
    reason: str
    id: str | int | None = None

    def as_dict(self) -> dict:
        return {"line": self.line, "id": self.id, "reason": self.reason}


def _id_text(value) -> str:
    return json.dumps(value)


def parse_requests(data: bytes) -> tuple[list[Request], list[Invalid], int]:
    """Parse the input file's bytes into valid requests and invalid lines.

    Returns ``(requests, invalid, n_lines)``. The first line holding an id claims it: a later
    line with the same id is invalid (a duplicate), whatever the state of the first.
    """
    requests, invalid = [], []
    seen: dict = {}                               # id -> line that claimed it
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, raw in enumerate(lines, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]                         # UTF-8 byte order mark
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            invalid.append(Invalid(lineno, f"not UTF-8 ({e.reason} at byte {e.start})"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            invalid.append(Invalid(lineno, f"malformed JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            invalid.append(Invalid(lineno, "malformed JSON (nested too deeply)"))
            continue
        if not isinstance(obj, dict):
            invalid.append(Invalid(lineno, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        rid = obj.get("id")
        if "id" not in obj:
            invalid.append(Invalid(lineno, "missing 'id'"))
            rid = None
        elif not (_is_int(rid) or isinstance(rid, str)) or rid == "":
            invalid.append(Invalid(lineno, f"'id' must be a non-empty string or an integer, "
                                           f"got {rid!r}"))
            continue
        else:
            if rid in seen:
                invalid.append(Invalid(lineno, f"duplicate id {_id_text(rid)} "
                                               f"(first on line {seen[rid]})", rid))
                continue
            seen[rid] = lineno
        if rid is None:
            continue
        unknown = sorted(k for k in obj if k not in REQUEST_KEYS)
        if unknown:
            invalid.append(Invalid(lineno, f"unknown key(s) {unknown}; known: "
                                           f"{', '.join(REQUEST_KEYS)}", rid))
            continue
        if "prompt" not in obj:
            invalid.append(Invalid(lineno, "missing 'prompt'", rid))
            continue
        if not isinstance(obj["prompt"], str):
            invalid.append(Invalid(lineno, f"'prompt' must be a string, got "
                                           f"{type(obj['prompt']).__name__}", rid))
            continue
        params = {k: v for k, v in obj.items() if k != "id"}
        try:
            params = check_params(params)
        except ValueError as e:
            invalid.append(Invalid(lineno, str(e), rid))
            continue
        requests.append(Request(lineno, rid, params))
    return requests, invalid, len(lines)


# -- output -----------------------------------------------------------------------------------


@dataclass
class OutputScan:
    """What an existing output file holds."""
    done: set = field(default_factory=set)       # ids with a complete valid line
    n_valid: int = 0
    keep: list = field(default_factory=list)     # the complete valid lines (bytes, with "\n")
    dropped: list = field(default_factory=list)  # Invalid: complete lines that are not results
    partial: bool = False                        # a last line without its newline
    complete_len: int = 0                        # bytes up to the end of the last complete line


def scan_output(data: bytes) -> OutputScan:
    """Classify an output file's lines: complete valid result lines, other complete lines, and a
    trailing partial line (no newline: the job was killed while writing it)."""
    scan = OutputScan()
    cut = data.rfind(b"\n") + 1
    scan.complete_len = cut
    scan.partial = cut < len(data)
    for lineno, raw in enumerate(data[:cut].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            scan.dropped.append(Invalid(lineno, "not a JSON line"))
            continue
        rid = obj.get("id") if isinstance(obj, dict) else None
        if not (_is_int(rid) or isinstance(rid, str)) or not isinstance(obj.get("text"), str):
            scan.dropped.append(Invalid(lineno, "not a result (needs 'id' and 'text')"))
            continue
        if rid in scan.done:
            scan.dropped.append(Invalid(lineno, f"duplicate id {_id_text(rid)}", rid))
            continue
        scan.done.add(rid)
        scan.keep.append(raw + b"\n")
    scan.n_valid = len(scan.keep)
    return scan


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    """One write(2) of the whole line; a short write (full disk, signal) is continued so the
    line is never left half written while the process lives."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


class Output:
    """The output file, opened for appending under an exclusive lock (one job per file)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        self.scan = OutputScan()

    def _open_locked(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = -1
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OSError(e.errno, f"{self.path} is being written by another batch job") from None
            raise

    def open(self) -> OutputScan:
        """Open and lock the file, keep its complete valid lines, cut off a partial last line
        (and rewrite the file without lines that are not results). Returns the scan."""
        self._open_locked()
        scan = scan_output(_read_all(self.fd))
        if scan.dropped:
            # Rare (the file was edited or corrupted): replace it atomically by its valid lines.
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(b"".join(scan.keep))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path)
            os.close(self.fd)
            self._open_locked()
        elif scan.partial:
            os.ftruncate(self.fd, scan.complete_len)
            os.fsync(self.fd)
        self.scan = scan
        return scan

    def write(self, record: dict) -> None:
        _write_all(self.fd, (json.dumps(record) + "\n").encode("ascii"))
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)            # releases the lock
            self.fd = -1


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """tqdm's bar over the requests, with the tokens, tokens/s and acceptance so far."""

    def __init__(self, total: int, stream, enabled: bool):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, file=stream, disable=not enabled, unit="req", desc="batch",
                        leave=False, dynamic_ncols=True, mininterval=0.1)
        self.t0 = time.perf_counter()

    def update(self, done: int, tokens: int, drafted: int, accepted: int) -> None:
        if self.bar.disable:
            return
        elapsed = time.perf_counter() - self.t0
        rate = tokens / elapsed if elapsed > 0 else 0.0
        acc = f"{100 * accepted / drafted:.0f} %" if drafted else "-"
        self.bar.set_postfix_str(f"{tokens} tok, {rate:.1f} tok/s, accepted {acc}", refresh=False)
        self.bar.update(done - self.bar.n)
        if done == self.bar.total:
            self.bar.refresh()        # the last state is drawn even within mininterval

    def set_total(self, total: int) -> None:
        self.bar.total = total
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# -- the job ----------------------------------------------------------------------------------


@dataclass
class Totals(StepCounters):
    done: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def add(self, stats) -> None:
        self.done += 1
        self.prompt_tokens += stats.n_prompt
        self.generated_tokens += stats.n_generated
        self.n_steps += stats.n_steps
        self.n_drafted += stats.n_drafted
        self.n_accepted += stats.n_accepted


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt as usual, except inside :meth:`critical`, where it waits
    for the block to end: a finished request's line and its count in the summary go together.
    (Only when SIGINT has Python's default handler and this is the main thread.)"""

    def __init__(self):
        self.depth, self.pending, self.old = 0, False, None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            self.old = None

    def _handler(self, signum, frame):
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.pending and not self.depth:
                self.pending = False
                raise KeyboardInterrupt


def run_batch(input_path, output_path, *, model="default", drafter="none", n_parallel=8,
              n_draft="auto", max_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
              seed=0, stop=(), n_ctx=None, threads=None, strict=False, progress=None,
              log=None, order="longest_first", n_gpu_layers=0) -> tuple[int, dict]:
    """Run (or resume) a batch job; returns ``(exit_code, summary)``.

    ``progress`` None shows the bar when ``log`` is a terminal. ``log`` (default stderr) gets
    the progress bar and warnings, not the summary (see :func:`format_summary`).
    Exit codes: 0 done (invalid lines skipped), 1 generation failed, 2 ``strict`` and invalid
    input, 130 interrupted. Bad arguments raise ValueError; unusable files raise OSError.
    ``order``: which requests start first (see :meth:`spec.Engine.iter_batch`).
    """
    log = sys.stderr if log is None else log
    input_path, output_path = Path(input_path), Path(output_path)
    if (isinstance(n_parallel, bool) or not isinstance(n_parallel, int)
            or not 0 < n_parallel <= MAX_PARALLEL):
        raise ValueError(f"--n-parallel must be an integer in [1, {MAX_PARALLEL}], "
                         f"got {n_parallel!r}")
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    defaults = check_params(dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, min_p=min_p, seed=seed, stop=list(stop or ())),
                            prefix="--")
    if output_path.exists() and input_path.exists() and output_path.samefile(input_path):
        raise ValueError(f"--output {output_path} is the input file")
    data = input_path.read_bytes()
    t_start = time.perf_counter()

    requests, invalid, _ = parse_requests(data)
    summary = {
        "input": str(input_path), "output": str(output_path), "drafter": drafter,
        "n_parallel": n_parallel, "requests": 0, "done": 0, "skipped": 0, "remaining": 0,
        "invalid": [], "n_invalid": 0, "output_dropped": [], "partial_line_dropped": False,
        "prompt_tokens": 0, "generated_tokens": 0, "load_s": 0.0, "wall_s": 0.0, "tok_s": 0.0,
        "n_steps": 0, "n_drafted": 0, "n_accepted": 0, "accept_rate": 0.0,
        "mean_accept_len": 0.0, "strict": strict, "error": None, "exit_code": 0,
    }

    def finish(code, totals=None, t_gen=None, pending_left=0, error=None):
        invalid.sort(key=lambda x: x.line)
        bad = {x.line for x in invalid}
        summary["invalid"] = [x.as_dict() for x in invalid]
        summary["n_invalid"] = len(invalid)
        summary["requests"] = sum(r.line not in bad for r in requests)
        summary["remaining"] = pending_left
        summary["error"] = error
        if totals is not None:
            wall = time.perf_counter() - t_gen
            summary.update(done=totals.done, prompt_tokens=totals.prompt_tokens,
                           generated_tokens=totals.generated_tokens, wall_s=wall,
                           tok_s=totals.generated_tokens / wall if wall > 0 else 0.0,
                           n_steps=totals.n_steps, n_drafted=totals.n_drafted,
                           n_accepted=totals.n_accepted,
                           accept_rate=totals.accept_rate,
                           mean_accept_len=totals.mean_accept_len)
        summary["exit_code"] = code
        return code, summary

    # Ids already in the output (read-only look: with --strict a failing job writes nothing).
    preview = OutputScan()
    if output_path.exists():
        preview = scan_output(output_path.read_bytes())
    pending = [r for r in requests if r.id not in preview.done]

    engine = None
    try:
        if pending:
            from spec.engine import Engine
            t0 = time.perf_counter()
            engine = Engine(model, drafter=drafter, n_draft=n_draft, n_ctx=n_ctx,
                            n_threads=threads, n_parallel=min(n_parallel, len(pending)),
                            n_gpu_layers=n_gpu_layers)
            summary["load_s"] = time.perf_counter() - t0
            by_line = {r.line: r for r in pending}
            ready, rejected = fit(engine, [(r.line, r.params) for r in pending], defaults)
            for line, reason in rejected:
                invalid.append(Invalid(line, reason, by_line[line].id))
            for line, params in ready:
                by_line[line].params = params
            pending = [by_line[line] for line, _ in ready]
        if strict and invalid:
            return finish(2, pending_left=len(pending))

        out = Output(output_path)
        scan = out.open()
        try:
            summary["output_dropped"] = [x.as_dict() for x in scan.dropped]
            summary["partial_line_dropped"] = scan.partial
            for x in scan.dropped:
                print(f"warning: {output_path}:{x.line}: {x.reason}; line removed", file=log)
            pending = [r for r in pending if r.id not in scan.done]
            bad = {x.line for x in invalid}
            summary["skipped"] = sum(r.id in scan.done for r in requests if r.line not in bad)
            return _generate(engine, out, pending, invalid, n_parallel, order, progress, log,
                             finish)
        finally:
            out.close()
    finally:
        if engine is not None:
            engine.close()
        summary["total_s"] = time.perf_counter() - t_start


def _generate(engine, out, pending, invalid, n_parallel, order, progress, log, finish):
    """Generate ``pending`` into ``out``; returns ``finish(...)``'s ``(code, summary)``."""
    totals = Totals()
    t_gen = time.perf_counter()
    if progress is None:
        progress = bool(getattr(log, "isatty", lambda: False)())
    bar = Progress(len(pending), log, progress)
    batch = list(pending)
    interrupts = _Interrupts()
    try:
        with interrupts:
            _generate_loop(engine, out, batch, invalid, n_parallel, order, totals, bar,
                           interrupts)
    except KeyboardInterrupt:
        bar.close()
        return finish(130, totals, t_gen, len(batch) - totals.done, "interrupted")
    except Exception as e:            # a failed decode etc.: what was written stays; report
        bar.close()
        return finish(1, totals, t_gen, len(batch) - totals.done, f"{type(e).__name__}: {e}")
    bar.close()
    return finish(0, totals, t_gen, 0)


def _generate_loop(engine, out, batch, invalid, n_parallel, order, totals, bar, interrupts):
    """The generation proper; ``batch`` loses requests that iter_batch rejects."""
    by_line = {r.line: r for r in batch}
    ready = [(r.line, r.params) for r in batch]
    for line, result, reason in generate(engine, ready, n_parallel=n_parallel, order=order,
                                         on_start=lambda: bar.update(totals.done, 0, 0, 0)):
        r = by_line[line]
        if reason is not None:
            invalid.append(Invalid(r.line, reason, r.id))
            batch.remove(r)
            bar.set_total(len(batch))
            continue
        st = result.stats
        record = {"id": r.id, "text": result.text, "n_prompt": st.n_prompt,
                  "n_generated": st.n_generated, "finish_reason": result.finish_reason}
        record.update((k, getattr(st, k)) for k in STAT_KEYS)
        with interrupts.critical():
            out.write(record)
            totals.add(st)
        bar.update(totals.done, totals.generated_tokens, totals.n_drafted, totals.n_accepted)


def format_summary(s: dict) -> str:
    """The human-readable summary printed on stderr."""
    lines = [f"batch: {s['requests']} request{'s' if s['requests'] != 1 else ''} in "
             f"{s['input']}: {s['done']} generated, "
             f"{s['skipped']} skipped (already in {s['output']}), {s['remaining']} remaining; "
             f"{s['n_invalid']} invalid line{'s' if s['n_invalid'] != 1 else ''}"]
    for x in s["invalid"]:
        lines.append(f"  line {x['line']}: {x['reason']}")
    if s["partial_line_dropped"]:
        lines.append(f"  a partial last line of {s['output']} was removed (regenerated)")
    if s["output_dropped"]:
        lines.append(f"  {len(s['output_dropped'])} line(s) of {s['output']} that were not "
                     f"results were removed")
    if s["exit_code"] == 2 and s["strict"]:
        lines.append("--strict: invalid input, nothing generated")
    else:
        lines.append(totals_line(s))
    if s["error"]:
        lines.append(f"stopped: {s['error']} (finished requests are saved; re-run to resume)")
    return "\n".join(lines)
