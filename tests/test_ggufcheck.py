"""The bounded GGUF header check: a damaged file gets one clear line, never a memory blow-up.

Damaged files are made from a valid control vector: truncated, with random bytes written over its
header, or with a huge count or length patched in. Every case must end in either a returned summary
or a one-line VectorFormatError/ModelFileError, and ``ControlVector.from_gguf`` and
``models.check_gguf`` must likewise raise only their own error or succeed.
"""

from __future__ import annotations

import itertools
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeemo import models
from edgeemo.errors import ModelFileError, VectorFormatError
from edgeemo.ggufcheck import check_header
from edgeemo.vectors import ControlVector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".test-store" / "models" / "smollm2-135m-instruct.gguf"
HUGE = [2**40, 2**50, 2**60, 2**64 - 1]

# database=None: no .hypothesis/ directory in the work tree. The deadline catches a check that
# loops far longer than its file size allows.
FUZZ = settings(max_examples=200, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# --- building files -------------------------------------------------------------------------------

def valid_vector() -> bytes:
    """A control vector with a string, an array of ints, of floats and of strings, two tensors."""
    vector = ControlVector("llama", 8, {1: np.ones(8, np.float32), 3: np.full(8, 0.5, np.float32)},
                           {"emotion": "afraid", "layers": [1, 3], "norms": [1.5, 2.5],
                            "words": ["fear", "dread"]})
    with tempfile.TemporaryDirectory() as tmp:
        return vector.to_gguf(Path(tmp) / "valid.gguf").read_bytes()


def layout(data: bytes) -> tuple[list[int], list[int], int]:
    """Offsets of the uint64 counts (n_tensors, n_kv, array counts, tensor dims) and string lengths
    in a valid GGUF, and where its tensor infos end. Trusts the file: for test inputs only."""
    counts, lengths, pos = [8, 16], [], 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string():
        nonlocal pos
        lengths.append(pos)
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(vtype):
        nonlocal pos
        if vtype == 8:
            string()
        elif vtype == 9:
            itype, count = struct.unpack_from("<IQ", data, pos)
            counts.append(pos + 4)
            pos += 12
            for _ in range(count):
                value(itype)
        else:
            pos += sizes[vtype]

    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    for _ in range(n_kv):
        string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        value(vtype)
    for _ in range(n_tensors):
        string()
        (n_dims,) = struct.unpack_from("<I", data, pos)
        counts.extend(pos + 4 + 8 * d for d in range(n_dims))
        pos += 4 + 8 * n_dims + 4 + 8
    return counts, lengths, pos


def gguf_bytes(*kvs: bytes, n_tensors=0, n_kv=None, tail=b"") -> bytes:
    """A version 3 GGUF with these key/value records; ``n_kv`` defaults to their number."""
    n_kv = len(kvs) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + b"".join(kvs) + tail


def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def huge_array_file() -> bytes:
    """174 bytes that declare general.architecture as an array of 2**40 UINT8 items."""
    data = gguf_bytes(kv(b"general.architecture", 9, struct.pack("<IQ", 0, 2**40)))
    return data + bytes(174 - len(data))


HAND_MADE = {
    "array of 2**40 items": (huge_array_file(), "an array of 1099511627776 items"),
    "string of 2**60 bytes": (gguf_bytes(kv(b"general.name", 8, struct.pack("<Q", 2**60)),
                                         tail=bytes(40)),
                              "a string (key 'general.name') of 1152921504606846976 bytes"),
    "2**50 tensors": (gguf_bytes(n_tensors=2**50, tail=bytes(100)), "1125899906842624 tensors"),
    "2**64-1 keys": (gguf_bytes(n_kv=2**64 - 1, tail=bytes(100)), "18446744073709551615 keys"),
    "key of 2**60 bytes": (gguf_bytes(n_kv=1, tail=struct.pack("<Q", 2**60) + bytes(50)),
                           "a key of 1152921504606846976 bytes"),
}


VALID = valid_vector()
COUNTS, LENGTHS, HEADER_END = layout(VALID)
_names = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Module-scoped, as hypothesis runs many examples in one call of a test."""
    return tmp_path_factory.mktemp("damaged")


def assert_one_line(exc: Exception, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message


def assert_handled(workdir: Path, data: bytes) -> None:
    """The contract for any file: a summary or our one-line error, from every entry point."""
    path = workdir / f"damaged-{next(_names)}.gguf"
    path.write_bytes(data)
    try:
        info = check_header(path, what=f"control vector {path}")
    except VectorFormatError as exc:
        assert_one_line(exc, path)
        info = None
    else:
        assert set(info) == {"version", "n_tensors", "n_kv", "architecture"}
    try:
        ControlVector.from_gguf(path)
    except VectorFormatError:
        pass
    else:
        assert info is not None
    try:
        models.check_gguf(path)
    except ModelFileError as exc:
        assert_one_line(exc, path)
    path.unlink()


# --- fuzzing --------------------------------------------------------------------------------------

@FUZZ
@given(st.data())
def test_truncated_files(workdir, data):
    assert_handled(workdir, VALID[:data.draw(st.integers(0, len(VALID) - 1))])


@FUZZ
@given(st.data(), st.binary(min_size=1, max_size=8))
def test_overwritten_header_bytes(workdir, data, junk):
    at = data.draw(st.integers(0, HEADER_END - 1))
    assert_handled(workdir, VALID[:at] + junk + VALID[at + len(junk):])


@FUZZ
@given(st.data(), st.sampled_from(HUGE) | st.integers(0, 2**64 - 1))
def test_huge_counts_and_lengths(workdir, data, value):
    at = data.draw(st.sampled_from(COUNTS + LENGTHS))
    assert_handled(workdir, VALID[:at] + struct.pack("<Q", value) + VALID[at + 8:])


def test_the_layout_covers_the_fields():
    """The fuzzing reaches every count and length of the valid vector's header."""
    assert COUNTS[:2] == [8, 16] and len(COUNTS) == 2 + 3 + 2  # + 3 arrays + 2 tensors' one dim
    # 7 keys, 3 string values (architecture, model_hint, emotion), 2 words, 2 tensor names
    assert len(LENGTHS) == 7 + 3 + 2 + 2 and HEADER_END < len(VALID)


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("field", ["n_tensors", "n_kv", "string length", "array count"])
def test_each_huge_field_is_named(tmp_path, field, value):
    at = {"n_tensors": 8, "n_kv": 16, "string length": LENGTHS[0], "array count": COUNTS[2]}[field]
    path = tmp_path / "huge.gguf"
    path.write_bytes(VALID[:at] + struct.pack("<Q", value) + VALID[at + 8:])
    with pytest.raises(VectorFormatError, match="is a damaged GGUF file: it declares .* but has "
                                                "[0-9]+ bytes left; re-export or re-download it$"):
        check_header(path, what=f"control vector {path}")
    with pytest.raises(VectorFormatError):
        ControlVector.from_gguf(path)


# --- explicit cases -------------------------------------------------------------------------------

def test_a_valid_vector_passes(tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(VALID)
    assert check_header(path) == {"version": 3, "n_tensors": 2, "n_kv": 7,
                                  "architecture": "controlvector"}
    assert ControlVector.from_gguf(path).metadata["words"] == ["fear", "dread"]


def refused_as_model(tmp_path, data: bytes, expected: str) -> Path:
    """Write ``data`` and check that the header check refuses it in one line naming ``expected``."""
    path = tmp_path / "damaged.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as info:
        check_header(path, what="model")
    assert expected in str(info.value)
    assert_one_line(info.value, path)
    return path


@pytest.mark.parametrize("name", HAND_MADE)
def test_hand_made_bombs_are_one_line(tmp_path, name):
    path = refused_as_model(tmp_path, *HAND_MADE[name])
    with pytest.raises(VectorFormatError, match="is a damaged GGUF file"):
        ControlVector.from_gguf(path)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_the_2_40_array_is_refused_within_1_gb(tmp_path):
    path = tmp_path / "bomb.gguf"
    path.write_bytes(huge_array_file())
    assert path.stat().st_size == 174
    script = ("import sys\nfrom edgeemo.errors import EdgeemoError\n"
              "from edgeemo.ggufcheck import check_header\n"
              "from edgeemo.vectors import ControlVector\n"
              "for check in (lambda p: check_header(p, what='model'), ControlVector.from_gguf):\n"
              "    try:\n        check(sys.argv[1])\n    except EdgeemoError as e:\n"
              "        print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, timeout=20, preexec_fn=_limit_memory, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0] == (f"ModelFileError {path} is a damaged GGUF file: it declares an array of "
                        f"1099511627776 items in key 'general.architecture' but has 106 bytes "
                        f"left; re-export or re-download it")
    assert lines[1].startswith(f"VectorFormatError {path} is a damaged GGUF file: ")


def test_check_gguf_refuses_a_damaged_model(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(huge_array_file())
    with pytest.raises(ModelFileError, match="is a damaged GGUF file"):
        models.check_gguf(path)
    with pytest.raises(ModelFileError, match="is a damaged GGUF file"):
        models.resolve(str(path))


def test_truncated_and_unreadable_files(tmp_path):
    path = tmp_path / "short.gguf"
    path.write_bytes(VALID[:12])
    with pytest.raises(ModelFileError, match="truncated: it ends inside the tensor count at byte"):
        check_header(path, what="model")
    with pytest.raises(VectorFormatError, match="^cannot read .*; check the path"):
        check_header(tmp_path, what=f"control vector {tmp_path}")
    with pytest.raises(ModelFileError, match="^cannot read "):
        check_header(tmp_path / "missing.gguf")


@pytest.mark.parametrize("data, expected", [
    (gguf_bytes(kv(b"k", 13, bytes(8))), "key 'k' has unknown value type 13"),
    (gguf_bytes(kv(b"k", 9, struct.pack("<IQ", 13, 1) + bytes(8))), "array of unknown type 13"),
    (struct.pack("<4sI", b"GGUF", 1) + bytes(40), "GGUF version 1;"),
    (b"GGUF" + struct.pack(">I", 3) + bytes(40), "(a big-endian file)"),
    (gguf_bytes(kv(b"general.alignment", 4, struct.pack("<I", 0))), "general.alignment is 0"),
    (gguf_bytes(n_tensors=1, tail=gstr(b"t") + struct.pack("<I", 5) + bytes(60)), "5 dimensions"),
    (gguf_bytes(n_tensors=1, tail=gstr(b"t") + struct.pack("<IQ", 1, 2**40) + bytes(12)),
     "more elements than a file of"),
])
def test_other_damage(tmp_path, data, expected):
    refused_as_model(tmp_path, data, expected)


def test_nested_arrays_and_a_non_string_architecture_pass(tmp_path):
    inner = struct.pack("<IQ", 8, 2) + gstr(b"a") + gstr(b"bc")
    data = gguf_bytes(kv(b"general.architecture", 4, struct.pack("<I", 7)),
                      kv(b"nested", 9, struct.pack("<IQ", 9, 2) + inner + inner))
    path = tmp_path / "nested.gguf"
    path.write_bytes(data)
    assert check_header(path) == {"version": 3, "n_tensors": 0, "n_kv": 2, "architecture": None}


def test_strings_must_be_utf8_even_when_long(tmp_path):
    path = tmp_path / "long.gguf"
    text = "é" * 200_000  # 400 KB: read in chunks, with a character across a chunk boundary
    path.write_bytes(gguf_bytes(kv(b"general.name", 8, gstr(text.encode()))))
    assert check_header(path)["n_kv"] == 1
    path.write_bytes(gguf_bytes(kv(b"general.name", 8, gstr(text.encode() + b"\xc3"))))
    with pytest.raises(ModelFileError, match="string \\(key 'general.name'\\) is not valid UTF-8"):
        check_header(path)


def test_a_vector_with_a_bad_metadata_string_is_a_format_error(tmp_path):
    """gguf-py decodes strings only when asked, so this used to leak a UnicodeDecodeError."""
    at = VALID.index(b"afraid")
    path = tmp_path / "v.gguf"
    path.write_bytes(VALID[:at] + b"\x80" + VALID[at + 1:])
    with pytest.raises(VectorFormatError, match="is not valid UTF-8"):
        ControlVector.from_gguf(path)


def test_the_default_model_passes_quickly():
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"{DEFAULT_MODEL} is not pulled")
    started = time.perf_counter()
    info = check_header(DEFAULT_MODEL, what="model")
    assert info["architecture"] == "llama" and info["version"] == 3 and info["n_tensors"] > 100
    assert time.perf_counter() - started < 5
