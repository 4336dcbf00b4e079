"""A bounded check of a GGUF header, run before any GGUF parser sees the file.

``gguf.GGUFReader`` and llama.cpp trust the counts and lengths a GGUF header declares: a 174-byte
file that declares an array of 2**40 items, a string of 2**60 bytes or 2**50 tensors makes them
allocate memory until the process is killed. :func:`check_header` walks the header with plain
``struct`` and file reads, checks every declared count and length against the bytes left in the
file *before* reading or looping over it, and raises a one-line error for a damaged file. Strings
are read in chunks of at most 256 KB and must be UTF-8 (gguf-py decodes them only later, raising
UnicodeDecodeError); arrays of numbers are skipped with ``seek``. A model's large vocabulary is
checked in a fraction of a second, and the tensor data is never read: the file's size is checked
against where the last tensor's data ends (from each tensor's offset, shape and ggml type), so a
model cut short by an interrupted download is refused before llama.cpp maps it.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, uint32 version, uint64 n_tensors, uint64 n_kv,
n_kv key/value pairs, n_tensors tensor infos. See ggml's ``docs/gguf.md``.
"""

from __future__ import annotations

import codecs
import math
import os
import struct

from .errors import ModelFileError, VectorFormatError

STRING, ARRAY = 8, 9
# Byte size of each fixed-size value type: UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL,
# (STRING, ARRAY), UINT64, INT64, FLOAT64.
FIXED_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
MIN_KV = 8 + 4 + 1               # empty key, value type, a one-byte value
MIN_TENSOR = 8 + 4 + 8 + 4 + 8   # empty name, n_dims, one dim, ggml type, offset
MAX_KEY = 65535                  # the GGUF spec's limit on a key's length
MAX_DEPTH = 8                    # arrays of arrays nested deeper than this are refused
MAX_DIMS = 4                     # GGML_MAX_DIMS
CHUNK = 1 << 18                  # strings are read and checked this many bytes at a time


class _Damaged(Exception):
    """What is wrong with the file; turned into the caller's one-line error."""


class _Incomplete(_Damaged):
    """The header is whole but the tensor data it describes is cut short."""


