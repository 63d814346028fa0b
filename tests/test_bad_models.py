"""Bad model files must never take the process down (issue 15).

llama.cpp aborts (GGML_ASSERT / GGML_ABORT), divides by zero or lets a C++ exception escape on
some malformed GGUF files; spec checks the file first (spec._runtime._modelfile over spec._runtime._gguf, see
docs/model-file-checks.md). Every file here is loaded in a worker interpreter that goes on to
tokenize and decode when the load succeeds (Qwen3.5 files draft with their MTP head, EAGLE-3
drafts with a llama target, through Engine), so a crash at load, first tokenize or first decode
shows as a signal exit; the worker is restarted after the case that killed it, so one crash
does not hide the rest.

- known crashes: one test each, a file llama.cpp dies on, which must raise a clean
  ModelLoadError naming the problem;
- the corpus: truncations at every section boundary and at seeded offsets; each metadata record
  corrupted (key and string lengths, type tags, array types and counts), each value (one key of
  every GGUF type included) removed or replaced by out-of-range ones; tensor infos corrupted;
  wrong magic / version / counts; odd paths (empty file, directory, FIFO, /dev/null, /dev/zero,
  bytes, PathLike, ""). A corrupted file that still loads is fine as long as nothing crashes;
- the reader against gguf-py, and path handling (bytes, PathLike, undecodable bytes, "",
  directory; a FIFO in a subprocess with a timeout).

The files are built from small random models (spec.testing) over a 512-token cut of llama.cpp's
llama-spm vocabulary: each is under 1 MB and loads in milliseconds.

``SPEC_BAD_MODELS_UNCHECKED=1`` makes the workers bypass spec's file check (they keep only the
path checks): the known-crash tests and the corpus then fail with the signals llama.cpp dies of
(or hang), which shows each check is needed.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import queue
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import spec.testing
from spec._runtime import _gguf as G
from spec._runtime._errors import ModelLoadError
from spec._runtime._modelfile import check_model_file

ROOT = Path(__file__).resolve().parents[1]
UNCHECKED = os.environ.get("SPEC_BAD_MODELS_UNCHECKED") == "1"
CASE_TIMEOUT = 30.0     # seconds one case may take (a load here takes milliseconds)
N_VOCAB = 512           # tokens kept from llama-spm: <unk> <s> </s>, 256 byte tokens, merges
CLEAN_ERRORS = {"ModelLoadError", "FileNotFoundError", "IsADirectoryError", "PermissionError"}

# -- worker ----------------------------------------------------------------------------------

# Loads cases[start:] one after another; prints "START i" before each and "RESULT i ..." after.
WORKER = r"""
import json, os, pathlib, sys
cases = json.load(open(sys.argv[1]))
start = int(sys.argv[2])
import spec._runtime._core
if os.environ.get("SPEC_BAD_MODELS_UNCHECKED") == "1":
    spec._runtime._core.check_model_file = lambda p: os.fsdecode(os.fspath(p))    # path checks only
from spec._runtime._core import Context, Model
for i in range(start, len(cases)):
    case = cases[i]
    print(f"START {i}", file=sys.stderr, flush=True)
    print(f"START {i}", flush=True)
    path = case["path"]
    if case.get("as") == "bytes":
        path = os.fsencode(path)
    elif case.get("as") == "pathlike":
        path = pathlib.Path(path)
    mode = case.get("mode")
    try:
        model = Model(path, load_mtp=mode == "mtp")
    except Exception as e:
        print(f"RESULT {i} error {type(e).__name__} {ascii(str(e))[:400]}", flush=True)
        continue
    detail = "decoded"
    try:       # the first tokenize / token_to_piece / decode: llama.cpp asserts there too
        tokens = model.tokenize("Hello world! \u00e9\u2603")
        for t in tokens[:4]:
            model.token_to_piece(int(t))
        if mode in ("mtp", "eagle3"):      # a speculative session drafts with the model
            from spec.engine import Engine
            target = model if mode == "mtp" else case["target"]
            with Engine(target, drafter=mode, n_draft=2, n_ctx=64, n_threads=1,
                        drafter_params=None if mode == "mtp" else {"draft_model": model}) as e:
                e.generate("Hello world", max_tokens=3)
        else:
            with Context(model, n_ctx=32, n_batch=32, n_threads=1) as ctx:
                ctx.decode(tokens[:1] if len(tokens) else [0])
    except Exception as e:
        detail = f"{type(e).__name__}: {ascii(str(e))[:200]}"
    model.close()
    print(f"RESULT {i} loaded {detail}", flush=True)
"""


def _worker_env():
    return {**os.environ, "GGML_NO_BACKTRACE": "1",     # an abort must not wait for gdb
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _tail(path: Path) -> str:
    """The informative end of a dead worker's stderr (what its last case printed)."""
    lines = path.read_text(errors="replace").splitlines()
    starts = [j for j, ln in enumerate(lines) if ln.startswith("START ")]
    lines = lines[starts[-1] + 1:] if starts else lines
    keep = [ln for ln in lines if "GGML_ASSERT" in ln or "error" in ln.lower()
            or "terminate" in ln or "what()" in ln]
    return " | ".join((keep or lines)[-3:])[-400:]


