"""llama.cpp's two loggers, routed to the Python logger ``spec.llama``.

``llama_log`` (the model and context code, ggml) takes a callback: messages at or above the
logger's level are forwarded as they come, without the GIL for the ones below it.

``common_log`` (llama.cpp's common library: ``common_speculative``, the n-gram drafters) has no
callback at this pin: a worker thread prints every message to the console. It is kept silent
(threshold -1) except inside :func:`upstream_log`, which spec wraps around the calls that set a
drafter up or print statistics: there the threshold follows the logger's level, the process's
stdout and stderr go to a temporary file, and when the block ends (after flushing the worker) each
message is logged with its level. Inside the decode loop it stays silent.

There is one llama.cpp in the process (a shared library in ``spec/_lib``), so this module's settings
hold for every extension module.
"""
import contextlib
import logging
import os
import sys
import tempfile
import threading

from spec._c.llama cimport (GGML_LOG_LEVEL_CONT, GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_ERROR,
                          GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN, ggml_log_level,
                          llama_log_set)


cdef extern from "log.h" nogil:
    cdef struct common_log
    enum log_colors:
        LOG_COLORS_DISABLED
    int LOG_LEVEL_DEBUG
    int LOG_LEVEL_TRACE
    int LOG_LEVEL_INFO
    int LOG_LEVEL_WARN
    int LOG_LEVEL_ERROR
    common_log* common_log_main()
    void common_log_flush(common_log* log)
    void common_log_set_prefix(common_log* log, bint prefix)
    void common_log_set_colors(common_log* log, log_colors colors)
    int common_log_get_verbosity_thold()
    void common_log_set_verbosity_thold(int verbosity)


llama_logger = logging.getLogger("spec.llama")
if llama_logger.level == logging.NOTSET:
    # llama.cpp warns about benign things on every load; quiet unless the user asks for more.
    llama_logger.setLevel(logging.ERROR)

# -- llama_log ------------------------------------------------------------------------------------

# Messages below this ggml level are dropped in C without taking the GIL (refreshed from the
# `spec.llama` logger's level whenever a model or context is created).
cdef int _log_min_level = GGML_LOG_LEVEL_WARN
cdef int _log_last_level = GGML_LOG_LEVEL_INFO

_PY_LEVEL = {GGML_LOG_LEVEL_DEBUG: logging.DEBUG, GGML_LOG_LEVEL_INFO: logging.INFO,
             GGML_LOG_LEVEL_WARN: logging.WARNING, GGML_LOG_LEVEL_ERROR: logging.ERROR}


cdef void _log_callback(ggml_log_level level, const char* text, void* user_data) noexcept nogil:
    global _log_last_level
    cdef int lvl = level
    if lvl == GGML_LOG_LEVEL_CONT:
        lvl = _log_last_level
    else:
        _log_last_level = lvl
    if lvl < _log_min_level or text == NULL:
        return
    with gil:
        try:
            msg = (<bytes> text).decode("utf-8", "replace").rstrip("\n")
            if msg:
                llama_logger.log(_PY_LEVEL.get(lvl, logging.INFO), "%s", msg)
        except BaseException:
            pass  # a log line must never raise into C


def refresh_log_level():
    """Re-read the ``spec.llama`` logger's level (call after changing it)."""
    global _log_min_level
    level = llama_logger.getEffectiveLevel()
    if level <= logging.DEBUG:
        _log_min_level = GGML_LOG_LEVEL_DEBUG
    elif level <= logging.INFO:
        _log_min_level = GGML_LOG_LEVEL_INFO
    elif level <= logging.WARNING:
        _log_min_level = GGML_LOG_LEVEL_WARN
    else:
        _log_min_level = GGML_LOG_LEVEL_ERROR


llama_log_set(_log_callback, NULL)

# -- common_log -----------------------------------------------------------------------------------

# The level letter common_log writes before each message once its prefix is on.
_PREFIX_LEVEL = {"D ": logging.DEBUG, "I ": logging.INFO, "W ": logging.WARNING,
                 "E ": logging.ERROR}

# Set by set_log_verbosity (debugging): common_log then prints to the console as upstream does.
_forced_verbosity = None
_capture_lock = threading.Lock()

common_log_set_colors(common_log_main(), LOG_COLORS_DISABLED)
common_log_set_prefix(common_log_main(), True)
common_log_set_verbosity_thold(-1)


def _verbosity_for(int level):
    if level <= logging.DEBUG:
        return LOG_LEVEL_DEBUG
    if level <= logging.INFO:
        return LOG_LEVEL_INFO
    if level <= logging.WARNING:
        return LOG_LEVEL_WARN
    if level <= logging.ERROR:
        return LOG_LEVEL_ERROR
    return -1


@contextlib.contextmanager
def captured_upstream(int verbosity):
    """Collect what llama.cpp's common library prints during the block, up to ``verbosity``
    (``LOG_LEVEL_*``): yields a list that holds the text, one item, once the block ends.

    The process's stdout and stderr go to a temporary file meanwhile (common_log has no
    callback), so output other threads write then is collected too: keep blocks short.
    """
    collected = []
    with _capture_lock, tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        previous = common_log_get_verbosity_thold()
        common_log_set_verbosity_thold(verbosity)
        try:
            yield collected
        finally:
            common_log_set_verbosity_thold(previous)
            with nogil:
                common_log_flush(common_log_main())   # the worker has written everything
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            collected.append(sink.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def upstream_log():
    """Log what llama.cpp's common library prints during the block to ``spec.llama``, each
    message at its level (see :func:`captured_upstream`)."""
    verbosity = _verbosity_for(llama_logger.getEffectiveLevel())
    if verbosity < 0 or _forced_verbosity is not None:
        yield
        return
    with captured_upstream(verbosity) as text:
        yield
    _log_lines(text[0])


def strip_levels(str text):
    """common_log's output without its level letters."""
    return "\n".join(line[2:] if line[:2] in _PREFIX_LEVEL else line
                     for line in text.splitlines() if line.strip())


def _log_lines(str text):
    level = logging.INFO
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[:2] in _PREFIX_LEVEL:
            level = _PREFIX_LEVEL[line[:2]]
            line = line[2:]
        llama_logger.log(level, "%s", line)


def set_log_verbosity(int verbosity):
    """Let llama.cpp's common library print to the console up to ``verbosity`` (-1: nothing, as by
    default; 2: warnings; 5: debug), bypassing ``logging``. For debugging; not thread-safe."""
    global _forced_verbosity
    _forced_verbosity = None if verbosity < 0 else verbosity
    common_log_set_verbosity_thold(verbosity)


def get_log_verbosity():
    """The common library's console verbosity set by :func:`set_log_verbosity` (-1: silent)."""
    return common_log_get_verbosity_thold()
