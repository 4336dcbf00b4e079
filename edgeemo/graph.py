"""Write a GGUF model's ONNX graph without ever holding the whole model in memory.

    GGUF header ──transformers config──► the model with one-element stand-in weights
                ──optimum's config and patches, torch.onnx.export(export_params=False)──►
                  the graph, each weight a named input
    GGUF tensors, one at a time ──dequantize, transformers' own renaming and fixes──►
                  fp32 initializers, or (int8) MatMulNBits 8-bit blocks and an int8 embedding,
                  appended to one external data file

Tracing a model whose weights are one-element tensors broadcast to their shapes gives the same graph
as tracing the real model (the computation does not depend on the weights' values), and takes
megabytes. The weights then go in as transformers would load them (the same name map and the same
per-architecture fixes: llama's q/k permutation, GPT-2's transposed Conv1D, Gemma's norm offset),
so the hidden states are those of the model transformers loads. Peak memory is about that of the
largest tensor, not of the model: a 3B model exports on a laptop.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

ALIGN = 4096               # external data offsets on page boundaries, so they can be mapped
INLINE = 1024              # tensors smaller than this many bytes stay inside model.onnx
BLOCK = 128                # MatMulNBits block length along K
CHUNK_ROWS = 4096          # rows dequantized at a time (a Q4_K embedding expands ~8x meanwhile)


class Skeleton:
    """The causal-LM class for a GGUF's config with one-element weights, and its base model."""

    def __init__(self, path: Path):
        import torch
        import transformers
        from transformers.integrations.accelerate import init_empty_weights
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        self.parsed = load_gguf_checkpoint(str(path))          # header only: config, tokenizer
        self.config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        with init_empty_weights(include_buffers=False):        # weights on "meta": no memory
            self.lm = transformers.AutoModelForCausalLM.from_config(self.config,
                                                                    dtype=torch.float32)
        self.model = self.lm.base_model
        prefix = f"{self.lm.base_model_prefix}."
        self.prefix = prefix if self.model is not self.lm else ""
        # distinct values: the exporter merges weights that are equal
        for i, (module, name, weight) in enumerate(
                (m, n, p) for m in self.model.modules()
                for n, p in list(m.named_parameters(recurse=False))):
            stand_in = torch.full((1,), 1.0 + i * 1e-3).expand(*weight.shape)
            setattr(module, name, torch.nn.Parameter(stand_in, requires_grad=False))
        self.model.eval()

    def trace(self, onnx_config, out: Path) -> None:
        """Export the graph with every weight as a graph input named as in the state dict, the
        way optimum exports it (its dummy inputs, dynamic axes and patches)."""
        import torch

        model = self.model
        model.config.return_dict = True
        for key, value in (onnx_config.values_override or {}).items():
            setattr(model.config, key, value)
        dummy = onnx_config.rename_ambiguous_inputs(
            onnx_config.generate_dummy_inputs(framework="pt"))
        with torch.no_grad(), onnx_config.patch_model_for_export(
                model, model_kwargs={"output_hidden_states": True}):
            inputs = onnx_config.ordered_inputs(model)
            torch.onnx.export(
                model, (dummy,), str(out), input_names=list(inputs),
                output_names=list(onnx_config.outputs),
                dynamic_axes={**inputs, **onnx_config.outputs},
                opset_version=onnx_config.DEFAULT_ONNX_OPSET,
                export_params=False, do_constant_folding=False, dynamo=False)

    def gguf_weights(self, path: Path):
        """Yield ``(state-dict name, float32 array)`` for each GGUF tensor the base model uses,
        renamed and fixed as transformers' GGUF loader does, one tensor at a time."""
        import gguf
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map)

        reader = gguf.GGUFReader(path)
        names = get_gguf_hf_weights_map(self.lm)
        architecture = reader.fields["general.architecture"].contents()
        processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(
            config=self.parsed["config"])
        for tensor in reader.tensors:
            side = {"tensors": {}}                 # where some processors put extra tensors
            result = processor.process(weights=dequantize(tensor), name=tensor.name,
                                       tensor_key_mapping=names, parsed_parameters=side)
            found = [(names[result.name], result.weights)] if result.name in names else []
            found += [(n, w.numpy()) for n, w in side["tensors"].items()]
            for name, weights in found:
                if name.startswith(self.prefix):
                    yield name[len(self.prefix):], np.asarray(weights, dtype=np.float32)


