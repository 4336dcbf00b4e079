"""Control vectors: the layer-index rule, the GGUF file format, buffers, and steering llama.cpp.

The fast tests need no model. The slow ones load the default model with llama-cpp-python and check
that a vector changes greedy generation, that clearing it restores the unsteered text exactly,
and that a vector read back from its file steers exactly like the one in memory.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgeemo import _llama
from edgeemo.errors import VectorFormatError
from edgeemo.vectors import (
    ControlVector,
    direction_layer,
    hidden_state_index,
    mix_buffer,
    usable_layers,
)

N_EMBD = 8


def make_vector(layers=(1, 3, 4), seed=0, hint="llama", n_embd=N_EMBD, **metadata) -> ControlVector:
    rng = np.random.default_rng(seed)
    return ControlVector(hint, n_embd, {n: rng.standard_normal(n_embd) for n in layers}, metadata)


def tensor_types(path: Path) -> dict[str, gguf.GGMLQuantizationType]:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}


def write_raw(path: Path, arch: str, tensors: dict[str, np.ndarray], **kv: str) -> Path:
    """A GGUF file written directly with gguf-py, bypassing ControlVector's checks."""
    writer = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        writer.add_string(key, value)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- the layer-index rule -------------------------------------------------------------------------

def test_layer_rule_maps_direction_n_to_hidden_state_n_plus_1():
    assert hidden_state_index(1) == 2
    assert hidden_state_index(28, n_layer=30) == 29
    assert direction_layer(2) == 1
    assert direction_layer(29, n_layer=30) == 28
    for n in range(1, 29):
        assert direction_layer(hidden_state_index(n)) == n


def test_layer_rule_out_of_range():
    with pytest.raises(ValueError, match="direction.0"):
        hidden_state_index(0)
    with pytest.raises(ValueError):
        hidden_state_index(30, n_layer=30)
    with pytest.raises(ValueError, match="embedding"):
        direction_layer(0)
    with pytest.raises(ValueError, match="direction.0"):
        direction_layer(1)
    with pytest.raises(ValueError, match="final norm"):
        direction_layer(30, n_layer=30)


def test_usable_layers():
    assert usable_layers(30) == range(1, 29)
    assert list(usable_layers(3)) == [1]
    with pytest.raises(ValueError):
        usable_layers(2)


# --- construction ---------------------------------------------------------------------------------

def test_construction_copies_and_freezes_arrays():
    source = np.ones(N_EMBD)
    vector = ControlVector("llama", N_EMBD, {2: source})
    source[:] = 5.0
    assert vector.directions[2].dtype == np.float32
    assert np.all(vector.directions[2] == 1.0)
    with pytest.raises(ValueError):
        vector.directions[2][0] = 3.0


@pytest.mark.parametrize("directions, message", [
    ({0: np.ones(N_EMBD)}, "direction.0"),
    ({-1: np.ones(N_EMBD)}, "layer 1"),
    ({1: np.ones(N_EMBD + 1)}, "shape"),
    ({1: np.ones((2, N_EMBD))}, "shape"),
    ({1: np.full(N_EMBD, np.nan)}, "non-finite"),
])
def test_construction_rejects_bad_directions(directions, message):
    with pytest.raises(ValueError, match=message):
        ControlVector("llama", N_EMBD, directions)


# --- GGUF round trip ------------------------------------------------------------------------------

METADATA = {
    "emotion": "fear",
    "empty": "",
    "n_layer": 30,
    "big": 2**40,
    "scale": 0.1,
    "centered": True,
    "flipped": False,
    "norms": [1.5, 0.25, 3.0],
    "steered_layers": [10, 11, 12],
    "emotions": ["fear", "joy"],
}


