"""Run calls that might take the interpreter down in a long-lived worker subprocess.

A :class:`Worker` is a child interpreter that executes a *setup* script once, then *programs*
sent to it over a pipe: a program is a list of Python statements, each run in its own
``try`` in a fresh copy of the setup namespace, after which the namespace is dropped and
garbage-collected (so a crash in a destructor belongs to the program that made the object).
Each statement's outcome comes back as ``ok`` or the exception's class hierarchy and message.

If the worker dies (a signal, a non-zero exit) or does not answer within ``timeout`` seconds,
:meth:`Worker.run` returns a ``crash`` or ``hang`` outcome with the tail of the worker's stderr
(faulthandler's traceback, llama.cpp's GGML_ASSERT line) and starts a new worker for the next
program. :func:`render` turns setup + program into a stand-alone reproducer script.

The worker reads requests on one pipe and answers on another, so whatever C code prints to
file descriptors 1 and 2 cannot corrupt the protocol; both go to a log file.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Address-space cap of a worker: a request for a huge context or buffer fails with an error
# instead of exhausting the machine (the tiny models need well under 1 GB). Under the sanitizer
# build there is none: AddressSanitizer reserves terabytes of shadow address space at start, and
# .ci/sanitize caps allocations through ASAN_OPTIONS (max_allocation_size_mb) instead.
DEFAULT_RLIMIT_AS = 0 if os.environ.get("SPEC_SANITIZE") else 3 << 30


@dataclass
class Step:
    """The outcome of one statement: ``exc`` is None when it ran to the end."""
    exc: str | None = None           # qualified class name
    mro: tuple = ()                  # class names of the exception's MRO
    message: str = ""


@dataclass
class Outcome:
    kind: str                        # "ok" (the program ran; see steps), "crash" or "hang"
    steps: list = field(default_factory=list)
    unraisable: list = field(default_factory=list)   # "Exception ignored in ..." reports
    returncode: int | None = None
    log: str = ""                    # tail of the worker's stderr (crash, hang)
    seconds: float = 0.0


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("!Q", len(data)) + data)
    f.flush()


def _read_exact(f, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(f):
    head = _read_exact(f, 8)
    if head is None:
        return None
    data = _read_exact(f, struct.unpack("!Q", head)[0])
    return None if data is None else pickle.loads(data)


# -- the worker side ----------------------------------------------------------------------------

def _serve(rfd: int, wfd: int, rlimit_as: int) -> None:
    import faulthandler
    import gc

    if rlimit_as:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    unraisable = []

    def hook(u):
        unraisable.append(f"{type(u.exc_value).__name__}: {u.exc_value} "
                          f"(in {u.err_msg or 'Exception ignored'} {u.object!r:.200})")
    sys.unraisablehook = hook
    rf, wf = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    g: dict = {"__name__": "__fuzz__"}
    while True:
        msg = _recv(rf)
        if msg is None:
            return
        kind, payload = msg
        if kind == "setup":
            exec(compile(payload, "<setup>", "exec"), g)
            _send(wf, ("ready", None))
            continue
        ns = dict(g)
        steps = []
        unraisable.clear()
        for i, code in enumerate(payload):
            sys.stderr.write(f"--- step {i}: {code[:2000]}\n")
            sys.stderr.flush()
            try:
                exec(compile(code, f"<step {i}>", "exec"), ns)
                steps.append(Step())
            except BaseException as e:    # noqa: B902 -- every outcome is reported, not raised
                t = type(e)
                steps.append(Step(f"{t.__module__}.{t.__qualname__}",
                                  tuple(c.__name__ for c in t.__mro__), str(e)[:400]))
        sys.stderr.write("--- end of program\n")
        sys.stderr.flush()
        ns.clear()
        del ns
        gc.collect()
        _send(wf, ("done", (steps, list(unraisable))))


# -- the parent side ----------------------------------------------------------------------------

class Worker:
    """A child interpreter running programs (see the module docstring)."""

    def __init__(self, setup: str, *, timeout: float = 60.0, rlimit_as: int = DEFAULT_RLIMIT_AS):
        self.setup = setup
        self.timeout = timeout
        self.rlimit_as = rlimit_as
        self.proc = None
        self.n_started = 0

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rsp_r, rsp_w = os.pipe()
        self.log = tempfile.TemporaryFile(mode="w+b")
        env = {**os.environ, "GGML_NO_BACKTRACE": "1",
               "PYTHONPATH": os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")])}
        code = (f"import _isolated; _isolated._serve({req_r}, {rsp_w}, {self.rlimit_as})")
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", code], pass_fds=(req_r, rsp_w),
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     env=env, cwd=ROOT)
        os.close(req_r)
        os.close(rsp_w)
        self.req = os.fdopen(req_w, "wb")
        self.rsp_fd = rsp_r
        self.rsp = os.fdopen(rsp_r, "rb")
        self.n_started += 1
        out = self._call(("setup", self.setup), self.timeout * 4)
        if out.kind != "ok":
            raise RuntimeError(f"the fuzz worker failed its setup ({out.kind}, rc "
                               f"{out.returncode}):\n{out.log}")

    def _log_tail(self, n: int = 6000) -> str:
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - n))
        return self.log.read().decode("utf-8", "replace")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        for f in ("req", "rsp"):
            try:
                getattr(self, f).close()
            except (AttributeError, OSError):
                pass

    def _call(self, msg, timeout: float) -> Outcome:
        t0 = time.perf_counter()
        try:
            _send(self.req, msg)
        except (BrokenPipeError, OSError):
            pass                                     # dead already: read EOF below
        ready, _, _ = select.select([self.rsp_fd], [], [], timeout)
        if not ready:
            # let faulthandler show where every thread is, then kill the worker
            try:
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
            except OSError:
                pass
            log = self._log_tail()
            self._kill()
            self.proc = None
            return Outcome("hang", log=log, seconds=time.perf_counter() - t0)
        reply = _recv(self.rsp)
        if reply is None:
            rc = self.proc.wait()
            log = self._log_tail()
            self._kill()
            self.proc = None
            return Outcome("crash", returncode=rc, log=log, seconds=time.perf_counter() - t0)
        kind, payload = reply
        if kind == "ready":
            return Outcome("ok", seconds=time.perf_counter() - t0)
        steps, unraisable = payload
        return Outcome("ok", steps=steps, unraisable=unraisable,
                       seconds=time.perf_counter() - t0)

    def run(self, program: list[str], timeout: float | None = None) -> Outcome:
        """Run ``program`` (a list of statements); a fresh worker if the last one died."""
        if self.proc is None:
            self._start()
        return self._call(("run", list(program)), timeout or self.timeout)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.req.close()                # EOF: the worker returns
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._kill()
            self.proc = None


def run_fresh(setup: str, program: list[str], timeout: float = 60.0) -> Outcome:
    """``program`` in a new worker that has run nothing else (is a crash reproducible alone?)."""
    w = Worker(setup, timeout=timeout)
    try:
        return w.run(program)
    finally:
        w.close()


def render(setup: str, program: list[str]) -> str:
    """A stand-alone script: the setup, then each statement in a try that prints its error."""
    lines = [setup.rstrip(), ""]
    for i, code in enumerate(program):
        lines.append("try:")
        lines.append(textwrap.indent(code, "    "))
        lines.append("except Exception as e:")
        lines.append(f"    print('step {i}:', type(e).__name__, e)")
    lines.append("print('no crash')")
    return "\n".join(lines) + "\n"


def signal_name(rc) -> str:
    """How a child process ended, from its return code (-N: killed by signal N)."""
    if rc is not None and rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            pass
    return f"exit code {rc}"


def crash_summary(log: str) -> str:
    """The informative lines of a dead worker's log: the last step it began, asserts, the
    faulthandler traceback."""
    lines = log.splitlines()
    keep = []
    for i, ln in enumerate(lines):
        if (ln.startswith("--- step") or "GGML_ASSERT" in ln or "error" in ln.lower()
                or "Fatal Python" in ln or "terminate called" in ln or "what():" in ln
                or ln.startswith("  File ") or ln.startswith("Thread ")
                or ln.startswith("Current thread") or "abort" in ln.lower()):
            keep.append(ln)
    steps = [i for i, ln in enumerate(keep) if ln.startswith("--- step")]
    if steps:
        keep = keep[steps[-1]:]
    return "\n".join(keep[-40:]) or log[-2000:]
