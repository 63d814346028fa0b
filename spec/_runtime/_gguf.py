"""A small, bounds-checked reader of a GGUF file's header, metadata and tensor infos.

It never reads tensor data: the file is read forward in chunks up to the end of the tensor
infos (for a 250 MB model, a few MB of vocabulary). Every length and count is checked against
the bytes left in the file before anything is allocated or looped over, so a corrupt length
cannot make it allocate gigabytes or loop for long; any structural problem raises
:class:`~spec._runtime._errors.ModelLoadError` naming the path, the item and the offset.

Layout (GGUF v2/v3, little-endian; gguf-py and ``ggml/src/gguf.cpp``)::

    "GGUF" u32 version  u64 n_tensors  u64 n_kv
    n_kv x      { string key, u32 type, value }   value: scalar | string | u32 type, u64 n, items
    n_tensors x { string name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset }
    padding to general.alignment (default 32), then tensor data
    string = u64 length + bytes
"""
from __future__ import annotations

import os
import stat
import struct
import sys
from array import array
from dataclasses import dataclass, field

from spec._runtime._errors import ModelLoadError

# GGUF value types (gguf.h enum gguf_type).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = \
    range(13)
TYPE_NAMES = ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64",
              "i64", "f64")
# scalar struct formats and array typecodes, by value type (array codes of fixed size on every
# platform CPython supports: B b H h I i f d are 1/1/2/2/4/4/4/8 bytes, Q q are 8)
_SCALAR = {UINT8: struct.Struct("<B"), INT8: struct.Struct("<b"), UINT16: struct.Struct("<H"),
           INT16: struct.Struct("<h"), UINT32: struct.Struct("<I"), INT32: struct.Struct("<i"),
           FLOAT32: struct.Struct("<f"), BOOL: struct.Struct("<?"), UINT64: struct.Struct("<Q"),
           INT64: struct.Struct("<q"), FLOAT64: struct.Struct("<d")}
_TYPECODE = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i",
             FLOAT32: "f", BOOL: "B", UINT64: "Q", INT64: "q", FLOAT64: "d"}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_HEADER = struct.Struct("<4sIQQ")

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)             # gguf.cpp: 1 is no longer supported, > 3 is unknown
GGUF_DEFAULT_ALIGNMENT = 32
GGUF_MAX_STRING_LENGTH = 1 << 30   # gguf.cpp limits
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64