def test_round_trip_is_exact(tmp_path):
    vector = make_vector(**METADATA)
    path = vector.to_gguf(tmp_path / "fear.gguf")
    back = ControlVector.from_gguf(path)
    assert back == vector
    assert back.model_hint == "llama" and back.n_embd == N_EMBD
    assert back.layers == [1, 3, 4]
    for n in vector.directions:
        assert back.directions[n].dtype == np.float32
        assert np.array_equal(back.directions[n], vector.directions[n])
    assert back.metadata == vector.metadata
    for key, value in METADATA.items():
        assert type(back.metadata[key]) is type(value), key
    assert all(type(x) is float for x in back.metadata["norms"])
    assert all(type(x) is int for x in back.metadata["steered_layers"])
    assert back.name == "fear.gguf"


def test_float_lists_are_held_as_float32_values(tmp_path):
    vector = make_vector(norms=[0.1, 1 / 3])
    assert vector.metadata["norms"] == [float(np.float32(0.1)), float(np.float32(1 / 3))]
    assert ControlVector.from_gguf(vector.to_gguf(tmp_path / "v.gguf")) == vector


def test_scalar_floats_round_trip_exactly(tmp_path):
    vector = make_vector(alpha=0.1, third=1 / 3)
    back = ControlVector.from_gguf(vector.to_gguf(tmp_path / "v.gguf"))
    assert back.metadata["alpha"] == 0.1 and back.metadata["third"] == 1 / 3


