"""The llama.cpp control-vector GGUF file: its layout, and reading and writing one.

The file format
---------------
The same GGUF layout that llama.cpp's ``--control-vector`` loader and repeng read and write:

* ``general.architecture = "controlvector"``
* ``controlvector.model_hint``  the model's architecture string (``"llama"``, ``"gemma3"``, ...)
* ``controlvector.layer_count`` the number of direction tensors (uint32)
* tensors ``direction.N``, 1-D float32 with ``n_embd`` elements, in increasing ``N``
* ``edgeemo.*`` keys: our own metadata (how the vector was made). llama.cpp reads only tensors.
  ``edgeemo.n_layer``, when present, is the source model's layer count and is used in messages.

Files are written under a temporary name and renamed, and are byte-identical for identical
inputs: no timestamps, keys in sorted order, tensors in layer order.

:func:`write` and :func:`read` take and give the file's parts (model hint, directions by layer,
metadata); :class:`~edgeemo.vectors.ControlVector` checks them and is what the rest of edgeemo uses.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VectorFormatError
from .ggufcheck import check_header
from .writes import atomic_path

ARCH = "controlvector"
METADATA_PREFIX = "edgeemo."
GGUF_MAGIC = b"GGUF"

# Canonical tensor names only: "direction.7", not "direction.07" or "direction.7x". (llama.cpp
# would parse those with std::stoi; we refuse them rather than guess what the writer meant.)
_TENSOR_NAME = re.compile(r"direction\.(0|[1-9][0-9]*)")


# --- metadata values ------------------------------------------------------------------------------

def metadata_value(key: str, value: Any) -> Any:
    """``value`` as one of the Python types we store, or ValueError.

    Stored types: str, bool, int, float, and non-empty lists of str, of int or of float. Lists of
    floats are rounded to float32 here, because that is how the file stores them.
    """
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        if not items:
            raise ValueError(f"metadata {key!r} is an empty list; GGUF cannot store empty arrays")
        if all(isinstance(x, str) for x in items):
            return items
        if any(isinstance(x, (bool, np.bool_)) for x in items):
            raise ValueError(f"metadata {key!r}: lists of bools are not supported")
        if all(isinstance(x, numbers.Integral) for x in items):
            return [int(x) for x in items]
        if all(isinstance(x, numbers.Real) for x in items):
            # Stored as float32: hold the float32 values so a read-back vector compares equal.
            return [float(np.float32(x)) for x in items]
        raise ValueError(f"metadata {key!r}: a list must hold only strings, only ints or only "
                         f"numbers")
    raise ValueError(f"metadata {key!r} has unsupported type {type(value).__name__}; use str, "
                     f"bool, int, float or a list of them")


def _add_metadata(writer, key: str, value: Any) -> None:
    """Write one ``edgeemo.*`` key, choosing the GGUF type from the Python type.

    str -> STRING, bool -> BOOL, int -> INT64, float -> FLOAT64 (exact round trip), list of str ->
    array of STRING, list of int -> array of INT64, list of float -> array of FLOAT32 (values are
    rounded to float32 on write).
    """
    import gguf

    t = gguf.GGUFValueType
    # add_key_value rather than add_string/add_array: those silently drop empty values.
    if isinstance(value, str):
        writer.add_key_value(key, value, t.STRING)
    elif isinstance(value, bool):          # before int: bool is a subclass of int
        writer.add_key_value(key, value, t.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, t.INT64)
    elif isinstance(value, float):
        writer.add_key_value(key, value, t.FLOAT64)
    elif isinstance(value[0], str):
        writer.add_key_value(key, value, t.ARRAY, sub_type=t.STRING)
    elif isinstance(value[0], int):
        writer.add_key_value(key, value, t.ARRAY, sub_type=t.INT64)
    else:
        writer.add_key_value(key, value, t.ARRAY, sub_type=t.FLOAT32)


def _read_metadata(field) -> Any:
    """A GGUFReader field as a plain Python value (str, bool, int, float or list)."""
    import gguf

    value = field.contents()
    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        return list(value) if value is not None else []
    return value


# --- writing and reading ------------------------------------------------------------------------

def write(path: Path | str, model_hint: str, directions: dict[int, np.ndarray],
          metadata: dict) -> Path:
    """Write a control-vector GGUF from checked parts (see ``ControlVector.to_gguf``); return
    the path. Written under a temporary name and renamed."""
    import gguf

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)  # writes general.architecture
        try:
            writer.add_key_value(f"{ARCH}.model_hint", model_hint, gguf.GGUFValueType.STRING)
            writer.add_uint32(f"{ARCH}.layer_count", len(directions))
            for key in sorted(metadata):
                _add_metadata(writer, METADATA_PREFIX + key, metadata[key])
            for layer in sorted(directions):
                # float32 always: an F64 tensor makes llama.cpp drop the whole file.
                writer.add_tensor(f"direction.{layer}",
                                  np.ascontiguousarray(directions[layer], np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def read(path: Path | str) -> tuple[str, int, dict[int, np.ndarray], dict]:
    """A control-vector GGUF's parts: (model hint, n_embd, directions by layer, metadata); a
    one-line VectorFormatError for anything else.

    Accepts exactly what llama.cpp's loader accepts, plus ``general.architecture`` and canonical
    tensor names. ``controlvector.layer_count`` is informational and not checked.
    """
    import gguf

    path = Path(path)
    if not path.exists():
        raise VectorFormatError(f"control vector {path} not found")
    if path.is_dir():
        raise VectorFormatError(f"{path} is a directory, not a control vector file")
    with open(path, "rb") as f:
        header = f.read(4)
    if header[:4] != GGUF_MAGIC:
        raise VectorFormatError(f"{path} is not a GGUF file (it does not start with 'GGUF'); "
                                f"give a control vector .gguf written by `edgeemo export-vector`")

    # before any parser trusts its counts; a model (the common mistake) is refused here,
    # without GGUFReader parsing its whole vocabulary
    arch = check_header(path, what=f"control vector {path}")["architecture"]
    if arch is not None and arch != ARCH:
        raise _not_a_vector(path, arch)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        raise VectorFormatError(f"{path} is a damaged GGUF file ({exc})") from exc

    def text(key: str) -> str | None:
        f = reader.get_field(key)
        if f is None or not f.types or f.types[0] != gguf.GGUFValueType.STRING:
            return None
        return f.contents()

    arch = text("general.architecture")
    if arch != ARCH:
        raise _not_a_vector(path, arch)

    n_embd = None
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        match = _TENSOR_NAME.fullmatch(tensor.name)
        if match is None:
            raise VectorFormatError(f"{path}: tensor {tensor.name!r} is not named direction.N; "
                                    f"not a control vector")
        layer = int(match.group(1))
        if layer == 0:
            raise VectorFormatError(f"{path} has a direction.0 tensor, which llama.cpp rejects "
                                    f"(control vectors start at layer 1); re-export the vector")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFormatError(f"{path}: tensor {tensor.name} is "
                                    f"{tensor.tensor_type.name}, llama.cpp needs F32")
        if len(tensor.shape) != 1:
            raise VectorFormatError(f"{path}: tensor {tensor.name} has "
                                    f"{len(tensor.shape)} dimensions, llama.cpp needs 1")
        size = int(tensor.n_elements)
        if n_embd is None:
            n_embd = size
        elif size != n_embd:
            raise VectorFormatError(f"{path}: tensor {tensor.name} has {size} elements but "
                                    f"earlier directions have {n_embd}")
        # Copy out of the memory map so the file is not held open.
        directions[layer] = np.array(tensor.data, dtype=np.float32, copy=True).reshape(-1)
    if not directions:
        raise VectorFormatError(f"{path} has no direction tensors")

    metadata = {name[len(METADATA_PREFIX):]: _read_metadata(f)
                for name, f in reader.fields.items() if name.startswith(METADATA_PREFIX)}
    model_hint = text(f"{ARCH}.model_hint") or ""
    del reader
    return model_hint, n_embd, directions, metadata


def _not_a_vector(path: Path, arch: str | None) -> VectorFormatError:
    arch = " ".join(arch.split()) if arch else arch         # one line, whatever the file says
    if arch:
        return VectorFormatError(
            f"{path} is a GGUF model ({arch}), not a control vector; pass the model with "
            f"--model and a vector written by `edgeemo export-vector`")
    return VectorFormatError(f"{path} is not a control vector: general.architecture is "
                             f"missing, expected '{ARCH}'")