def tensor_bytes(ggml_type: int, n_elements: int) -> int | None:
    """Bytes of a tensor's data, or None for a ggml type gguf-py does not know."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None
    return -(-n_elements // block) * size


class _Header:
    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def left(self) -> int:
        return self.size - self.f.tell()

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise _Damaged(f"it is truncated: it ends inside {what} at byte {self.size}")
        return data

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str, keep: int = 0) -> bytes | None:
        """Check that a string is UTF-8; return it if it is at most ``keep`` bytes long."""
        n = self.unpack("Q", f"the length of {what}")
        if n > self.left():
            raise _Damaged(f"it declares {what} of {n} bytes but has {self.left()} bytes left")
        try:
            if n <= CHUNK:  # nearly every string; keep is always smaller
                data = self.read(n, what)
                data.decode("utf-8")
                return data if n <= keep else None
            decoder = codecs.getincrementaldecoder("utf-8")()
            for start in range(0, n, CHUNK):
                decoder.decode(self.read(min(CHUNK, n - start), what), final=start + CHUNK >= n)
        except UnicodeDecodeError:
            raise _Damaged(f"{what} is not valid UTF-8") from None
        return None

    def value(self, vtype: int, key: str, depth: int = 0) -> None:
        """Skip one value of type ``vtype``; every count is checked before it is looped over."""
        if vtype in FIXED_SIZE:
            self.read(FIXED_SIZE[vtype], f"the value of key {key}")
        elif vtype == STRING:
            self.string(f"a string (key {key})")
        elif vtype == ARRAY:
            if depth >= MAX_DEPTH:
                raise _Damaged(f"key {key} nests arrays more than {MAX_DEPTH} deep")
            itype = self.unpack("I", f"the array type of key {key}")
            count = self.unpack("Q", f"the array length of key {key}")
            # The least room each item takes: its size, a string's length, an array's header.
            least = FIXED_SIZE.get(itype, {STRING: 8, ARRAY: 12}.get(itype))
            if least is None:
                raise _Damaged(f"key {key} is an array of unknown type {itype}")
            if count * least > self.left():
                raise _Damaged(f"it declares an array of {count} items in key {key} but has "
                               f"{self.left()} bytes left")
            if itype in FIXED_SIZE:
                self.f.seek(count * least, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.value(itype, key, depth + 1)
        else:
            raise _Damaged(f"key {key} has unknown value type {vtype}")


def check_header(path, *, what: str = "GGUF file") -> dict:
    """Check a GGUF file's header against its size; return a summary of it.

    Returns ``{"version", "n_tensors", "n_kv", "architecture"}`` (``architecture`` is
    ``general.architecture`` when it is a string, else None). ``what`` says what the file is meant
    to be: a one-line VectorFormatError is raised when it starts with "control vector", else a
    one-line ModelFileError.
    """
    vector = what.startswith("control vector")
    error = VectorFormatError if vector else ModelFileError
    try:
        with open(path, "rb") as f:
            return _check(_Header(f, os.fstat(f.fileno()).st_size))
    except _Incomplete as exc:
        fix = "export it again" if vector else "download it again or give a complete .gguf file"
        raise damaged(error(f"{path} is not a complete GGUF "
                            f"{'control vector' if vector else 'model'} ({exc}); {fix}"), exc)
    except _Damaged as exc:
        raise damaged(error(f"{path} is a damaged GGUF file: {exc}; re-export or re-download it"),
                      exc)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}; check the path and its "
                    f"permissions") from None


def damaged(error: Exception, reason: _Damaged) -> Exception:
    """``error`` with ``.reason``, what is wrong in a few words (for callers that say more)."""
    error.reason = str(reason)
    error.__suppress_context__ = True
    return error


def _check(h: _Header) -> dict:
    if h.read(4, "the magic") != b"GGUF":
        raise _Damaged("it does not start with 'GGUF'")
    version = h.unpack("I", "the version")
    if version not in (2, 3):
        hint = " (a big-endian file)" if version in (2 << 24, 3 << 24) else ""
        raise _Damaged(f"it is GGUF version {version}{hint}; edgeemo reads little-endian "
                       f"versions 2 and 3")
    n_tensors = h.unpack("Q", "the tensor count")
    n_kv = h.unpack("Q", "the key count")
    if n_kv > h.left() // MIN_KV:
        raise _Damaged(f"it declares {n_kv} keys but has {h.left()} bytes left")
    if n_tensors > h.left() // MIN_TENSOR:
        raise _Damaged(f"it declares {n_tensors} tensors but has {h.left()} bytes left")

    architecture = None
    alignment = 32                 # GGUF's default
    for _ in range(n_kv):
        raw = h.string("a key", keep=MAX_KEY)
        if raw is None:
            raise _Damaged(f"it declares a key longer than {MAX_KEY} bytes")
        key = repr(raw[:80].decode("utf-8", errors="replace"))  # for messages; may cut a char
        vtype = h.unpack("I", f"the value type of key {key}")
        if raw == b"general.architecture" and vtype == STRING:
            value = h.string(f"the value of key {key}", keep=MAX_KEY)
            architecture = None if value is None else value.decode("utf-8")
        elif raw == b"general.alignment" and vtype == 4:  # UINT32; GGUFReader divides by it
            alignment = h.unpack("I", f"the value of key {key}")
            if alignment == 0 or alignment & (alignment - 1):
                raise _Damaged(f"its general.alignment is {alignment}, not a power of 2")
        else:
            h.value(vtype, key)

    data_end = 0                   # where the last tensor's data ends, from the data start
    for i in range(n_tensors):
        h.string(f"the name of tensor {i}")
        n_dims = h.unpack("I", f"the dimension count of tensor {i}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Damaged(f"tensor {i} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims = [h.unpack("Q", f"the shape of tensor {i}") for _ in range(n_dims)]
        n_elements = math.prod(dims)
        # Every ggml type takes at least one bit per element.
        if max(dims) > 8 * h.size or n_elements > 8 * h.size:
            raise _Damaged(f"tensor {i} declares shape {dims}, more elements than a file of "
                           f"{h.size} bytes can hold")
        ggml_type = h.unpack("I", f"the type of tensor {i}")
        offset = h.unpack("Q", f"the offset of tensor {i}")
        nbytes = tensor_bytes(ggml_type, n_elements)
        if nbytes is not None:     # a type newer than gguf-py: llama.cpp judges it
            data_end = max(data_end, offset + nbytes)
    data_start = -(-h.f.tell() // alignment) * alignment
    if n_tensors and data_start + data_end > h.size:
        raise _Incomplete(f"it is truncated: its tensor data ends at byte {data_start + data_end} "
                          f"but the file has {h.size} bytes")
    return {"version": version, "n_tensors": n_tensors, "n_kv": n_kv, "architecture": architecture}
