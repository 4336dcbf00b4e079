"""Export a GGUF model to an ONNX model that outputs every layer's hidden state.

    GGUF ──transformers from_pretrained(dir, gguf_file=…)──► dequantized torch model
         ──optimum onnx_export_from_model + HiddenStates config──► model.onnx
                                   outputs hidden_states.0 … hidden_states.{n_layer}

``hidden_states.0`` is the embedding output and ``hidden_states.k`` the output of block k−1; the
last one is after the final norm (see ``vectors.py`` for how these map onto llama.cpp layers).
The export is cached in the store, keyed by the GGUF's sha256 and the precision, with the
tokenizer and a manifest beside it. ``int8`` is onnxruntime's dynamic quantization of the fp32
export, so that 1–3B models fit a laptop's memory.

Needs the ``export`` extra (transformers, optimum-onnx, torch); the rest of edgeemo does not.
"""

from __future__ import annotations

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
    return out if (out / MANIFEST).is_file() else None


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
    if (out / MANIFEST).is_file() and not force:      # no torch needed to reuse an export
        say(f"using the cached export in {out}")
        return out
    require_export_extra()
    supported = supported_architectures()
    if info["architecture"] not in supported:
        raise UnsupportedArchitecture(
            f"{model.path.name} has architecture '{info['architecture']}', which transformers "
            f"cannot load from GGUF; supported: {', '.join(supported)}")
    if precision == "int8":
        fp32 = export_model(model, "fp32", force=force, progress=progress)
        with store.atomic_path(out, directory=True) as tmp:
            quantize_int8(fp32, tmp, say)
        return out
    with store.atomic_path(out, directory=True) as tmp:
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
        hf = transformers.AutoModel.from_pretrained(
            model.path.parent, gguf_file=model.path.name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model.path.parent, gguf_file=model.path.name)
    except Exception as exc:
        raise ExportError(f"transformers could not load {model.path.name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
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


def quantize_int8(fp32: Path, out: Path, say) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say("quantizing the fp32 export to int8 (onnxruntime dynamic quantization)")
    started = time.perf_counter()
    big = onnx_size(fp32) > 1_800_000_000
    quantize_dynamic(fp32 / ONNX_NAME, out / ONNX_NAME, weight_type=QuantType.QInt8,
                     use_external_data_format=big)
    for name in (TOKENIZER, "config.json"):
        if (fp32 / name).exists():
            (out / name).write_bytes((fp32 / name).read_bytes())
    manifest = read_manifest(fp32)
    manifest.update(precision="int8", onnx_bytes=onnx_size(out),
                    seconds={"quantize": round(time.perf_counter() - started, 1)})
    write_manifest(out, manifest)


def onnx_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir()
               if p.name.startswith(ONNX_NAME) or p.suffix == ".onnx_data")


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())
