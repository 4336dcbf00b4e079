"""Export a GGUF model to an ONNX model that outputs every layer's hidden state.

    GGUF ──transformers from_pretrained(dir, gguf_file=…)──► dequantized torch model
         ──optimum onnx_export_from_model + HiddenStates config──► model.onnx
                                   outputs hidden_states.0 … hidden_states.{n_layer}

``hidden_states.0`` is the embedding output and ``hidden_states.k`` the output of block k−1; the
last one is after the final norm (see ``vectors.py`` for how these map onto llama.cpp layers).
The export is cached in the store, keyed by the GGUF's sha256 and the precision, with the
tokenizer and a manifest beside it. ``int8`` is the fp32 export with every MatMul's weights in
8-bit blocks (onnxruntime's MatMulNBits) and an int8 embedding: a quarter of the size, directions
at cosine >= 0.997 to fp32 ones.

Needs the ``export`` extra (transformers, optimum-onnx, torch); the rest of edgeemo does not.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

from . import __version__, store
from .errors import ExportError, UnsupportedArchitecture, require
from .models import Model, check_gguf

PRECISIONS = ("fp32", "int8")
ONNX_NAME = "model.onnx"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"


def gguf_info(path: Path) -> dict:
    """Architecture, layer count and width read from the GGUF header (no weights are loaded)."""
    import gguf

    check_gguf(path)
    reader = gguf.GGUFReader(path)

    def value(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    return {"architecture": arch,
            "add_bos": value("tokenizer.ggml.add_bos_token"),
            "bos_token_id": value("tokenizer.ggml.bos_token_id"),
            "n_layer": value(f"{arch}.block_count"),
            "n_embd": value(f"{arch}.embedding_length"),
            "name": value("general.name")}


def supported_architectures() -> list[str]:
    """GGUF architectures transformers can load (and so edgeemo can export)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(a for a in GGUF_CONFIG_MAPPING if a not in ("general", "tokenizer"))


def cached_export(model: Model, precision: str = "fp32") -> Path | None:
    """The export directory for this model if it exists and is complete, else None."""
    out = store.export_dir(model.sha256, precision)
    return out if current(out, precision) else None


def exports(model: Model) -> list[Path]:
    """The complete exports of a model, one directory per precision."""
    return [d for d in (store.export_dir(model.sha256, p) for p in PRECISIONS)
            if (d / MANIFEST).is_file()]


def export_model(model: Model, precision: str = "fp32", *, force: bool = False, progress=None) -> Path:
    """Export ``model`` (present in the store or a local path) and return its export directory."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    say = progress or (lambda msg: None)
    info = gguf_info(model.path)
    sha = model.sha256
    out = store.export_dir(sha, precision)
    if current(out, precision) and not force:      # no torch needed to reuse an export
        say(f"using the cached export in {out}")
        return out
    if (out / MANIFEST).is_file() and not force:
        say(f"the int8 export in {out} was quantized the older way; quantizing it again")
    if precision == "int8":      # from the fp32 export (which alone needs transformers and torch)
        fp32 = export_model(model, "fp32", force=force, progress=progress)
    else:
        require_export_extra()
        supported = supported_architectures()
        if info["architecture"] not in supported:
            raise UnsupportedArchitecture(
                f"{model.path.name} has architecture '{info['architecture']}', which transformers "
                f"cannot load from GGUF; supported: {', '.join(supported)}")
    # One process exports a model at a time; a second one waits, then reuses the export.
    with store.lock(f"export-{store.model_key(sha)}-{precision}",
                    what=f"exporting {model.name} ({precision})", say=say):
        if current(out, precision) and not force:
            say(f"using the export another process made in {out}")
            return out
        with store.atomic_path(out, directory=True) as tmp:
            if precision == "int8":
                quantize_int8(fp32, tmp, say)
            else:
                export_fp32(model, info, sha, tmp, say)
    return out


def require_export_extra() -> None:
    require("export", "optimum.exporters.onnx", "torch", "transformers")


def hidden_states_config(model):
    """The one OnnxConfig edgeemo needs: optimum's config for this architecture, whose outputs
    are replaced by ``hidden_states.0 … hidden_states.{n_layer}`` (in layer order)."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the configs)
    from optimum.exporters.tasks import TasksManager

    base = TasksManager.get_exporter_config_constructor(
        "onnx", model=model, task="feature-extraction", library_name="transformers")
    base_class = type(base(model.config, task="feature-extraction"))
    n_layer = model.config.num_hidden_layers

    class HiddenStatesOnnxConfig(base_class):
        @property
        def outputs(self):
            return {f"hidden_states.{i}": {0: "batch_size", 1: "sequence_length"}
                    for i in range(n_layer + 1)}

    return HiddenStatesOnnxConfig(model.config, task="feature-extraction")


