"""Checks on a model file before llama.cpp opens it.

llama.cpp aborts the process (GGML_ASSERT, GGML_ABORT, an integer division by zero, an uncaught
C++ exception) on some inputs rather than returning an error, and ``open()`` blocks forever on
a FIFO; so :func:`check_model_file` rejects what it can name here, with the exception a Python
user expects. It reads the GGUF header and metadata with :mod:`spec._runtime._gguf` (never tensor data)
and checks the values llama.cpp asserts on at load, first tokenize or first decode; what
llama.cpp itself rejects cleanly (it returns NULL and spec raises ModelLoadError) is left to it.
docs/model-file-checks.md lists the asserts and which of them are checked here.
"""
from __future__ import annotations

import math
import os
import stat

from spec._runtime._errors import ModelLoadError
from spec._runtime._gguf import (ARRAY, BOOL, FLOAT32, FLOAT64, GGML_TYPES, STRING, GGUFFile,
                        read_gguf)

# src/llama-hparams.h
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
# src/llama-model.cpp LLAMA_ROPE_SCALING_TYPES (anything else: GGML_ASSERT at load)
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
# the architectures spec runs: attention models whose graphs rotate every head by n_rot
# dimensions, with float or quantized weights and F32 vectors
SUPPORTED_ARCHS = ("llama", "gemma3", "qwen35", "qwen35moe", "eagle3", "dflash")
# gated-delta-net hybrids: load_arch_hparams computes (i + 1) % full_attention_interval; the
# graph takes head_v_dim = ssm.inner_size / ssm.time_step_rank, the tensors ssm.state_size
GDN_ARCHS = ("qwen35", "qwen35moe", "qwen3next")
# architectures using multi-section (M-)RoPE: ggml asserts on the sections at first decode
MROPE_ARCHS = ("qwen35", "qwen35moe")

# llama-vocab.cpp load(): tokenizer model -> vocabulary type, default special ids (bos, eos,
# sep; None = LLAMA_TOKEN_NULL) and default add_bos / add_eos / add_sep
_VOCAB = {
    "llama": ("SPM", (1, 2, None), (True, False, False)),
    "bert": ("WPM", (101, None, 102), (True, False, True)),
    "gpt2": ("BPE", (11, 11, None), (False, False, False)),
    "hybriddna": ("BPE", (11, 11, None), (False, False, False)),
    "whitespace": ("BPE", (11, 11, None), (False, False, False)),
    "gemma4": ("BPE", (None, None, None), (True, False, False)),
    "t5": ("UGM", (None, 1, None), (False, True, False)),
    "rwkv": ("RWKV", (None, None, None), (False, False, False)),
    "plamo2": ("PLAMO2", (1, 2, None), (False, False, False)),
    "test": ("TEST", (None, None, None), (False, False, False)),
}
_NO_VOCAB = ("none", "no_vocab")
# BPE pre-tokenizers that turn add_bos on, or clear the default BOS id, or turn add_sep on
_PRE_ADD_BOS = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                "lfm2", "jina-v5-nano", "tekken", "chameleon", "gemma4")
_PRE_NO_BOS = ("chatglm-bpe", "glm4", "glm5")
_PRE_ADD_SEP = ("jina-v1-en", "jina-v2-code", "roberta-bpe")
_TOKEN_TYPE_BYTE = 6          # llama_token_type LLAMA_TOKEN_TYPE_BYTE
# ggml types the CPU backend multiplies matrices in (type_traits_cpu[].vec_dot set): all but
# the intermediate Q8_1 / Q8_K and the integer and F64 types
F32_TYPE = 0
MATMUL_TYPES = frozenset(GGML_TYPES) - {9, 15, 24, 25, 26, 27, 28}