def run_cases(cases: list, workdir: Path, timeout: float = CASE_TIMEOUT) -> dict:
    """Load ``cases`` ({"name", "path", "as"?}) in worker interpreters, one after another.

    Returns {name: (status, detail)} with status "error" (an exception; detail starts with its
    type), "loaded", "crash" (detail: the signal and the worker's last stderr lines) or "hang"
    (no result within ``timeout`` seconds). A worker that dies or hangs is replaced by a new
    one starting at the next case; one that dies after the last case adds a "worker exit
    after ..." crash.
    """
    assert len({c["name"] for c in cases}) == len(cases), "case names must be unique"
    workdir.mkdir(parents=True, exist_ok=True)
    cfile = workdir / "cases.json"
    cfile.write_text(json.dumps(cases))
    results = {}
    i = 0
    while i < len(cases):
        errfile = workdir / f"worker-{i}.err"
        with open(errfile, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", WORKER, str(cfile), str(i)],
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=_worker_env(), cwd=str(ROOT))
        lines = queue.Queue()

        def pump(out=proc.stdout, q=lines):
            for ln in out:
                q.put(ln)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        current = None
        # the worker's start-up (imports) counts against the first case's timeout
        deadline = time.monotonic() + timeout + 30
        while True:
            try:
                ln = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                proc.wait()
                k = i if current is None else current
                results[cases[k]["name"]] = ("hang", f"no result in {timeout:.0f} s")
                i = k + 1
                break
            if ln is None:                  # the worker exited
                rc = proc.wait()
                if current is not None and cases[current]["name"] not in results:
                    sig = f"signal {-rc}" if rc < 0 else f"exit {rc}"
                    results[cases[current]["name"]] = ("crash", f"{sig}: {_tail(errfile)}")
                    i = current + 1
                elif rc != 0 and current is None:
                    raise RuntimeError(f"worker failed to start (exit {rc}): {_tail(errfile)}")
                else:
                    if rc != 0:                 # every case done, then a crash at exit
                        results[f"worker exit after {cases[current]['name']}"] = (
                            "crash", f"exit {rc}: {_tail(errfile)}")
                    i = len(cases)
                break
            word, k, *rest = ln.rstrip("\n").split(" ", 3) + ["", ""]
            if word == "START":
                current = int(k)
                deadline = time.monotonic() + timeout
            elif word == "RESULT":
                results[cases[int(k)]["name"]] = (rest[0], rest[1])
    return results


def summarize(results: dict) -> str:
    count = {s: 0 for s in ("error", "loaded", "crash", "hang")}
    for status, _ in results.values():
        count[status] += 1
    return (f"tried {len(results)} / clean error {count['error']} / loaded {count['loaded']} / "
            f"crash {count['crash']} / hang {count['hang']}")


def failures(results: dict) -> list:
    """Cases that crashed, hung, or raised something other than a clean load error."""
    bad = []
    for name, (status, detail) in results.items():
        if status in ("crash", "hang"):
            bad.append(f"{name}: {status} ({detail})")
        elif status == "error" and detail.split(" ", 1)[0] not in CLEAN_ERRORS:
            bad.append(f"{name}: unexpected exception {detail}")
    return bad


# -- GGUF editing ----------------------------------------------------------------------------

def encode_value(vtype: int, value, subtype: int | None = None) -> bytes:
    if vtype == G.STRING:
        b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(b)) + b
    if vtype == G.ARRAY:
        return struct.pack("<IQ", subtype, len(value)) + b"".join(
            encode_value(subtype, v) for v in value)
    return G._SCALAR[vtype].pack(value)


def encode_kv(key: str, vtype: int, value, subtype: int | None = None) -> bytes:
    return encode_value(G.STRING, key) + struct.pack("<I", vtype) + encode_value(vtype, value,
                                                                                subtype)


class Gguf:
    """A GGUF file split into raw pieces for editing: metadata records, tensor infos, data."""

    def __init__(self, path: Path):
        self.data = path.read_bytes()
        self.info = G.read_gguf(path, max_strings=1 << 20)
        g = self.info
        keys = list(g.kv_offsets)
        ends = [g.kv_offsets[k] for k in keys[1:]] + [g.kv_end]
        self.records = {k: self.data[g.kv_offsets[k]:e] for k, e in zip(keys, ends)}
        self.infos = self.data[g.kv_end:g.infos_end]
        self.tensor_data = self.data[g.data_offset:]

    def build(self, records=None, version=None) -> bytes:
        records = self.records if records is None else records
        g = self.info
        meta = struct.pack("<4sIQQ", b"GGUF", version or g.version, g.n_tensors, len(records))
        meta += b"".join(records.values()) + self.infos
        return meta + b"\0" * (-len(meta) % g.alignment) + self.tensor_data

    def with_kv(self, key: str, vtype: int | None = None, value=None, subtype=None,
                **more) -> bytes:
        """The file with ``key`` set (vtype None: removed), plus ``more`` {key: (vtype, value[,
        subtype])} edits."""
        records = dict(self.records)
        for k, (t, v, *sub) in [(key, (vtype, value, subtype))] + list(more.items()):
            if t is None:
                records.pop(k, None)
            else:
                records[k] = encode_kv(k, t, v, sub[0] if sub else None)
        return self.build(records)

    def with_tensors(self, **changes) -> bytes:
        """The file with tensors {name: (ggml type, raw data)} replaced (data re-laid out)."""
        infos, data, align = b"", b"", self.info.alignment
        for t in self.info.tensors:
            raw = self.tensor_data[t.offset:t.offset + t.n_bytes]
            ttype, raw = changes.get(t.name, (t.type, raw))
            infos += (encode_value(G.STRING, t.name) + struct.pack("<I", len(t.dims))
                      + b"".join(struct.pack("<q", n) for n in t.dims)
                      + struct.pack("<IQ", ttype, len(data)))
            data += raw + b"\0" * (-len(raw) % align)
        copy = object.__new__(Gguf)
        copy.__dict__.update(self.__dict__, infos=infos, tensor_data=data)
        return copy.build()

    def value(self, key):
        v = self.info.kv[key]
        return v.values if isinstance(v, G.GGUFArray) else v


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