def export_fp32(model: Model, info: dict, sha: str, out: Path, say) -> None:
    import torch
    import transformers
    from optimum.exporters.onnx import onnx_export_from_model

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    say(f"loading {model.path.name} with transformers (dequantizing to fp32)")
    try:
        hf, loading = transformers.AutoModel.from_pretrained(
            model.path.parent, gguf_file=model.path.name, dtype=torch.float32,
            output_loading_info=True)
        if loading["missing_keys"]:
            # transformers' GGUF name map knows some tensors only by the causal-LM model's names
            # (phi3's fused qkv_proj and gate_up_proj); the base model would keep random weights
            lm, loading = transformers.AutoModelForCausalLM.from_pretrained(
                model.path.parent, gguf_file=model.path.name, dtype=torch.float32,
                output_loading_info=True)
            hf = lm.base_model
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model.path.parent, gguf_file=model.path.name)
    except Exception as exc:
        raise ExportError(f"transformers could not load {model.path.name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    missing = [k for k in loading["missing_keys"] if not k.startswith("lm_head")]
    if missing:
        raise UnsupportedArchitecture(
            f"transformers loaded {info['architecture']} from {model.path.name} but left "
            f"{len(missing)} weights unread (e.g. {missing[0]}), so its hidden states would be "
            f"wrong; this architecture cannot be exported with transformers "
            f"{transformers.__version__}")
    hf.eval()
    loaded = time.perf_counter()
    say(f"exporting {hf.config.num_hidden_layers + 1} hidden states to ONNX")
    try:
        onnx_export_from_model(
            hf, out, task="feature-extraction", do_validation=False,
            custom_onnx_configs={"model": hidden_states_config(hf)},
            model_kwargs={"output_hidden_states": True})
    except Exception as exc:
        raise ExportError(f"optimum could not export {info['architecture']}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER))
    write_manifest(out, {
        "model": model.name,
        "architecture": info["architecture"],
        "n_layer": hf.config.num_hidden_layers,
        "n_embd": hf.config.hidden_size,
        "source_sha256": sha,
        "source_file": model.path.name,
        "source_path": str(model.path.resolve()),
        "precision": "fp32",
        # tokenize as llama.cpp does: it prepends BOS only if the GGUF says so
        "bos_token_id": info["bos_token_id"] if info["bos_token_id"] is not None
        else tokenizer.bos_token_id,
        "add_bos": bool(info["add_bos"]) if info["add_bos"] is not None
        else bool(getattr(tokenizer, "add_bos_token", False)),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "onnx_bytes": onnx_size(out),
        "seconds": {"load": round(loaded - started, 1),
                    "export": round(time.perf_counter() - loaded, 1)},
        "edgeemo_version": __version__,
    })
    del hf


# What "int8" means, recorded in the manifest: an int8 export made another way is made again.
# Weight-only 8-bit blocks keep the activations in float: the directions read from it are at cosine
# >= 0.997 to fp32 ones on SmolLM2-135M (dynamic int8, which quantizes activations too: 0.916).
QUANTIZATION = "matmul-nbits-8bit-block128-int8compute+gather-int8"


def quantize_int8(fp32: Path, out: Path, say) -> None:
    """int8 from the fp32 export: every MatMul's weights in symmetric 8-bit blocks of 128
    (onnxruntime's MatMulNBits, computing in int8), then the embedding table (Gather) in int8."""
    require("export", "onnx", "onnx_ir")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    say("quantizing the fp32 export to int8 (8-bit weight blocks, int8 embedding)")
    started = time.perf_counter()
    big = onnx_size(fp32) > 1_800_000_000
    matmuls = out / f"matmul-{ONNX_NAME}"
    with quiet_logging():          # the quantizers log every node they skip
        quantizer = MatMulNBitsQuantizer(gemm_to_matmul(onnx.load(fp32 / ONNX_NAME)), bits=8,
                                         block_size=128, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(matmuls), use_external_data_format=big)
        del quantizer
        quantize_dynamic(matmuls, out / ONNX_NAME, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["Gather"], use_external_data_format=big)
    for leftover in out.glob("matmul-*"):
        leftover.unlink()
    for name in (TOKENIZER, "config.json"):
        if (fp32 / name).exists():
            (out / name).write_bytes((fp32 / name).read_bytes())
    manifest = read_manifest(fp32)
    manifest.update(precision="int8", quantization=QUANTIZATION, onnx_bytes=onnx_size(out),
                    seconds={"quantize": round(time.perf_counter() - started, 1)})
    write_manifest(out, manifest)


@contextlib.contextmanager
def quiet_logging():
    """Log only errors while the block runs (onnxruntime's quantizers are chatty)."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def gemm_to_matmul(model):
    """Rewrite each plain ``Gemm(A, W, C)`` with a constant W as ``MatMul(A, W) + C`` (GPT-2's
    Conv1D layers export as Gemm, which the 8-bit block quantizer does not take). In place."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0) \
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        if attrs.get("transB", 0):           # store W transposed, so that MatMul needs no flag
            w = weights[node.input[1]]
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name))
        product = f"{node.name or node.output[0]}/matmul"
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("MatMul", node.input[:2], [product],
                                          name=f"{node.name}_MatMul"))
            nodes.append(helper.make_node("Add", [product, node.input[2]], list(node.output),
                                          name=f"{node.name}_Add"))
        else:
            nodes.append(helper.make_node("MatMul", node.input[:2], list(node.output),
                                          name=f"{node.name}_MatMul"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def current(directory: Path, precision: str) -> bool:
    """Whether a complete export in ``directory`` was made the way this version makes it."""
    if not (directory / MANIFEST).is_file():
        return False
    return precision != "int8" or read_manifest(directory).get("quantization") == QUANTIZATION


def onnx_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir()
               if p.name.startswith(ONNX_NAME) or p.suffix == ".onnx_data")


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())