def check_model_file(path) -> str:
    """``path`` (str, bytes or os.PathLike) as a str naming a readable regular GGUF file whose
    metadata llama.cpp can load without aborting the process.

    Raises TypeError for a non-path, FileNotFoundError, IsADirectoryError, PermissionError,
    and ModelLoadError for a file that is not a regular file, not GGUF, structurally corrupt
    (a length or count past the end of the file...) or holding metadata llama.cpp asserts on.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"model path must be str, bytes or os.PathLike, got "
                        f"{type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise FileNotFoundError("model path is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path}") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the model file: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"model path is a directory: {path}")
    if not stat.S_ISREG(st.st_mode):
        # a FIFO or device would block or stream forever in open()/read()
        raise ModelLoadError(f"{path}: not a regular file")
    try:
        info = read_gguf(path, keep_strings=("tokenizer.ggml.tokens",))
    except PermissionError:
        raise PermissionError(f"model file is not readable: {path}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path}") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the model file: {e.strerror or e}") from None
    problems = metadata_problems(info)
    if problems:
        raise ModelLoadError(f"{path}: llama.cpp would crash on this model: "
                             + "; ".join(problems))
    return path


def metadata_problems(g: GGUFFile) -> list:
    """The metadata values of ``g`` that make llama.cpp abort (at load, first tokenize or first
    decode) instead of failing cleanly, as messages; empty when there are none."""
    out = []
    arch = g.kv.get("general.architecture")
    if isinstance(arch, str) and arch:
        _check_hparams(g, arch, out)
    _check_vocab(g, out)
    ftype = _int(g, "general.file_type")
    if ftype is not None and not 0 <= ftype < 2048:
        # llama-model-loader.cpp stores it in an enum llama_ftype, whose values fit in 11 bits:
        # anything else is undefined behaviour (UBSan: "not a valid value for type 'llama_ftype'")
        out.append(f"general.file_type = {ftype} is not a llama.cpp file type (0 to 2047)")
    return out


def borrowed_tensors(path) -> tuple:
    """What the draft model at ``path`` takes from the target model of its context's
    ``ctx_other`` (llama-context.cpp:156): ("token_embd",) and / or ("output",), or ().

    An EAGLE-3 or DFlash draft without ``token_embd`` embeds with the target's; one without an
    ``output`` head projects with the target's (a DFlash draft falls back to its own
    token_embd first: src/models/dflash.cpp, load_arch_tensors).
    """
    g = read_gguf(path, max_strings=0)
    arch = g.kv.get("general.architecture")
    if arch not in ("eagle3", "dflash"):
        return ()
    names = {t.name for t in g.tensors}
    out = []
    if "token_embd.weight" not in names:
        out.append("token_embd")
    if "output.weight" not in names and (arch == "eagle3" or "token_embd.weight" not in names):
        out.append("output")
    return tuple(out)


# -- value access --------------------------------------------------------------------------------

def _int(g, key):
    """An integer scalar value (not bool), or None when absent or of another type."""
    if g.types.get(key) in (ARRAY, STRING, BOOL, FLOAT32, FLOAT64, None):
        return None
    return g.kv[key]


def _ints(g, key):
    """An integer scalar as a 1-list, an integer array as a list, else None."""
    v = _int(g, key)
    if v is not None:
        return [v]
    arr = g.kv.get(key)
    if g.types.get(key) == ARRAY and arr.type not in (STRING, FLOAT32, FLOAT64):
        return list(arr.values)
    return None


def _float(g, key):
    if g.types.get(key) in (FLOAT32, FLOAT64):
        return g.kv[key]
    return None


def _str(g, key):
    return g.kv[key] if g.types.get(key) == STRING else None


def _bool(g, key):
    return g.kv[key] if g.types.get(key) == BOOL else None


# -- hyperparameters (llama_model_base::load_hparams, load_arch_hparams, graph asserts) ---------

def _check_hparams(g, arch, out):
    p = arch + "."
    n_layer = _int(g, p + "block_count")
    if n_layer is not None and not 0 < n_layer <= LLAMA_MAX_LAYERS:
        out.append(f"{p}block_count is {n_layer}, must be in [1, {LLAMA_MAX_LAYERS}]")
        n_layer = None
    n_nextn = _int(g, p + "nextn_predict_layers")
    if n_nextn is not None and n_layer is not None and n_nextn > n_layer:
        out.append(f"{p}nextn_predict_layers is {n_nextn}, more than {p}block_count ({n_layer})")

    _check_experts(g, p, out)

    scaling = _str(g, p + "rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        out.append(f"{p}rope.scaling.type is {scaling!r}, must be one of "
                   f"{', '.join(ROPE_SCALING_TYPES)}")

    # ggml's norm / rms_norm / l2_norm kernels assert eps >= 0 at the first decode
    for key in (p + "attention.layer_norm_epsilon", p + "attention.layer_norm_rms_epsilon"):
        eps = _float(g, key)
        if eps is not None and not (math.isfinite(eps) and eps >= 0):
            out.append(f"{key} is {eps}, must be finite and >= 0")

    if arch in GDN_ARCHS:
        _check_gated_delta_net(g, p, out)

    if arch in SUPPORTED_ARCHS:
        _check_heads_and_rope(g, arch, p, out)
        _check_tensor_types(g, arch, out)

    # EAGLE-3 / DFlash drafts name the target layers they read; llama.cpp asserts each is in
    # [0, target n_layer] when the session starts (the upper bound needs the target model)
    layers = _ints(g, p + "target_layers")
    if layers is not None and any(not 0 <= x <= LLAMA_MAX_LAYERS for x in layers):
        out.append(f"{p}target_layers is {layers}: layer ids must be in [0, {LLAMA_MAX_LAYERS}]")


def _check_experts(g, p, out):
    n_expert = _int(g, p + "expert_count") or 0
    used = _ints(g, p + "expert_used_count") or [0]
    used_max = max(used, default=0)
    n_groups = _int(g, p + "expert_group_count") or 0
    n_group_used = _int(g, p + "expert_group_used_count") or 0
    if n_expert > LLAMA_MAX_EXPERTS:
        out.append(f"{p}expert_count is {n_expert}, above llama.cpp's limit {LLAMA_MAX_EXPERTS}")
    elif used_max > n_expert:
        out.append(f"{p}expert_used_count is {used_max}, more than {p}expert_count ({n_expert})")
    elif n_expert > 0:
        if used_max == 0:
            out.append(f"{p}expert_used_count is 0 with {n_expert} experts")
        elif n_groups >= n_expert:
            out.append(f"{p}expert_group_count is {n_groups}, must be below {p}expert_count "
                       f"({n_expert})")
        elif n_groups > 1 and (n_expert % n_groups or not 0 < n_group_used < n_groups):
            out.append(f"{p}expert_group_count {n_groups} / expert_group_used_count "
                       f"{n_group_used} do not divide {n_expert} experts into groups")
    elif n_groups:
        out.append(f"{p}expert_group_count is {n_groups} without experts")


def _check_gated_delta_net(g, p, out):
    if p + "attention.recurrent_layers" not in g.kv:
        interval = _int(g, p + "full_attention_interval")
        if interval == 0:       # (i + 1) % 0: SIGFPE at load
            out.append(f"{p}full_attention_interval is 0, must be > 0")
    d_inner = _int(g, p + "ssm.inner_size")
    d_state = _int(g, p + "ssm.state_size")
    n_v_heads = _int(g, p + "ssm.time_step_rank")
    n_k_heads = _int(g, p + "ssm.group_count")
    if n_v_heads == 0 or n_k_heads == 0:
        out.append(f"{p}ssm.time_step_rank ({n_v_heads}) and ssm.group_count ({n_k_heads}) "
                   f"must be > 0")
    elif n_v_heads is not None and n_k_heads is not None and n_v_heads % n_k_heads:
        # GGML_ASSERT(num_v_heads % num_k_heads == 0) building the graph
        out.append(f"{p}ssm.time_step_rank ({n_v_heads}) is not a multiple of ssm.group_count "
                   f"({n_k_heads})")
    elif None not in (d_inner, d_state, n_v_heads) and d_inner != d_state * n_v_heads:
        # the graph's reshapes assert (or allocate without bound) when the two disagree
        out.append(f"{p}ssm.inner_size is {d_inner}, must be ssm.state_size x "
                   f"ssm.time_step_rank = {d_state * n_v_heads}")


def _check_tensor_types(g, arch, out):
    """The CPU backend has no matrix product for Q8_1 / Q8_K / integer weights (a NULL vec_dot:
    SIGSEGV at the first decode) and no f32 x f16 element-wise product for a vector (norms,
    biases: GGML_ABORT); converters and llama-quantize keep vectors in F32."""
    for t in g.tensors:
        name = GGML_TYPES[t.type][0]
        if t.type not in MATMUL_TYPES:
            out.append(f"tensor {t.name!r} has type {name}, which llama.cpp cannot compute with")
            return
        vector = sum(1 for d in t.dims if d != 1) <= 1
        if (vector or (arch in GDN_ARCHS and ".ssm_conv1d." in t.name)) and t.type != F32_TYPE:
            out.append(f"tensor {t.name!r} has type {name}; llama.cpp needs it in F32")
            return


def _check_heads_and_rope(g, arch, p, out):
    heads = _ints(g, p + "attention.head_count")
    heads_kv = _ints(g, p + "attention.head_count_kv")
    if heads is not None and heads and heads[0] == 0:
        # gemma3 divides n_embd by it at load (SIGFPE); the others have no attention at all
        out.append(f"{p}attention.head_count is 0")
        return
    if heads and heads_kv and len(heads) in (1, len(heads_kv)) and len(heads_kv) in (1, len(heads)):
        n = max(len(heads), len(heads_kv))
        for il in range(n):
            h = heads[il if len(heads) > 1 else 0]
            hkv = heads_kv[il if len(heads_kv) > 1 else 0]
            if hkv and h % hkv:     # grouped-query attention broadcast: ggml_mul_mat asserts
                out.append(f"{p}attention.head_count ({h}) is not a multiple of "
                           f"attention.head_count_kv ({hkv}) (layer {il})")
                break
    n_embd = _int(g, p + "embedding_length")
    head_k = _int(g, p + "attention.key_length")
    if head_k is None and n_embd is not None and heads:
        head_k = n_embd // heads[0]
    n_rot = _int(g, p + "rope.dimension_count")
    if n_rot is None:
        n_rot = head_k
    # ggml_rope asserts n_dims % 2 == 0 and n_dims <= head size at the first decode (and
    # n_dims == 0 never finishes it)
    if n_rot is not None and head_k is not None and (n_rot % 2 or not 0 < n_rot <= head_k):
        out.append(f"{p}rope.dimension_count is {n_rot}, must be even, > 0 and at most the "
                   f"head size {head_k}")
    n_rot_swa = _int(g, p + "rope.dimension_count_swa")
    head_k_swa = _int(g, p + "attention.key_length_swa")
    if head_k_swa is None:
        head_k_swa = head_k
    if (n_rot_swa is not None and head_k_swa is not None
            and (n_rot_swa % 2 or not 0 < n_rot_swa <= head_k_swa)):
        out.append(f"{p}rope.dimension_count_swa is {n_rot_swa}, must be even, > 0 and at "
                   f"most the head size {head_k_swa}")
    if arch in MROPE_ARCHS:
        sections = _ints(g, p + "rope.dimension_sections")
        if sections is not None and len(sections) in (1, 4):
            s = sections * 4 if len(sections) == 1 else sections
            if any(x < 0 for x in s) or sum(s[:3]) <= 0 or (head_k is not None and sum(s) > head_k):
                out.append(f"{p}rope.dimension_sections is {s}: needs entries >= 0, a non-zero "
                           f"first three and a sum of at most the head size {head_k}")


# -- vocabulary (llama_vocab::impl::load, tokenize) ----------------------------------------------

def _check_vocab(g, out):
    model = _str(g, "tokenizer.ggml.model")
    if model is None:
        return                  # missing or mistyped: llama.cpp throws
    if model in _NO_VOCAB:
        # load() returns early with no tokenizer: the first tokenize or token_to_piece asserts
        out.append(f"tokenizer.ggml.model is {model!r}: the model has no vocabulary to "
                   f"tokenize with")
        return
    if model not in _VOCAB:
        return                  # llama.cpp throws "unknown tokenizer"
    kind, special, add = _VOCAB[model]
    arr = g.kv.get("tokenizer.ggml.tokens")
    if g.types.get("tokenizer.ggml.tokens") != ARRAY or arr.type != STRING:
        return                  # llama.cpp throws
    tokens = arr.values
    n_tokens = arr.count
    if n_tokens == 0:
        out.append("tokenizer.ggml.tokens is empty")
        return
    # load() replaces an empty token by "[EMPTY_<id>]", then asserts every text is unique
    seen = set(tokens)
    if len(seen) != n_tokens or b"" in seen:
        first = {}
        for i, t in enumerate(tokens):
            t = t or b"[EMPTY_%d]" % i
            j = first.setdefault(t, i)
            if j != i:
                out.append(f"tokenizer.ggml.tokens has token {t!r} twice (ids {j} and {i})")
                break
        seen = set(first)
    types = g.kv.get("tokenizer.ggml.token_type")
    has_types = g.types.get("tokenizer.ggml.token_type") == ARRAY and types.count >= n_tokens
    if kind == "WPM" and has_types and _TOKEN_TYPE_BYTE in types.values[:n_tokens]:
        # the token-to-piece cache built at load calls token_to_byte: GGML_ABORT for WPM
        i = list(types.values[:n_tokens]).index(_TOKEN_TYPE_BYTE)
        out.append(f"tokenizer.ggml.model is 'bert' (WordPiece) but token {i} is a byte token: "
                   f"the tokenizer does not match the vocabulary")
    if kind == "SPM":
        _check_byte_fallback(tokens, seen, out)
    _check_special_tokens(g, model, kind, special, add, n_tokens, out)


def _check_byte_fallback(tokens, seen, out):
    """SPM tokenize maps a character missing from the vocabulary to byte tokens "<0xXX>" (or the
    one-byte token) with std::unordered_map::at: an uncaught exception, so the process ends."""
    missing = [b for b in range(256)
               if b"<0x%02X>" % b not in seen and (b == 0 or bytes((b,)) not in seen)]
    if missing:
        out.append(f"tokenizer.ggml.model is 'llama' (SentencePiece) but the vocabulary lacks "
                   f"the byte tokens for {len(missing)} byte values (e.g. <0x{missing[0]:02X}>): "
                   f"llama.cpp ends the process tokenizing a character outside the vocabulary")


def _check_special_tokens(g, model, kind, special, add, n_tokens, out):
    """tokenize(add_special=True) asserts the BOS / EOS / SEP token it adds exists."""
    bos, eos, sep = special
    add_bos, add_eos, add_sep = add
    pre = _str(g, "tokenizer.ggml.pre") or ""
    if kind == "BPE" and model != "gemma4":
        add_bos = add_bos or pre in _PRE_ADD_BOS
        add_sep = add_sep or pre in _PRE_ADD_SEP
        if pre in _PRE_NO_BOS:
            bos = None
    ids = {}
    for name, default in (("bos", bos), ("eos", eos), ("sep", sep)):
        if default is not None and default >= n_tokens:
            default = None          # "default special token out of vocab range, disabling"
        new = _int(g, f"tokenizer.ggml.{name}_token_id")
        ids[name] = new if new is not None and 0 <= new < n_tokens else default
    for name in ("bos", "eos", "sep"):
        flag = _bool(g, f"tokenizer.ggml.add_{name}_token")
        if flag is not None:
            if name == "bos":
                add_bos = flag
            elif name == "eos":
                add_eos = flag
            else:
                add_sep = flag
    if model == "gemma4" or (kind == "BPE" and pre == "gemma4"):
        add_bos = True              # llama.cpp forces it for Gemma 4
    needed = []
    if kind in ("SPM", "UGM", "BPE"):
        needed = [n for n, on in (("bos", add_bos), ("eos", add_eos)) if on]
    elif kind == "WPM":
        needed = ["bos", "sep"]     # WordPiece adds [CLS] ... [SEP] whatever the flags say
    for name in needed:
        if ids[name] is None:
            out.append(f"the tokenizer adds a {name.upper()} token but has none "
                       f"(tokenizer.ggml.{name}_token_id missing or outside the "
                       f"{n_tokens}-token vocabulary)")