# -- base models -----------------------------------------------------------------------------

def small_vocab(path: Path, source: Path, n: int = N_VOCAB) -> Path:
    """A vocabulary GGUF with the first ``n`` tokens of ``source`` (an SPM vocabulary: its
    first 259 are <unk> <s> </s> and the 256 byte tokens)."""
    from gguf import GGUFValueType, GGUFWriter

    w = GGUFWriter(str(path), "llama")
    for key, vtype, sub, value in spec.testing.read_tokenizer_kv(source):
        if vtype == G.ARRAY:
            w.add_key_value(key, value[:n], GGUFValueType.ARRAY, sub_type=GGUFValueType(sub))
        else:
            w.add_key_value(key, value, GGUFValueType(vtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory, vocab_path) -> dict:
    """Small valid models: {"llama", "qwen35" (with an MTP block), "eagle3" and its 4-layer
    llama "target"} -> path."""
    d = tmp_path_factory.mktemp("bases")
    vocab = small_vocab(d / "vocab.gguf", vocab_path("llama-spm"))
    return {
        "llama": spec.testing.make_tiny_llama(d / "llama.gguf", vocab=vocab, n_layer=2,
                                              n_embd=32, n_head=2, n_ff=64),
        "qwen35": spec.testing.make_tiny_qwen35_mtp(d / "qwen35.gguf", vocab=vocab),
        "eagle3": spec.testing.make_tiny_eagle3(d / "eagle3.gguf", vocab=vocab,
                                                n_embd_target=64, target_layers=(0, 1, 2)),
        "target": spec.testing.make_tiny_llama(d / "target.gguf", vocab=vocab, n_layer=4,
                                               n_embd=64, n_head=4, n_ff=128),
    }


# -- known crashes ---------------------------------------------------------------------------

def _known_crashes(bases) -> dict:
    """name -> (file bytes, fragment of the expected ModelLoadError message[, worker case
    options]). Without spec's check llama.cpp dies on each (of what, with this llama.cpp: the
    comment)."""
    ll, qw, eg = Gguf(bases["llama"]), Gguf(bases["qwen35"]), Gguf(bases["eagle3"])
    norm = next(t for t in ll.info.tensors if t.name == "output_norm.weight")
    tokens = ll.value("tokenizer.ggml.tokens")
    types = list(ll.value("tokenizer.ggml.token_type"))
    u32, f32, s, arr = G.UINT32, G.FLOAT32, G.STRING, G.ARRAY
    gemma = {"gemma3.block_count": (u32, 62), "gemma3.attention.head_count": (u32, 0),
             "gemma3.context_length": (u32, 128), "gemma3.embedding_length": (u32, 32),
             "gemma3.attention.layer_norm_rms_epsilon": (f32, 1e-6)}
    return {
        # llama-model.cpp load_hparams: GGML_ASSERT(n_layer_all > 0 && <= LLAMA_MAX_LAYERS)
        "block_count_0": (ll.with_kv("llama.block_count", u32, 0), "block_count is 0"),
        "block_count_above_max": (ll.with_kv("llama.block_count", u32, 513), "block_count is 513"),
        # ggml-cpu ops.cpp rms_norm: GGML_ASSERT(eps >= 0.0f), at the first decode
        "rms_eps_negative": (ll.with_kv("llama.attention.layer_norm_rms_epsilon", f32, -1e-5),
                             "layer_norm_rms_epsilon"),
        "rms_eps_nan": (ll.with_kv("llama.attention.layer_norm_rms_epsilon", f32, math.nan),
                        "layer_norm_rms_epsilon is nan"),
        # llama-model-loader.cpp: an enum llama_ftype loaded from any uint32 (UB past 2047;
        # UBSan reports "not a valid value for type 'llama_ftype'")
        "file_type_not_an_ftype": (ll.with_kv("general.file_type", u32, 0xFFFFFFFF),
                                   "general.file_type = 4294967295"),
        # llama-vocab.cpp token_to_byte: GGML_ABORT for WordPiece, building the piece cache
        "tokenizer_bert_on_spm_vocab": (ll.with_kv("tokenizer.ggml.model", s, "bert"),
                                        "'bert'"),
        # llama-vocab.cpp tokenize: GGML_ASSERT(tokenizer) (no tokenizer for "none")
        "tokenizer_none": (ll.with_kv("tokenizer.ggml.model", s, "none"), "no vocabulary"),
        # load_hparams: GGML_ASSERT(n_layer_nextn <= n_layer_all)
        "nextn_above_block_count": (ll.with_kv("llama.nextn_predict_layers", u32, 3),
                                    "nextn_predict_layers is 3"),
        # load_hparams: GGML_ASSERT(n_expert <= LLAMA_MAX_EXPERTS)
        "expert_count_above_max": (ll.with_kv("llama.expert_count", u32, 2000),
                                   "expert_count is 2000"),
        # load_hparams: GGML_ASSERT(n_expert_used_max <= n_expert)
        "expert_used_without_experts": (ll.with_kv("llama.expert_used_count", u32, 2),
                                        "expert_used_count is 2"),
        # load_hparams: GGML_ASSERT(rope_scaling_type_train != UNSPECIFIED)
        "rope_scaling_type_unknown": (ll.with_kv("llama.rope.scaling.type", s, "bogus"),
                                      "rope.scaling.type is 'bogus'"),
        # llama-vocab.cpp load: GGML_ASSERT(id_to_token.size() == token_to_id.size())
        "duplicate_token": (ll.with_kv("tokenizer.ggml.tokens", arr,
                                       tokens[:-1] + [tokens[300]], s),
                            "twice (ids 300 and 511)"),
        # llama-vocab.cpp tokenize (UGM): GGML_ASSERT(special_bos_id != LLAMA_TOKEN_NULL)
        "t5_adds_bos_it_lacks": (ll.with_kv("tokenizer.ggml.model", s, "t5",
                                            **{"tokenizer.ggml.bos_token_id": (None, None),
                                               "tokenizer.ggml.add_bos_token": (G.BOOL, True)}),
                                 "adds a BOS token but has none"),
        # llama-vocab.cpp tokenize ("test"): n_vocab == 0, integer division by zero (SIGFPE)
        "empty_vocabulary": (ll.with_kv("tokenizer.ggml.model", s, "test",
                                        **{"tokenizer.ggml.tokens": (arr, [], s)}),
                             "tokenizer.ggml.tokens is empty"),
        # llama-vocab.cpp byte_to_token: unordered_map::at throws out of tokenize: terminate
        "spm_without_byte_tokens": (ll.with_kv(
            "tokenizer.ggml.tokens", arr, tokens[:3] + [b"X%d" % i for i in range(256)]
            + tokens[259:], s, **{"tokenizer.ggml.token_type": (arr, types[:3] + [1] * 256
                                                                + types[259:], G.INT32)}),
            "lacks the byte tokens"),
        # models/qwen35.cpp load_arch_hparams: (i + 1) % full_attn_interval (SIGFPE)
        "qwen35_full_attention_interval_0": (qw.with_kv("qwen35.full_attention_interval", u32, 0),
                                             "full_attention_interval is 0"),
        # ggml-cpu ops.cpp rope: GGML_ASSERT(sections[0] > 0 || ...), at the first decode
        "qwen35_rope_sections_zero": (qw.with_kv("qwen35.rope.dimension_sections", arr,
                                                 [0, 0, 0, 0], G.INT32), "dimension_sections"),
        # ggml-cpu ops.cpp mrope cache: (i0 / 2) % sect_dims with sect_dims == 0 (SIGFPE)
        "qwen35_rope_sections_negative": (qw.with_kv("qwen35.rope.dimension_sections", arr,
                                                     [1, -1, 0, 0], G.INT32),
                                          "dimension_sections"),
        # ggml-cpu ops.cpp rope: GGML_ASSERT(n_dims % 2 == 0), at the first decode
        "rope_dimension_count_odd": (qw.with_kv("qwen35.rope.dimension_count", u32, 7),
                                     "rope.dimension_count is 7"),
        # ggml-cpu ops.cpp rope: GGML_ASSERT(n_dims <= ne0), at the first decode
        "rope_dimension_count_above_head_size": (qw.with_kv("qwen35.rope.dimension_count", u32,
                                                            32), "rope.dimension_count is 32"),
        # models/gemma3.cpp: n_embd / n_head(0) for a 62-layer (27B) model (SIGFPE)
        "gemma3_head_count_0": (ll.with_kv("general.architecture", s, "gemma3", **gemma),
                                "gemma3.attention.head_count is 0"),
        # ggml-cpu rope with n_dims == 0 never returns from the first decode
        "rope_dimension_count_0": (qw.with_kv("qwen35.rope.dimension_count", u32, 0),
                                   "rope.dimension_count is 0"),
        # models/qwen35.cpp graph: head_v_dim = inner_size / time_step_rank disagrees with the
        # tensors: GGML_ASSERT(a->ne[d] == b->ne[d]) in ggml.c at the first decode
        "qwen35_ssm_inner_size_mismatch": (qw.with_kv("qwen35.ssm.inner_size", u32, 3),
                                           "ssm.inner_size is 3"),
        # ggml-cpu: no vec_dot for I32 weights, a NULL call at the first decode (SIGSEGV)
        "weight_of_integer_type": (ll.with_tensors(**{"blk.0.attn_q.weight": (
            26, bytes(4 * 32 * 32))}), "has type I32"),
        # ggml-cpu binary-ops.cpp: "unsupported types" f32 x f16 (GGML_ABORT) at the first decode
        "norm_weight_not_f32": (ll.with_tensors(**{"output_norm.weight": (
            1, struct.pack("<e", 1.0) * norm.n_elements)}), "needs it in F32"),
        # llama-context.cpp set_embeddings_layer_inp: GGML_ASSERT(lid <= n_layer) when the
        # EAGLE-3 session starts
        "eagle3_target_layer_negative": (
            eg.with_kv("eagle3.target_layers", arr, [-1, 1, 2], G.INT32), "target_layers",
            {"mode": "eagle3", "target": str(bases["target"])}),
    }


KNOWN_CRASHES = ["block_count_0", "block_count_above_max", "rms_eps_negative", "rms_eps_nan",
                 "file_type_not_an_ftype",
                 "tokenizer_bert_on_spm_vocab", "tokenizer_none", "nextn_above_block_count",
                 "expert_count_above_max", "expert_used_without_experts",
                 "rope_scaling_type_unknown", "duplicate_token", "t5_adds_bos_it_lacks",
                 "empty_vocabulary", "spm_without_byte_tokens",
                 "qwen35_full_attention_interval_0", "qwen35_rope_sections_zero",
                 "qwen35_rope_sections_negative", "rope_dimension_count_odd",
                 "rope_dimension_count_above_head_size", "gemma3_head_count_0",
                 "rope_dimension_count_0", "qwen35_ssm_inner_size_mismatch",
                 "weight_of_integer_type", "norm_weight_not_f32", "eagle3_target_layer_negative"]


@pytest.fixture(scope="module")
def known_crash_results(bases, tmp_path_factory):
    d = tmp_path_factory.mktemp("crashes")
    crashes = _known_crashes(bases)
    assert sorted(crashes) == sorted(KNOWN_CRASHES)
    cases = []
    for name, (data, _, *options) in crashes.items():
        (d / f"{name}.gguf").write_bytes(data)
        cases.append({"name": name, "path": str(d / f"{name}.gguf"),
                      **(options[0] if options else {})})
    results = run_cases(cases, d)
    print(f"\nknown crashes: {summarize(results)}")
    return {name: (results[name], crashes[name][1]) for name in crashes}


@pytest.mark.parametrize("name", KNOWN_CRASHES)
def test_known_crash_is_a_clean_error(known_crash_results, name):
    (status, detail), expected = known_crash_results[name]
    assert status == "error", f"{name}: {status}: {detail}"
    assert detail.startswith("ModelLoadError "), detail
    assert expected in detail, detail


def test_eagle3_draft_that_does_not_fit_its_target(bases, tmp_path):
    """The draft names a target layer the target lacks (GGML_ABORT in common/speculative.cpp),
    or reads hidden states of another width (GGML_ABORT in common.cpp get_sub_batch)."""
    eg = Gguf(bases["eagle3"])
    layer = tmp_path / "layer.gguf"
    layer.write_bytes(eg.with_kv("eagle3.target_layers", G.ARRAY, [0, 1, 9], G.INT32))
    vocab = tmp_path / "vocab.gguf"
    small_vocab(vocab, spec.testing.vocab_path("llama-spm"))
    width = spec.testing.make_tiny_eagle3(tmp_path / "width.gguf", vocab=vocab, n_embd_target=32)
    opts = {"mode": "eagle3", "target": str(bases["target"])}
    results = run_cases([{"name": "layer", "path": str(layer), **opts},
                         {"name": "width", "path": str(width), **opts}], tmp_path / "run")
    assert not failures(results), results


def test_bases_load_and_pass_the_check(bases):
    """No false positives: the unmodified models pass the check (and load: see the corpus)."""
    for path in bases.values():
        assert check_model_file(path) == str(path)


# -- the corpus ------------------------------------------------------------------------------

def _scalar_variants(vtype: int, value) -> list:
    if vtype == G.BOOL:
        return [not value]
    if vtype == G.STRING:
        return ["", "bogus", "\udcff\udcfe", "x" * 300]
    if vtype in (G.FLOAT32, G.FLOAT64):
        return [0.0, -1.0, math.nan, math.inf, -math.inf, 3e38]
    bits = G._SCALAR[vtype].size * 8
    signed = vtype in (G.INT8, G.INT16, G.INT32, G.INT64)
    if signed:
        return [0, -1, -(1 << (bits - 1)), (1 << (bits - 1)) - 1]
    return sorted({0, 1, 3, min(513, (1 << bits) - 1), (1 << bits) - 1})


def _array_variants(arr: G.GGUFArray) -> list:
    """Replacement lists for an array value: empty, one item short, one item, odd values."""
    vals = list(arr.values)
    out = [[], vals[:-1], vals[:1]]
    if arr.type in (G.FLOAT32, G.FLOAT64):
        out += [[math.nan] * len(vals), [-1.0] * len(vals)]
    elif arr.type == G.STRING:
        out += [[b""] * len(vals)]
    elif arr.type != G.BOOL:
        signed = arr.type in (G.INT8, G.INT16, G.INT32, G.INT64)
        top = (1 << (G._SCALAR[arr.type].size * 8 - (1 if signed else 0))) - 1
        out += [[top] * len(vals)] + ([[-1] * len(vals)] if signed else [])
    return out


def _value_cases(gg: Gguf, label: str, keys) -> list:
    """(name, bytes): each key removed and its value replaced by out-of-range ones."""
    out = []
    for key in keys:
        vtype = gg.info.types[key]
        out.append((f"{label}:{key}:removed", gg.with_kv(key)))
        if vtype == G.ARRAY:
            arr = gg.info.kv[key]
            for j, v in enumerate(_array_variants(arr)):
                out.append((f"{label}:{key}:array{j}", gg.with_kv(key, G.ARRAY, v, arr.type)))
        else:
            for v in _scalar_variants(vtype, gg.info.kv[key]):
                out.append((f"{label}:{key}={v!r}", gg.with_kv(key, vtype, v)))
    return out


def _structure_cases(gg: Gguf, rng: random.Random) -> list:
    """(name, bytes): truncations, broken lengths / counts / type tags, magic and version."""
    g, data = gg.info, gg.data
    cases = []
    cuts = {"magic-1": 3, "magic": 4, "version": 8, "n_tensors": 16, "header": 24,
            "infos-end": g.infos_end, "padding": (g.infos_end + g.data_offset) // 2,
            "data-start": g.data_offset, "last-byte": g.size - 1}
    for key, off in g.kv_offsets.items():
        klen = len(key.encode("utf-8", "surrogateescape"))
        cuts[f"kv {key}"] = off
        cuts[f"kv {key} +key"] = off + 8 + klen
        cuts[f"kv {key} +type"] = off + 12 + klen
    for t in g.tensors:
        cuts[f"tensor-info {t.name}"] = t.info_offset
        cuts[f"tensor-data {t.name}"] = g.data_offset + t.offset
        cuts[f"tensor-data {t.name} mid"] = g.data_offset + t.offset + t.n_bytes // 2
    for off in rng.sample(range(1, g.size), 40):
        cuts[f"seeded {off}"] = off
    for name, off in cuts.items():
        cases.append((f"truncated at {name} ({off})", data[:off]))

    head = [("magic GGUX", patch(data, 0, b"GGUX")),
            ("magic byte-swapped", patch(data, 0, b"FUGG")),
            ("magic zero", patch(data, 0, b"\0\0\0\0"))]
    for v in (0, 1, 2, 4, 0x03000000, 0xFFFFFFFF):
        head.append((f"version {v:#x}", patch(data, 4, struct.pack("<I", v))))
    for label, off, n in (("n_tensors", 8, g.n_tensors), ("n_kv", 16, g.n_kv)):
        for v in (n - 1, n + 1, 1 << 62, (1 << 64) - 1):
            head.append((f"{label} {v}", patch(data, off, struct.pack("<Q", v))))
    cases += head
    cases += _record_cases(gg, g.kv_offsets)
    cases += _tensor_info_cases(gg)
    return cases


def _record_cases(gg: Gguf, keys) -> list:
    """(name, bytes): the metadata records of ``keys`` with a broken key length, type tag,
    string length, array type or array count."""
    g, data = gg.info, gg.data
    cases = []
    for key in keys:
        off = g.kv_offsets[key]
        klen = len(key.encode("utf-8", "surrogateescape"))
        voff = off + 12 + klen
        vtype = g.types[key]
        for v in (0, klen + 1, 1 << 40, (1 << 64) - 1):
            cases.append((f"kv {key}: key length {v}", patch(data, off, struct.pack("<Q", v))))
        for t in [13, 0xFFFFFFFF] + [t for t in (G.ARRAY, G.STRING, G.UINT32) if t != vtype][:2]:
            cases.append((f"kv {key}: type {t}", patch(data, off + 8 + klen, struct.pack("<I", t))))
        if vtype == G.STRING:
            n = len(g.kv[key].encode("utf-8", "surrogateescape"))
            for v in (n + 1, 1 << 40, (1 << 64) - 1):
                cases.append((f"kv {key}: string length {v}",
                              patch(data, voff, struct.pack("<Q", v))))
        elif vtype == G.ARRAY:
            arr = g.kv[key]
            for t in (13, G.ARRAY, G.UINT8 if arr.type != G.UINT8 else G.STRING):
                cases.append((f"kv {key}: array type {t}", patch(data, voff, struct.pack("<I", t))))
            for v in (arr.count - 1, arr.count + 1, 1 << 62, (1 << 64) - 1):
                cases.append((f"kv {key}: array count {v}",
                              patch(data, voff + 4, struct.pack("<Q", v))))
            if arr.type == G.STRING and arr.count:
                cases.append((f"kv {key}: item 0 length 2**63",
                               patch(data, voff + 12, struct.pack("<Q", 1 << 63))))
    return cases


def _tensor_info_cases(gg: Gguf) -> list:
    """(name, bytes): tensor infos with a broken name length, shape, type or offset."""
    g, data = gg.info, gg.data
    cases = []
    for t in g.tensors[:2] + g.tensors[-1:]:
        off = t.info_offset
        nlen = len(t.name.encode())
        doff = off + 8 + nlen          # n_dims
        cases += [
            (f"tensor {t.name}: name length 2**63", patch(data, off, struct.pack("<Q", 1 << 63))),
            (f"tensor {t.name}: n_dims 5", patch(data, doff, struct.pack("<I", 5))),
            (f"tensor {t.name}: n_dims 0", patch(data, doff, struct.pack("<I", 0))),
            (f"tensor {t.name}: ne0 -1", patch(data, doff + 4, struct.pack("<q", -1))),
            (f"tensor {t.name}: ne0 2**62", patch(data, doff + 4, struct.pack("<q", 1 << 62))),
            (f"tensor {t.name}: ne0 0", patch(data, doff + 4, struct.pack("<q", 0))),
        ]
        toff = doff + 4 + 8 * len(t.dims)
        for ty in (99, 4, G.ARRAY, 2):      # invalid, removed (Q4_2), another size, Q4_0
            cases.append((f"tensor {t.name}: ggml type {ty}",
                          patch(data, toff, struct.pack("<I", ty))))
        for v in (t.offset + 32, 1 << 63):
            cases.append((f"tensor {t.name}: offset {v}",
                          patch(data, toff + 4, struct.pack("<Q", v))))
    return cases


# one extra metadata key of each GGUF value type, and an array of each element type
TYPED = {"spec.test.u8": (G.UINT8, 7), "spec.test.i8": (G.INT8, -7),
         "spec.test.u16": (G.UINT16, 700), "spec.test.i16": (G.INT16, -700),
         "spec.test.u32": (G.UINT32, 70000), "spec.test.i32": (G.INT32, -70000),
         "spec.test.u64": (G.UINT64, 1 << 40), "spec.test.i64": (G.INT64, -(1 << 40)),
         "spec.test.f32": (G.FLOAT32, 0.5), "spec.test.f64": (G.FLOAT64, -0.25),
         "spec.test.bool": (G.BOOL, True), "spec.test.string": (G.STRING, "text"),
         **{f"spec.test.array.{G.TYPE_NAMES[t]}": (G.ARRAY, v, t) for t, v in [
             (G.UINT8, [1, 2]), (G.INT8, [-1, 2]), (G.UINT16, [1, 2]), (G.INT16, [-1, 2]),
             (G.UINT32, [1, 2]), (G.INT32, [-1, 2]), (G.UINT64, [1, 2]), (G.INT64, [-1, 2]),
             (G.FLOAT32, [0.5, 1.5]), (G.FLOAT64, [0.5, 1.5]), (G.BOOL, [1, 0]),
             (G.STRING, [b"a", b"bc"])]}}


def _typed_cases(ll: Gguf, d: Path) -> list:
    """(name, bytes): the llama model with a key of every type (valid), each of those keys
    corrupted, and general.alignment set to odd values."""
    path = d / "typed.gguf"
    d.mkdir(parents=True, exist_ok=True)
    first, *rest = TYPED.items()
    path.write_bytes(ll.with_kv(first[0], *first[1], **dict(rest)))
    tg = Gguf(path)
    cases = [("typed: valid", tg.data)]
    cases += [(f"typed: {n}", b) for n, b in _record_cases(tg, TYPED)]
    cases += _value_cases(tg, "typed", TYPED)
    for v, t in ((0, G.UINT32), (3, G.UINT32), (64, G.UINT32), (1 << 31, G.UINT32),
                 (32, G.UINT64), (32, G.INT32)):
        cases.append((f"typed: general.alignment={v} ({G.TYPE_NAMES[t]})",
                      tg.with_kv("general.alignment", t, v)))
    return cases


def _corpus(bases, d: Path) -> list:
    rng = random.Random(15)
    ll = Gguf(bases["llama"])
    built = [("llama: valid", ll.data)]
    built += [(f"llama: {n}", b) for n, b in _structure_cases(ll, rng)]
    built += _value_cases(ll, "llama", ll.info.kv)
    built += _typed_cases(ll, d)
    qw = Gguf(bases["qwen35"])
    built += [("qwen35: valid", qw.data)]
    built += _value_cases(qw, "qwen35", [k for k in qw.info.kv if k.startswith("qwen35.")])
    eg = Gguf(bases["eagle3"])
    built += [("eagle3: valid", eg.data)]
    built += _value_cases(eg, "eagle3", [k for k in eg.info.kv if k.startswith("eagle3.")])

    d.mkdir(parents=True, exist_ok=True)
    cases = []
    for j, (name, data) in enumerate(built):
        p = d / f"{j:04d}.gguf"
        p.write_bytes(data)
        cases.append({"name": name, "path": str(p)})
        if name.startswith("qwen35"):
            cases[-1]["mode"] = "mtp"
        elif name.startswith("eagle3"):
            cases[-1].update(mode="eagle3", target=str(bases["target"]))

    # odd paths
    (d / "empty.gguf").write_bytes(b"")
    (d / "dir.gguf").mkdir()
    os.mkfifo(d / "fifo.gguf")
    cases += [{"name": "empty file", "path": str(d / "empty.gguf")},
              {"name": "directory", "path": str(d / "dir.gguf")},
              {"name": "fifo", "path": str(d / "fifo.gguf")},
              {"name": "/dev/null", "path": "/dev/null"},
              {"name": "/dev/zero", "path": "/dev/zero"},
              {"name": "empty path", "path": ""},
              {"name": "bytes path", "path": str(bases["llama"]), "as": "bytes"},
              {"name": "PathLike path", "path": str(bases["llama"]), "as": "pathlike"}]
    if os.geteuid() != 0:
        locked = d / "locked.gguf"
        locked.write_bytes(ll.data)
        locked.chmod(0)
        cases.append({"name": "unreadable file", "path": str(locked)})
    return cases


def test_bad_model_corpus(bases, tmp_path):
    """Every corrupted file is a clean error or loads (and then tokenizes and decodes); none
    crashes or hangs the interpreter."""
    t0 = time.monotonic()
    cases = _corpus(bases, tmp_path / "corpus")
    built = time.monotonic() - t0
    results = run_cases(cases, tmp_path / "run")
    print(f"\nbad-model corpus: {summarize(results)} (built in {built:.1f} s, run in "
          f"{time.monotonic() - t0 - built:.1f} s)")
    if os.geteuid() == 0:
        print("bad-model corpus: skipped the unreadable-file case: running as root, which "
              "reads any file")
    assert {c["name"] for c in cases} <= set(results)
    bad = failures(results)
    assert not bad, f"{len(bad)} of {len(cases)} cases failed:\n" + "\n".join(bad[:40])
    for name in ("llama: valid", "typed: valid", "qwen35: valid", "eagle3: valid",
                 "bytes path", "PathLike path", "llama: version 0x2"):
        assert results[name] == ("loaded", "decoded"), (name, results[name])
    expected = {"empty path": "FileNotFoundError", "directory": "IsADirectoryError",
                "fifo": "ModelLoadError", "/dev/null": "ModelLoadError",
                "/dev/zero": "ModelLoadError", "empty file": "ModelLoadError"}
    for name, exc in expected.items():
        assert results[name][0] == "error" and results[name][1].startswith(exc), results[name]
    shutil.rmtree(tmp_path / "corpus")     # ~300 MB; kept when the test fails


# -- the reader ------------------------------------------------------------------------------

def test_reader_agrees_with_gguf_py(bases, tiny_model_path):
    """read_gguf returns what the gguf package reads (keys, values, tensor infos)."""
    from gguf import GGUFReader, GGUFValueType

    for path in [tiny_model_path, *bases.values()]:
        g = G.read_gguf(path, max_strings=1 << 20)
        r = GGUFReader(str(path))
        fields = [f for f in r.fields.values() if not f.name.startswith("GGUF.")]
        assert [f.name for f in fields] == list(g.kv)
        for f in fields:
            v = g.kv[f.name]
            if f.types[0] == GGUFValueType.ARRAY:
                items = [bytes(f.parts[i]) if f.types[1] == GGUFValueType.STRING
                         else f.parts[i][0].item() for i in f.data]
                assert v.count == len(items) and list(v.values) == items, f.name
            elif f.types[0] == GGUFValueType.STRING:
                assert v == bytes(f.parts[f.data[0]]).decode(), f.name
            else:
                assert v == f.parts[f.data[0]][0].item(), f.name
        assert [(t.name, t.dims, t.type, g.data_offset + t.offset) for t in g.tensors] == \
            [(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type), t.data_offset)
             for t in r.tensors]


