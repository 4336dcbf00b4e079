"""The ONNX export: every hidden state, in layer order, agreeing with llama.cpp on the same GGUF."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeemo import export, models, store
from edgeemo.errors import UnsupportedArchitecture

pytestmark = pytest.mark.slow


def output_names(export_dir):
    graph = onnx.load(str(export_dir / export.ONNX_NAME), load_external_data=False).graph
    return [o.name for o in graph.output]


def test_outputs_are_every_hidden_state_in_order(default_export):
    manifest = export.read_manifest(default_export)
    n_layer = manifest["n_layer"]
    assert n_layer == models.cards()["smollm2-135m-instruct"].n_layer == 30
    assert output_names(default_export) == [f"hidden_states.{i}" for i in range(n_layer + 1)]


def test_manifest_and_tokenizer_sit_beside_the_model(default_export):
    manifest = json.loads((default_export / "manifest.json").read_text())
    card = models.cards()["smollm2-135m-instruct"]
    assert manifest["architecture"] == "llama"
    assert manifest["n_embd"] == card.n_embd
    assert manifest["source_sha256"] == card.sha256
    assert manifest["precision"] == "fp32"
    assert manifest["edgeemo_version"]
    assert (default_export / "tokenizer.json").is_file()
    assert default_export.parent.name == card.sha256[:16]


def test_export_is_cached_and_reused(default_export):
    before = (default_export / export.ONNX_NAME).stat().st_mtime_ns
    again = export.export_model(models.resolve("smollm2-135m-instruct"))
    assert again == default_export
    assert (default_export / export.ONNX_NAME).stat().st_mtime_ns == before


def test_padding_does_not_change_a_texts_states(default_reader):
    short, long = "The kettle clicked off.", "The train left the station at nine and ran along the river."
    alone = next(default_reader.read([short], layers=[5, 15, 30]))
    batched = list(default_reader.read([long, short], layers=[5, 15, 30], batch_size=2))[1]
    assert alone.shape == batched.shape == (3, len(default_reader.tokenize(short)), 576)
    np.testing.assert_allclose(alone, batched, rtol=1e-3, atol=1e-3)


def test_a_read_computes_only_the_blocks_below_its_deepest_layer(default_reader):
    """onnxruntime runs every node of a graph whatever is fetched, so the reader prunes the
    graph after the deepest layer asked for; the states are those of the whole graph."""
    from edgeemo.reader import pruned_graph

    texts = ["The kettle clicked off.", "The train left the station at nine and ran on."]
    shallow = list(default_reader.read(texts, layers=[5, 12]))
    assert [o.name for o in default_reader.session_for(12).get_outputs()] == \
        [f"hidden_states.{k}" for k in range(13)]
    whole = list(default_reader.read(texts, layers=[5, 12, 30]))
    assert len(default_reader.session_for(30).get_outputs()) == 31
    for part, full in zip(shallow, whole):
        np.testing.assert_allclose(part, full[:2], rtol=1e-5, atol=1e-5)

    def matmuls(graph) -> int:
        return sum(node.op_type == "MatMul" for node in graph.node)

    path = default_reader.dir / export.ONNX_NAME
    pruned = onnx.load_model_from_string(pruned_graph(path, ["hidden_states.12"])).graph
    everything = onnx.load(str(path), load_external_data=False).graph
    assert matmuls(pruned) < 0.45 * matmuls(everything)     # 12 of 30 blocks
    assert len(pruned.initializer) < len(everything.initializer)


def test_reader_rejects_out_of_range_layers(default_reader):
    with pytest.raises(ValueError, match="outside 0..30"):
        next(default_reader.read(["hi"], layers=[31]))


def write_gguf(path, arch):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    path = tmp_path / "odd.gguf"
    write_gguf(path, "rwkv6")
    with pytest.raises(UnsupportedArchitecture) as err:
        export.export_model(models.resolve(str(path)))
    message = str(err.value)
    assert "'rwkv6'" in message and "llama" in message and "gemma3" in message
    assert "\n" not in message
    assert not store.export_dir(store.sha256_file(path), "fp32").parent.exists()


# --- agreement with llama.cpp on the same GGUF ------------------------------------------------

PARITY_TEXTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Preheat the oven to 200 degrees and line a tray with baking paper.",
    "She read the letter twice, folded it, and put it back in the drawer.",
]


def llama_embeddings(gguf_path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(gguf_path), embedding=True, n_ctx=256, verbose=False,
                           pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)


def final_state_parity(gguf_path, export_dir) -> float:
    """Mean cosine between llama.cpp's per-token output embeddings and the ONNX final hidden
    state, on the same token ids."""
    from edgeemo.reader import HiddenStateReader

    llm = llama_embeddings(gguf_path)
    reader = HiddenStateReader(export_dir)
    cosines = []
    for text in PARITY_TEXTS:
        ids = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert ids == reader.tokenize(text), "the reader must tokenize as llama.cpp does"
        ours = next(reader.read([ids], layers=[reader.n_layer]))[0]          # (T, d)
        theirs = np.array(llm.embed(text, normalize=False))                    # (T, d)
        cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
        cosines.extend(cos.tolist())
    return float(np.mean(cosines))


def test_final_hidden_state_agrees_with_llama_cpp(default_gguf, default_export):
    parity = final_state_parity(default_gguf, default_export)
    print(f"smollm2-135m-instruct parity (mean cosine): {parity:.5f}")
    assert parity >= 0.99


def test_gemma_export_and_parity(gemma_gguf, gemma_export):
    manifest = export.read_manifest(gemma_export)
    assert manifest["architecture"] == "gemma3" and manifest["n_layer"] == 18
    assert output_names(gemma_export) == [f"hidden_states.{i}" for i in range(19)]
    parity = final_state_parity(gemma_gguf, gemma_export)
    print(f"gemma3-270m parity (mean cosine): {parity:.5f}")
    assert parity >= 0.99


def test_int8_export_is_smaller_and_close(default_gguf, default_export):
    from edgeemo.reader import HiddenStateReader

    int8 = export.export_model(models.resolve("smollm2-135m-instruct"), "int8")
    assert export.read_manifest(int8)["precision"] == "int8"
    assert export.onnx_size(int8) < export.onnx_size(default_export) / 3
    assert export.read_manifest(int8)["quantization"] == export.QUANTIZATION
    a, b = HiddenStateReader(default_export), HiddenStateReader(int8)
    for x, y in zip(a.read(PARITY_TEXTS, [15]), b.read(PARITY_TEXTS, [15])):
        u, v = x[0, 1:].mean(0), y[0, 1:].mean(0)
        assert u @ v / np.linalg.norm(u) / np.linalg.norm(v) > 0.99