def dequantize(tensor) -> np.ndarray:
    """A GGUF tensor as float32, a few thousand rows at a time (numpy's dequantization makes
    temporaries several times the size of what it dequantizes)."""
    import gguf

    data = tensor.data
    if data.ndim < 2 or len(data) <= CHUNK_ROWS:
        return gguf.dequantize(data, tensor.tensor_type).astype(np.float32, copy=False)
    first = gguf.dequantize(data[:CHUNK_ROWS], tensor.tensor_type)
    out = np.empty((len(data),) + first.shape[1:], dtype=np.float32)
    out[:CHUNK_ROWS] = first
    for start in range(CHUNK_ROWS, len(data), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = gguf.dequantize(data[start:start + CHUNK_ROWS],
                                                        tensor.tensor_type)
    return out


class DataFile:
    """One external data file that tensors are appended to as they are made."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")

    def tensor(self, name: str, array: np.ndarray):
        import onnx

        array = np.ascontiguousarray(array)
        proto = onnx.TensorProto(name=name, dims=array.shape,
                                 data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
        if array.nbytes < INLINE:
            proto.raw_data = array.tobytes()
            return proto
        offset = -self.file.tell() % ALIGN
        self.file.write(b"\0" * offset)
        offset = self.file.tell()
        array.tofile(self.file)
        proto.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", offset),
                           ("length", array.nbytes)):
            proto.external_data.add(key=key, value=str(value))
        return proto

    def close(self) -> None:
        self.file.close()


def fill(skeleton_onnx: Path, weights, out: Path, *, int8: bool, say) -> dict:
    """Turn the traced graph's weight inputs into initializers from ``weights`` (name, array).

    fp32: each weight as it is; a weight only ever transposed is stored transposed instead.
    int8: a weight that is the right-hand side of MatMuls (directly, or through a transpose) goes
    into MatMulNBits 8-bit symmetric blocks of 128 along K, computing in int8; a weight read by
    Gather (the embedding) into int8 with one scale; the rest (norms, biases) stays fp32.
    Returns counts of what was done, for the manifest.
    """
    import onnx

    model = onnx.load(str(skeleton_onnx))
    graph = model.graph
    params = {i.name for i in graph.input} - set(real_inputs(graph))
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced: dict[int, list] = {}        # id(node) -> the nodes that take its place
    initializers, counts, seen = [], {"matmul_nbits": 0, "gather_int8": 0, "float": 0}, set()
    data = DataFile(out.parent / f"{out.name}_data")
    started, done = time.perf_counter(), 0
    try:
        for name, w in weights:
            if name not in params or name in seen:
                continue
            seen.add(name)
            users = consumers.get(name, [])
            if int8 and users and all(matmul_side(u, name, consumers) for u in users):
                for user in users:
                    initializers += nbits(user, name, w, consumers, replaced, data)
                counts["matmul_nbits"] += 1
            elif int8 and users and all(u.op_type == "Gather" and u.input[0] == name
                                        for u in users):
                for user in users:
                    initializers += gather_int8(user, name, w, replaced, data)
                counts["gather_int8"] += 1
            elif users and w.ndim == 2 and all(is_transpose(u) for u in users):
                for user in users:                 # store W^T under the transpose's output name
                    replaced[id(user)] = []
                    initializers.append(data.tensor(user.output[0], w.T))
                counts["float"] += 1
            else:
                initializers.append(data.tensor(name, w))
                counts["float"] += 1
            done += 1
            if time.perf_counter() - started > 10:
                say(f"  {done}/{len(params)} weights written")
                started = time.perf_counter()
    finally:
        data.close()
    missing = sorted(params - seen)
    if missing:
        os.unlink(data.path)
        raise MissingWeights(missing)
    nodes = []
    for node in graph.node:
        nodes += replaced.get(id(node), [node])
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.input if i.name not in params]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(initializers)
    if int8 and counts["matmul_nbits"]:
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))
    return counts


class MissingWeights(Exception):
    def __init__(self, names: list[str]):
        super().__init__(f"{len(names)} weights are not in the GGUF (e.g. {names[0]})")
        self.names = names


def real_inputs(graph) -> list[str]:
    """The graph's data inputs (the rest of its inputs are weights)."""
    return [i.name for i in graph.input
            if i.name in ("input_ids", "attention_mask", "position_ids", "token_type_ids")]


def attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def is_transpose(node) -> bool:
    if node.op_type != "Transpose":
        return False
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    return perm == [1, 0]


def matmul_side(node, name: str, consumers: dict) -> bool:
    """Whether ``name`` reaches only the B side of 2-D-weight MatMuls (or a plain Gemm) from
    ``node``: ``MatMul(x, W)``, ``MatMul(x, Transpose(W))`` or ``Gemm(x, W, b)``."""
    if node.op_type == "MatMul":
        return node.input[1] == name
    if node.op_type == "Gemm":
        attrs = attributes(node)
        return node.input[1] == name and not attrs.get("transA", 0) \
            and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    if is_transpose(node):
        users = consumers.get(node.output[0], [])
        return bool(users) and all(u.op_type == "MatMul" and u.input[1] == node.output[0]
                                   for u in users)
    return False


def nbits(node, name: str, w: np.ndarray, consumers: dict, replaced: dict, data: DataFile):
    """Replace the MatMul (or Gemm) that ``node`` leads to by MatMulNBits; return initializers."""
    import onnx

    if is_transpose(node):                       # MatMul(x, Transpose(W)): B = W^T
        b = w.T
        replaced[id(node)] = []
        targets = consumers[node.output[0]]
    else:
        b = w
        targets = [node]
        if node.op_type == "Gemm":
            b = w.T if attributes(node).get("transB", 0) else w
    packed, scales = block_quantize(np.ascontiguousarray(b, dtype=np.float32))
    k, n = b.shape
    tensors = [data.tensor(f"{name}_Q8", packed), data.tensor(f"{name}_scales", scales)]
    for target in targets:
        product = target.output[0] if target.op_type == "MatMul" else f"{target.output[0]}/matmul"
        new = [onnx.helper.make_node(
            "MatMulNBits", [target.input[0], f"{name}_Q8", f"{name}_scales"], [product],
            name=f"{target.name}_Q8", domain="com.microsoft",
            K=k, N=n, bits=8, block_size=BLOCK, accuracy_level=4)]
        if target.op_type == "Gemm" and len(target.input) > 2 and target.input[2]:
            new.append(onnx.helper.make_node("Add", [product, target.input[2]],
                                             [target.output[0]], name=f"{target.name}_Add"))
        elif target.op_type == "Gemm":
            new[0].output[0] = target.output[0]
        replaced[id(target)] = new
    return tensors


def block_quantize(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's symmetric 8-bit block quantization of B (K x N): packed (N, blocks, 128)
    and scales (N, blocks)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer)

    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, bits=8,
                                          accuracy_level=4)
    packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(b)
    return packed, scales