def test_reader_names_the_bad_length(bases, tmp_path):
    gg = Gguf(bases["llama"])
    off = gg.info.kv_offsets["general.name"]
    path = tmp_path / "bad.gguf"
    path.write_bytes(patch(gg.data, off, struct.pack("<Q", 9 * 10**18)))
    i = list(gg.info.kv).index("general.name")
    with pytest.raises(ModelLoadError, match=f"metadata key {i}: string length 9000000000000000000 "
                                             f"exceeds the file"):
        G.read_gguf(path)


def test_reader_skips_long_string_arrays(bases):
    g = G.read_gguf(bases["llama"], max_strings=10)
    assert g.kv["tokenizer.ggml.tokens"].values is None
    assert g.kv["tokenizer.ggml.tokens"].count == N_VOCAB
    g = G.read_gguf(bases["llama"], max_strings=10, keep_strings=("tokenizer.ggml.tokens",))
    assert len(g.kv["tokenizer.ggml.tokens"].values) == N_VOCAB


def test_ggml_type_sizes_match_the_pinned_gguf_py():
    """spec._runtime._gguf's ggml type table is the pinned llama.cpp's (gguf-py/gguf/constants.py; the
    installed gguf package may be another version: 0.19 has Q8_1 wrong)."""
    import importlib.util

    from spec import _build_info

    path = Path(_build_info.LLAMA_CPP_SRC) / "gguf-py" / "gguf" / "constants.py"
    if not path.exists():
        pytest.skip(f"{path} not found (is the llama.cpp source still in the cache?)")
    loader = importlib.util.spec_from_file_location("pinned_gguf_constants", path)
    constants = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(constants)
    sizes = {int(t): (t.name, *bs) for t, bs in constants.GGML_QUANT_SIZES.items()}
    assert sizes == G.GGML_TYPES