# ggml_type -> (block size in elements, bytes per block); the types gguf files may hold
# (gguf-py GGML_QUANT_SIZES of the pinned llama.cpp; removed types 4, 5, 31-33, 36-38 absent).
_QK_K = 256
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 4 + _QK_K // 16 + _QK_K // 4),
    11: ("Q3_K", 256, 2 + _QK_K // 4 + _QK_K // 8 + 12),
    12: ("Q4_K", 256, 4 + _QK_K // 2 + 12),
    13: ("Q5_K", 256, 4 + _QK_K // 2 + _QK_K // 8 + 12),
    14: ("Q6_K", 256, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16),
    15: ("Q8_K", 256, 4 + _QK_K + _QK_K // 8),
    16: ("IQ2_XXS", 256, 2 + _QK_K // 4), 17: ("IQ2_XS", 256, 2 + _QK_K // 4 + _QK_K // 32),
    18: ("IQ3_XXS", 256, 2 + _QK_K // 4 + _QK_K // 8),
    19: ("IQ1_S", 256, 2 + _QK_K // 8 + _QK_K // 16), 20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4),
    22: ("IQ2_S", 256, 2 + _QK_K // 4 + _QK_K // 16),
    23: ("IQ4_XS", 256, 4 + _QK_K // 2 + _QK_K // 64),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, _QK_K // 8 + _QK_K // 16 + _QK_K // 32), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 2 + 4 * 13), 35: ("TQ2_0", 256, 2 + 64), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}

_CHUNK = 1 << 20    # bytes read from the file at a time
# minimum encoded sizes, to bound counts before looping over them
_MIN_KV = 8 + 4 + 1             # empty key, type, 1-byte value
_MIN_TENSOR = 8 + 4 + 4 + 8     # empty name, n_dims = 0, type, offset


@dataclass
class GGUFArray:
    """An array metadata value. ``values`` is an ``array.array`` for numbers (bools as 0/1
    bytes), a list of raw ``bytes`` for strings, or None for a string array that was only
    walked over (see ``read_gguf``'s ``keep_strings``)."""
    type: int                 # element value type (UINT8 ... FLOAT64)
    count: int
    offset: int               # file offset of the first element
    values: object = None

    def __len__(self):
        return self.count


@dataclass
class TensorInfo:
    name: str
    dims: tuple               # ne[0], ne[1], ... (ggml order: ne[0] is the row length)
    type: int                 # ggml_type
    offset: int               # relative to the data section
    info_offset: int = 0      # file offset of this tensor info record

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.type]
        return self.n_elements // block * size


@dataclass
class GGUFFile:
    """What :func:`read_gguf` found. Keys and scalar strings are ``str`` (undecodable bytes
    kept as surrogate escapes); string-array items are raw ``bytes``."""
    path: str
    size: int                 # file size in bytes
    version: int
    n_tensors: int
    n_kv: int
    kv: dict = field(default_factory=dict)          # key -> int | float | bool | str | GGUFArray
    types: dict = field(default_factory=dict)       # key -> value type (ARRAY for arrays)
    kv_offsets: dict = field(default_factory=dict)  # key -> file offset of its record
    tensors: list = field(default_factory=list)     # TensorInfo, in file order
    alignment: int = GGUF_DEFAULT_ALIGNMENT
    kv_end: int = 0           # file offset where the metadata ends (and tensor infos start)
    infos_end: int = 0        # file offset where the tensor infos end (padding follows)
    data_offset: int = 0      # file offset of the tensor data section


class _Reader:
    """Forward reads from a file object with every read bounds-checked against the file size."""

    def __init__(self, f, path: str, size: int):
        self.f = f
        self.path = path
        self.size = size
        self.buf = b""
        self.base = 0     # file offset of buf[0]
        self.pos = 0      # file offset of the next read

    def fail(self, what: str):
        raise ModelLoadError(f"{self.path}: {what}")

    def need(self, n: int, what: str) -> int:
        """Make ``n`` bytes from ``pos`` available in ``buf``; return their index in ``buf``."""
        if n > self.size - self.pos:
            self.fail(f"{what}: needs {n} bytes at offset {self.pos} but the file ends at "
                      f"{self.size} (truncated or corrupt)")
        i = self.pos - self.base
        if i + n > len(self.buf):
            end = self.base + len(self.buf)
            want = min(max(self.pos + n - end, _CHUNK), self.size - end)
            chunk = self.f.read(want)
            if len(chunk) < want:
                self.fail(f"{what}: the file shrank while being read (offset {end})")
            self.buf = self.buf[i:] + chunk       # drop what was consumed
            self.base = self.pos
            i = 0
        return i

    def unpack(self, st: struct.Struct, what: str):
        i = self.need(st.size, what)
        self.pos += st.size
        return st.unpack_from(self.buf, i)[0]

    def take(self, n: int, what: str) -> bytes:
        i = self.need(n, what)
        self.pos += n
        return self.buf[i:i + n]

    def string(self, what: str) -> bytes:
        n = self.unpack(_U64, what + " length")
        if n > GGUF_MAX_STRING_LENGTH or n > self.size - self.pos:
            self.fail(f"{what}: string length {n} exceeds the file ({self.size - self.pos} "
                      f"bytes left at offset {self.pos})")
        return self.take(n, what)

    def strings(self, count: int, what: str, keep: bool):
        """``count`` strings as a list of bytes, or None after walking over them (``keep``
        false). The hot loop of a large vocabulary: it works on the buffer directly and only
        calls need() to refill it, where it also checks the string fits in the file."""
        u64 = _U64.unpack_from
        out = [] if keep else None
        append = out.append if keep else None
        buf, base = self.buf, self.base
        i, blen = self.pos - base, len(buf)
        for j in range(count):
            if i + 8 > blen:
                self.pos = base + i
                i = self.need(8, f"{what}: item {j}")
                buf, base, blen = self.buf, self.base, len(self.buf)
            n = u64(buf, i)[0]
            a = i + 8
            e = a + n
            if e > blen:
                self.pos = base + a
                if n > GGUF_MAX_STRING_LENGTH or n > self.size - self.pos:
                    self.fail(f"{what}: item {j}: string length {n} exceeds the file "
                              f"({self.size - self.pos} bytes left at offset {self.pos})")
                a = self.need(n, f"{what}: item {j}")
                buf, base, blen = self.buf, self.base, len(self.buf)
                e = a + n
            if keep:
                append(buf[a:e])
            i = e
        self.pos = base + i
        return out


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def read_gguf(path, *, keep_strings=(), max_strings: int = 4096) -> GGUFFile:
    """Read the header, metadata and tensor infos of the GGUF file at ``path``.

    String arrays are kept when their key is in ``keep_strings`` or they have at most
    ``max_strings`` items; longer ones are walked over (bounds-checked) and get ``values=None``.
    Raises ModelLoadError for anything structurally wrong, OSError when the file can't be opened.
    """
    path = os.fsdecode(os.fspath(path))
    # O_NONBLOCK: a path swapped for a FIFO after the caller's stat() must not block open()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{path}: not a regular file")
        return _read(_Reader(f, path, st.st_size), keep_strings, max_strings)


def _read(r: _Reader, keep_strings, max_strings) -> GGUFFile:
    if r.size == 0:
        r.fail("empty file (0 bytes): not a GGUF model")
    if r.size < _HEADER.size:
        head = r.take(min(r.size, 4), "magic")
        if head != GGUF_MAGIC[:len(head)]:
            r.fail(f"not a GGUF file (magic {head!r})")
        r.fail(f"GGUF header truncated: the file has {r.size} bytes, the header needs "
               f"{_HEADER.size}")
    magic, version, n_tensors, n_kv = _HEADER.unpack(r.take(_HEADER.size, "header"))
    if magic != GGUF_MAGIC:
        r.fail(f"not a GGUF file (magic {magic!r})")
    if version not in GGUF_VERSIONS:
        hint = " (byte-swapped: a big-endian file?)" if version and not version & 0xFFFF else ""
        r.fail(f"unsupported GGUF version {version}{hint}; llama.cpp reads versions 2 and 3")
    left = r.size - r.pos
    if n_kv * _MIN_KV > left:
        r.fail(f"header: metadata count {n_kv} cannot fit in the {left} bytes left")
    if n_tensors * _MIN_TENSOR > left:
        r.fail(f"header: tensor count {n_tensors} cannot fit in the {left} bytes left")
    g = GGUFFile(path=r.path, size=r.size, version=version, n_tensors=n_tensors, n_kv=n_kv)

    for i in range(n_kv):
        record = r.pos
        where = f"metadata key {i}"
        key = _decode(r.string(where))
        if not key:
            r.fail(f"{where}: empty key")
        if key in g.kv:
            r.fail(f"{where}: duplicate key {key!r}")
        where = f"metadata key {i} ({key!r})"
        g.kv_offsets[key] = record
        vtype = r.unpack(_U32, where + " type")
        if vtype == ARRAY:
            etype = r.unpack(_U32, where + " array type")
            count = r.unpack(_U64, where + " array count")
            left = r.size - r.pos
            if etype == STRING:
                if count > GGUF_MAX_ARRAY_ELEMENTS or count * 8 > left:
                    r.fail(f"{where}: array of {count} strings exceeds the file ({left} bytes "
                           f"left at offset {r.pos})")
                arr = GGUFArray(STRING, count, r.pos)
                arr.values = r.strings(count, where, key in keep_strings or count <= max_strings)
            elif etype in _SCALAR:
                width = _SCALAR[etype].size
                if count > GGUF_MAX_ARRAY_ELEMENTS or count * width > left:
                    r.fail(f"{where}: array of {count} {TYPE_NAMES[etype]} exceeds the file "
                           f"({left} bytes left at offset {r.pos})")
                arr = GGUFArray(etype, count, r.pos, array(_TYPECODE[etype]))
                arr.values.frombytes(r.take(count * width, where))
                if sys.byteorder == "big":
                    arr.values.byteswap()
            else:
                r.fail(f"{where}: invalid array element type {etype}")
            g.kv[key] = arr
            g.types[key] = ARRAY
        elif vtype == STRING:
            g.kv[key] = _decode(r.string(where))
            g.types[key] = STRING
        elif vtype in _SCALAR:
            g.kv[key] = r.unpack(_SCALAR[vtype], where)
            g.types[key] = vtype
        else:
            r.fail(f"{where}: invalid value type {vtype}")

    if "general.alignment" in g.kv:
        align = g.kv["general.alignment"]
        if g.types["general.alignment"] != UINT32:
            r.fail(f"general.alignment must be u32, is {_type_name(g, 'general.alignment')}")
        if align == 0 or align & (align - 1):
            r.fail(f"general.alignment {align} is not a power of 2")
        g.alignment = align

    g.kv_end = r.pos
    names = set()
    expected = 0      # gguf.cpp: tensor i starts where tensor i-1 ends, padded to the alignment
    for i in range(n_tensors):
        record = r.pos
        where = f"tensor info {i}"
        raw = r.string(where + " name")
        name = _decode(raw)
        if len(raw) >= GGML_MAX_NAME:
            r.fail(f"{where}: name of {len(raw)} bytes (ggml's limit is {GGML_MAX_NAME - 1})")
        if name in names:
            r.fail(f"{where}: duplicate tensor name {name!r}")
        names.add(name)
        where = f"tensor info {i} ({name!r})"
        n_dims = r.unpack(_U32, where + " n_dims")
        if n_dims > GGML_MAX_DIMS:
            r.fail(f"{where}: {n_dims} dimensions (ggml's limit is {GGML_MAX_DIMS})")
        dims = tuple(r.unpack(_I64, where + " shape") for _ in range(n_dims))
        if any(d < 0 for d in dims):
            r.fail(f"{where}: negative dimension in shape {dims}")
        ttype = r.unpack(_U32, where + " type")
        if ttype not in GGML_TYPES:
            r.fail(f"{where}: invalid ggml type {ttype}")
        offset = r.unpack(_U64, where + " data offset")
        t = TensorInfo(name, dims, ttype, offset, record)
        tname, block, _ = GGML_TYPES[ttype]
        row = dims[0] if dims else 1
        if row % block:
            r.fail(f"{where}: row of {row} elements is not a multiple of the {tname} block "
                   f"size {block}")
        if t.n_elements >= 1 << 63:
            r.fail(f"{where}: shape {dims} overflows")
        if offset != expected:
            r.fail(f"{where}: data offset {offset}, expected {expected}")
        expected += -(-t.n_bytes // g.alignment) * g.alignment
        g.tensors.append(t)

    g.infos_end = r.pos
    g.data_offset = -(-r.pos // g.alignment) * g.alignment if n_tensors else r.pos
    if g.data_offset > r.size:
        r.fail(f"tensor data section starts at offset {g.data_offset}, past the end of the "
               f"file ({r.size} bytes)")
    for t in g.tensors:
        end = g.data_offset + t.offset + t.n_bytes
        if end > r.size:
            r.fail(f"tensor {t.name!r}: data ends at offset {end}, past the end of the file "
                   f"({r.size} bytes): truncated")
    return g


def _type_name(g: GGUFFile, key: str) -> str:
    t = g.types[key]
    if t == ARRAY:
        return f"array of {TYPE_NAMES[g.kv[key].type]}"
    return TYPE_NAMES[t]