def gather_int8(node, name: str, w: np.ndarray, replaced: dict, data: DataFile):
    """Gather(W, ids) -> DequantizeLinear(Gather(W_int8, ids), scale): one symmetric scale."""
    import onnx

    scale = np.float32(max(float(np.abs(w).max()), 1e-12) / 127.0)
    q = np.empty(w.shape, dtype=np.int8)
    for start in range(0, len(w), CHUNK_ROWS):     # without a float copy of the whole table
        q[start:start + CHUNK_ROWS] = np.clip(np.rint(w[start:start + CHUNK_ROWS] / scale),
                                              -127, 127)
    tensors = [data.tensor(f"{name}_quantized", q),
               data.tensor(f"{name}_scale", np.array(scale, dtype=np.float32)),
               data.tensor(f"{name}_zero_point", np.array(0, dtype=np.int8))]
    gathered = f"{node.output[0]}_quantized"
    replaced[id(node)] = [
        onnx.helper.make_node("Gather", [f"{name}_quantized", node.input[1]], [gathered],
                              name=f"{node.name}_int8",
                              **attributes(node)),
        onnx.helper.make_node("DequantizeLinear",
                              [gathered, f"{name}_scale", f"{name}_zero_point"],
                              [node.output[0]], name=f"{node.name}_dequantize")]
    return tensors