# -- paths -----------------------------------------------------------------------------------

def test_bytes_and_pathlike_paths(bases):
    from spec._runtime._core import Model

    path = bases["llama"]
    for p in (os.fsencode(path), pathlib.Path(path), pathlib.PurePath(path)):
        with Model(p) as m:
            assert m.path == str(path)
            assert m.n_vocab == N_VOCAB


def test_undecodable_bytes_path(bases, tmp_path):
    from spec._runtime._core import Model

    raw = os.fsencode(tmp_path) + b"/\xff-model.gguf"
    try:
        with open(raw, "wb") as f:
            f.write(bases["llama"].read_bytes())
    except (OSError, UnicodeError) as e:
        pytest.skip(f"the file system does not take a non-UTF-8 file name: {e}")
    with Model(raw) as m:
        assert os.fsencode(m.path) == raw
        assert len(m.tokenize("Hello")) > 0
    missing = os.fsencode(tmp_path) + b"/\xfe-missing.gguf"
    with pytest.raises(FileNotFoundError):
        Model(missing)


def test_empty_path():
    from spec._runtime._core import Model

    for p in ("", b""):
        with pytest.raises(FileNotFoundError, match="model path is empty"):
            Model(p)
    with pytest.raises(IsADirectoryError):
        Model(pathlib.Path(""))         # pathlib makes "" the current directory "."


def test_directory_path(tmp_path):
    from spec._runtime._core import Model

    with pytest.raises(IsADirectoryError, match="directory"):
        Model(tmp_path)


def test_not_a_path():
    from spec._runtime._core import Model

    for p in (None, 3, ["model.gguf"]):
        with pytest.raises(TypeError, match="model path must be"):
            Model(p)


def test_fifo_does_not_block(tmp_path):
    """open() on a FIFO blocks until a writer comes; the check must refuse it without opening."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-c", f"""
from spec._runtime._core import Model
from spec._runtime._errors import ModelLoadError
try:
    Model({str(fifo)!r})
except ModelLoadError as e:
    print("ModelLoadError", e)
"""], capture_output=True, text=True, timeout=60, env=_worker_env(), cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.startswith("ModelLoadError") and "not a regular file" in r.stdout, r.stdout


def test_unreadable_file(bases, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root, which reads any file: permissions cannot be tested")
    from spec._runtime._core import Model

    p = tmp_path / "locked.gguf"
    p.write_bytes(bases["llama"].read_bytes())
    p.chmod(0)
    with pytest.raises(PermissionError, match="not readable"):
        Model(p)