def test_file_layout_matches_llama_cpp(tmp_path):
    # llama-cpp-python cannot load a control-vector file (the loader lives in llama.cpp's common
    # library, which it does not bind), so we check what that loader checks: every tensor is
    # direction.N with N >= 1, F32, 1-D with n_embd elements; plus the keys other writers use.
    path = make_vector(layers=(12, 2, 7), emotion="joy").to_gguf(tmp_path / "joy.gguf")
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["direction.2", "direction.7", "direction.12"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [N_EMBD]
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    layer_count = reader.get_field("controlvector.layer_count")
    assert layer_count.types == [gguf.GGUFValueType.UINT32] and layer_count.contents() == 3
    assert reader.get_field("edgeemo.emotion").contents() == "joy"


def test_identical_inputs_give_identical_bytes(tmp_path):
    a = make_vector(**METADATA).to_gguf(tmp_path / "a.gguf")
    # Same content, metadata given in another order.
    b = make_vector(**dict(reversed(list(METADATA.items())))).to_gguf(tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()


def test_float64_input_is_stored_as_f32(tmp_path):
    directions = {5: np.linspace(-1, 1, N_EMBD, dtype=np.float64)}
    path = ControlVector("llama", N_EMBD, directions).to_gguf(tmp_path / "v.gguf")
    assert tensor_types(path) == {"direction.5": gguf.GGMLQuantizationType.F32}


def test_write_rejects_direction_0(tmp_path):
    vector = make_vector()
    vector.directions[0] = np.ones(N_EMBD, dtype=np.float32)  # bypasses construction checks
    with pytest.raises(ValueError, match="direction.0"):
        vector.to_gguf(tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_write_rejects_empty_vector(tmp_path):
    with pytest.raises(ValueError):
        ControlVector("llama", N_EMBD, {}).to_gguf(tmp_path / "v.gguf")


def test_write_rejects_unsupported_metadata():
    with pytest.raises(ValueError, match="unsupported type"):
        make_vector(when={"a": 1})
    with pytest.raises(ValueError, match="empty list"):
        make_vector(norms=[])


# --- reading other files --------------------------------------------------------------------------

def ones(n=N_EMBD, dtype=np.float32):
    return np.ones(n, dtype=dtype)


def test_read_rejects_direction_0(tmp_path):
    path = write_raw(tmp_path / "zero.gguf", "controlvector",
                     {"direction.0": ones(), "direction.1": ones()})
    with pytest.raises(VectorFormatError, match="direction.0"):
        ControlVector.from_gguf(path)


def test_read_rejects_a_model(tmp_path):
    path = write_raw(tmp_path / "model.gguf", "llama", {"token_embd.weight": np.ones((4, 4), np.float32)})
    with pytest.raises(VectorFormatError, match="is a GGUF model \\(llama\\), not a control vector"):
        ControlVector.from_gguf(path)


def test_read_rejects_a_model_whose_architecture_key_is_not_first(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "model.gguf", "qwen2")
    writer.add_string("general.name", "tiny")
    arch = writer.kv_data[0].pop("general.architecture")
    writer.kv_data[0]["general.architecture"] = arch  # now the second key
    writer.add_tensor("token_embd.weight", np.ones((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFormatError, match="is a GGUF model \\(qwen2\\)"):
        ControlVector.from_gguf(tmp_path / "model.gguf")


def test_read_rejects_a_file_without_architecture(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "bare.gguf", "controlvector")
    del writer.kv_data[0]["general.architecture"]
    writer.add_tensor("direction.1", ones())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFormatError, match="general.architecture is missing"):
        ControlVector.from_gguf(tmp_path / "bare.gguf")


@pytest.mark.slow
def test_read_rejects_the_real_model(default_gguf):
    with pytest.raises(VectorFormatError, match="is a GGUF model \\(llama\\), not a control vector"):
        ControlVector.from_gguf(default_gguf)


def test_read_rejects_text(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("fear: more\n")
    with pytest.raises(VectorFormatError, match="not a GGUF file"):
        ControlVector.from_gguf(path)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(VectorFormatError, match="not a GGUF file"):
        ControlVector.from_gguf(tmp_path / "empty.gguf")


def test_read_rejects_missing_file_and_directory(tmp_path):
    with pytest.raises(VectorFormatError, match="not found"):
        ControlVector.from_gguf(tmp_path / "nope.gguf")
    with pytest.raises(VectorFormatError, match="directory"):
        ControlVector.from_gguf(tmp_path)


def test_read_rejects_truncated_file(tmp_path):
    data = make_vector().to_gguf(tmp_path / "v.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:40])
    with pytest.raises(VectorFormatError, match="damaged"):
        ControlVector.from_gguf(tmp_path / "cut.gguf")


@pytest.mark.parametrize("tensors, message", [
    ({"direction.1": ones(), "bias.2": ones()}, "not named direction.N"),
    ({"direction.01": ones()}, "not named direction.N"),
    ({"direction.1": ones(dtype=np.float64)}, "F64"),
    ({"direction.1": ones(dtype=np.float16)}, "F16"),
    ({"direction.1": np.ones((2, N_EMBD), np.float32)}, "2 dimensions"),
    ({"direction.1": ones(), "direction.2": ones(N_EMBD + 1)}, "elements"),
    ({}, "no direction tensors"),
])
def test_read_rejects_bad_tensors(tmp_path, tensors, message):
    path = write_raw(tmp_path / "bad.gguf", "controlvector", tensors)
    with pytest.raises(VectorFormatError, match=message):
        ControlVector.from_gguf(path)


def test_read_accepts_a_file_from_another_writer(tmp_path):
    # repeng-style: no edgeemo metadata, tensors in any order.
    path = write_raw(tmp_path / "other.gguf", "controlvector",
                     {"direction.9": ones() * 2, "direction.3": ones()},
                     **{"controlvector.model_hint": "qwen2"})
    vector = ControlVector.from_gguf(path)
    assert vector.model_hint == "qwen2" and vector.layers == [3, 9] and vector.metadata == {}


def test_errors_are_one_line(tmp_path):
    path = write_raw(tmp_path / "model.gguf", "gemma3", {"w": ones()})
    with pytest.raises(VectorFormatError) as info:
        ControlVector.from_gguf(path)
    assert "\n" not in str(info.value)


# --- buffers --------------------------------------------------------------------------------------

def test_buffer_layout():
    vector = make_vector(layers=(1, 3))
    n_layer = 6
    buf = vector.buffer(n_layer)
    assert buf.dtype == np.float32 and buf.shape == ((n_layer - 1) * N_EMBD,)
    blocks = buf.reshape(n_layer - 1, N_EMBD)  # block i holds layer i + 1
    assert np.array_equal(blocks[0], vector.directions[1])
    assert np.array_equal(blocks[2], vector.directions[3])
    for i in (1, 3, 4):
        assert not blocks[i].any()
    assert np.array_equal(vector.buffer(n_layer, scale=2.5), buf * np.float32(2.5))


def test_buffer_rejects_layers_the_model_lacks():
    with pytest.raises(ValueError, match="check_compatible"):
        make_vector(layers=(1, 6)).buffer(6)


def test_mix_equals_sum_of_parts():
    a, b, c = make_vector((1, 3), seed=1), make_vector((3, 4), seed=2), make_vector((2,), seed=3)
    parts = [(a, 1.5), (b, -0.75), (c, 3.0)]
    mix = mix_buffer(parts, 6)
    assert np.array_equal(mix, a.buffer(6, 1.5) + b.buffer(6, -0.75) + c.buffer(6, 3.0))
    assert np.array_equal(mix, (a * 1.5 + b * -0.75 + c * 3.0).buffer(6))
    assert np.array_equal(mix_buffer([(a, 2.0)], 6), a.buffer(6, 2.0))


def test_mix_rejects_other_models():
    with pytest.raises(VectorFormatError, match="different models"):
        mix_buffer([(make_vector(), 1.0), (make_vector(hint="gemma3"), 1.0)], 6)
    with pytest.raises(ValueError):
        mix_buffer([], 6)


# --- arithmetic -----------------------------------------------------------------------------------

def test_arithmetic():
    a, b = make_vector((1, 3), seed=1, emotion="fear"), make_vector((3, 4), seed=2)
    a_before = {n: d.copy() for n, d in a.directions.items()}

    total = a + b
    assert total.layers == [1, 3, 4]
    assert np.array_equal(total.directions[1], a.directions[1])
    assert np.array_equal(total.directions[3], a.directions[3] + b.directions[3])
    assert np.array_equal(total.directions[4], b.directions[4])
    assert total.metadata == {}

    diff = a - b
    assert np.array_equal(diff.directions[3], a.directions[3] - b.directions[3])
    assert np.array_equal(diff.directions[4], -b.directions[4])
    assert np.array_equal((-a).directions[1], -a.directions[1])
    assert np.array_equal((a * 2).directions[3], a.directions[3] * np.float32(2))
    assert (2 * a) == (a * 2)
    assert np.array_equal((a / 4).directions[1], a.directions[1] / np.float32(4))
    assert np.array_equal((a * np.float64(0.5)).buffer(6), a.buffer(6, 0.5))

    # Nothing was changed in place, and results do not share memory with their operands.
    for n, d in a_before.items():
        assert np.array_equal(a.directions[n], d)
    assert not np.shares_memory(total.directions[1], a.directions[1])

    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(TypeError):
        a + 1
    with pytest.raises(TypeError):
        a * "2"
    with pytest.raises(VectorFormatError, match="different models"):
        a + make_vector(hint="gemma3")
    with pytest.raises(VectorFormatError, match="different models"):
        a - make_vector(n_embd=N_EMBD * 2)


# --- compatibility --------------------------------------------------------------------------------

def test_check_compatible_passes_for_the_right_model():
    make_vector(layers=(1, 28)).check_compatible("llama", N_EMBD, 30)


def test_check_compatible_names_both_sides(tmp_path):
    path = make_vector(layers=(10, 20), n_layer=30).to_gguf(tmp_path / "fear.gguf")
    vector = ControlVector.from_gguf(path)
    with pytest.raises(VectorFormatError) as info:
        vector.check_compatible("gemma3", 640, 18, model_name="gemma3-270m")
    message = str(info.value)
    assert "fear.gguf" in message
    assert f"llama (n_embd {N_EMBD}, 30 layers)" in message
    assert "gemma3 (n_embd 640, 18 layers)" in message
    assert "edgeemo export-vector --model gemma3-270m" in message


def test_check_compatible_layer_and_hint_mismatch():
    vector = make_vector(layers=(10, 20))
    with pytest.raises(VectorFormatError, match="layer 20.*llama \\(n_embd 8, 18 layers\\)"):
        vector.check_compatible("llama", N_EMBD, 18)
    with pytest.raises(VectorFormatError, match="made for llama .* is qwen2"):
        vector.check_compatible("qwen2", N_EMBD, 30)
    # A vector without a model hint (another writer) is checked on shape only.
    ControlVector("", N_EMBD, {3: ones()}).check_compatible("qwen2", N_EMBD, 30)


# --- llama.cpp's own parser ----------------------------------------------------------------------

class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def ggml_base():
    """llama-cpp-python's bundled libggml-base, which holds the C GGUF parser llama.cpp uses."""
    llama_cpp = pytest.importorskip("llama_cpp")
    libdir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(libdir.glob("*ggml-base*")) if libdir.is_dir() else []
    if not candidates:
        pytest.skip(f"no libggml-base in {libdir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GgufInitParams]
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_find_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_find_key.restype = ctypes.c_int64
    lib.gguf_get_val_str.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_val_str.restype = ctypes.c_char_p
    lib.ggml_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_get_tensor.restype = ctypes.c_void_p
    lib.gguf_get_tensor_type.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_type.restype = ctypes.c_int
    lib.ggml_n_dims.argtypes = [ctypes.c_void_p]
    lib.ggml_n_dims.restype = ctypes.c_int
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    return lib


def llama_cpp_load(path: Path, n_layer: int) -> np.ndarray:
    """What llama.cpp's ``--control-vector`` loader builds from ``path``, as a full buffer.

    A transcription of ``common_control_vector_load_one`` (llama.cpp common/common.cpp), which
    llama-cpp-python does not bind, running on ggml's own GGUF parser.
    """
    lib = ggml_base()
    ggml_ctx = ctypes.c_void_p()
    gguf_ctx = lib.gguf_init_from_file(str(path).encode(),
                                       _GgufInitParams(False, ctypes.pointer(ggml_ctx)))
    assert gguf_ctx, f"ggml could not parse {path}"
    try:
        key = lib.gguf_find_key(gguf_ctx, b"general.architecture")
        assert key >= 0 and lib.gguf_get_val_str(gguf_ctx, key) == b"controlvector"
        n_embd, data = -1, np.zeros(0, dtype=np.float32)
        for i in range(lib.gguf_get_n_tensors(gguf_ctx)):
            name = lib.gguf_get_tensor_name(gguf_ctx, i).decode()
            prefix, _, index = name.partition(".")
            assert prefix == "direction" and int(index) > 0, name
            tensor = lib.ggml_get_tensor(ggml_ctx, name.encode())
            assert lib.gguf_get_tensor_type(gguf_ctx, i) == 0, name  # GGML_TYPE_F32
            assert lib.ggml_n_dims(tensor) == 1, name
            size = lib.ggml_nelements(tensor)
            assert n_embd in (-1, size), name
            n_embd, layer = size, int(index)
            if data.size < n_embd * layer:
                data = np.concatenate([data, np.zeros(n_embd * layer - data.size, np.float32)])
            values = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(n_embd,))
            data[n_embd * (layer - 1):n_embd * layer] += values  # layer 1 at [0]
    finally:
        lib.gguf_free(gguf_ctx)
        lib.ggml_free(ggml_ctx)
    full = np.zeros(n_embd * (n_layer - 1), dtype=np.float32)
    full[:data.size] = data
    return full


def test_llama_cpp_reads_our_file_as_we_do(tmp_path):
    vector = make_vector(layers=(1, 4, 9), **METADATA)
    path = vector.to_gguf(tmp_path / "v.gguf")
    assert np.array_equal(llama_cpp_load(path, 12), vector.buffer(12))


# --- steering the real model ----------------------------------------------------------------------

PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def llm(default_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(model_path=str(default_gguf), n_ctx=256, seed=0, verbose=False,
                            logits_all=False)
    yield model
    _llama.set_control_vector(model, None)
    model.close()


def generate(llm) -> str:
    # from an empty cache every time: a prompt re-read from a cached prefix takes another
    # numerical path (one token instead of a batch), which can flip a close greedy choice
    llm.reset()
    out = llm.create_completion(PROMPT, max_tokens=20, temperature=0.0)
    return out["choices"][0]["text"]


def random_vector(arch, n_embd, layers, norm=40.0, seed=0) -> ControlVector:
    rng = np.random.default_rng(seed)
    directions = {}
    for n in layers:
        d = rng.standard_normal(n_embd)
        directions[n] = d / np.linalg.norm(d) * norm
    return ControlVector(arch, n_embd, directions)


@pytest.mark.slow
def test_model_shape(llm):
    assert _llama.model_shape(llm) == ("llama", 576, 30)


@pytest.mark.slow
def test_steering_changes_text_and_clearing_restores_it(llm):
    arch, n_embd, n_layer = _llama.model_shape(llm)
    _llama.set_control_vector(llm, None)
    plain = generate(llm)
    assert generate(llm) == plain  # greedy decoding is deterministic

    vector = random_vector(arch, n_embd, range(10, 21))
    vector.check_compatible(arch, n_embd, n_layer)
    _llama.set_control_vector(llm, vector.buffer(n_layer))
    steered = generate(llm)
    assert steered != plain

    _llama.set_control_vector(llm, None)
    assert generate(llm) == plain


@pytest.mark.slow
def test_vector_from_file_steers_like_the_one_in_memory(llm, tmp_path):
    arch, n_embd, n_layer = _llama.model_shape(llm)
    vector = random_vector(arch, n_embd, range(10, 21), seed=1)
    _llama.set_control_vector(llm, vector.buffer(n_layer))
    in_memory = generate(llm)

    _llama.set_control_vector(llm, None)
    back = ControlVector.from_gguf(vector.to_gguf(tmp_path / "random.gguf"))
    _llama.set_control_vector(llm, back.buffer(n_layer))
    assert generate(llm) == in_memory
    _llama.set_control_vector(llm, None)


@pytest.mark.slow
def test_a_new_vector_replaces_the_old_one_entirely(llm):
    # The full buffer is always passed, so layers the new vector lacks are zeroed, not kept.
    arch, n_embd, n_layer = _llama.model_shape(llm)
    high = random_vector(arch, n_embd, range(15, 29), seed=2)
    low = random_vector(arch, n_embd, [5], norm=20.0, seed=3)
    _llama.set_control_vector(llm, None)
    _llama.set_control_vector(llm, low.buffer(n_layer))
    low_only = generate(llm)

    _llama.set_control_vector(llm, high.buffer(n_layer))
    _llama.set_control_vector(llm, low.buffer(n_layer))
    assert generate(llm) == low_only
    _llama.set_control_vector(llm, None)


@pytest.mark.slow
def test_apply_rejects_bad_buffers(llm):
    _, n_embd, n_layer = _llama.model_shape(llm)
    full = np.zeros(n_embd * (n_layer - 1), dtype=np.float32)
    with pytest.raises(ValueError, match="floats"):
        _llama.set_control_vector(llm, full[:n_embd * 5])
    with pytest.raises(ValueError, match="float32"):
        _llama.set_control_vector(llm, full.astype(np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        _llama.set_control_vector(llm, np.zeros(2 * full.size, dtype=np.float32)[::2])
    with pytest.raises(ValueError, match="layer range"):
        _llama.set_control_vector(llm, full, il_start=0)
