"""Export a GGUF model to an ONNX model that outputs every layer's hidden state.

    GGUF header ──transformers config, optimum's HiddenStates config──► traced graph (no weights)
    GGUF tensors ──one at a time, renamed and fixed as transformers loads them──► model.onnx
                                   outputs hidden_states.0 … hidden_states.{n_layer}

``hidden_states.0`` is the embedding output and ``hidden_states.k`` the output of block k−1; the
last one is after the final norm (see ``vectors.py`` for how these map onto llama.cpp layers).
The graph is traced from transformers' model with stand-in weights and the real weights written in
afterwards (``graph.py``), so an export needs memory for its largest tensor, not for the model.
The export is cached in the store, keyed by the GGUF's sha256 and the precision, with the
tokenizer and a manifest beside it. ``int8`` has every MatMul's weights in 8-bit blocks
(onnxruntime's MatMulNBits) and an int8 embedding: a quarter of the size, directions at cosine
>= 0.997 to fp32 ones. Both precisions are made straight from the GGUF.

Needs the ``export`` extra (transformers, optimum-onnx, torch); the rest of edgeemo does not.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__, graph, store, writes
from .errors import ExportError, UnsupportedArchitecture, require
from .models import Model, check_gguf

PRECISIONS = store.EXPORT_PRECISIONS
ONNX_NAME = "model.onnx"
MANIFEST = store.EXPORT_MANIFEST
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
    return store.exports(model.sha256)


def export_model(model: Model, precision: str = "fp32", *, force: bool = False,
                 say=None) -> Path:
    """Export ``model`` (present in the store or a local path) and return its export directory."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    say = say or (lambda msg: None)
    sha = model.sha256
    out = store.export_dir(sha, precision)
    if current(out, precision) and not force:      # no torch, no GGUF parse to reuse an export
        say(f"using the cached export in {out}")
        return out
    with one_gguf_parse():
        info = gguf_info(model.path)
        if (out / MANIFEST).is_file() and not force:
            say(f"the int8 export in {out} was quantized the older way; exporting it again")
        require_export_extra()
        supported = supported_architectures()
        if info["architecture"] not in supported:
            raise UnsupportedArchitecture(
                f"{model.path.name} has architecture '{info['architecture']}', which transformers "
                f"cannot load from GGUF; supported: {', '.join(supported)}")
        # One process exports a model at a time; a second one waits, then reuses the export.
        with writes.lock(f"export-{store.model_key(sha)}-{precision}",
                        what=f"exporting {model.name} ({precision})", say=say):
            if current(out, precision) and not force:
                say(f"using the export another process made in {out}")
                return out
            with writes.atomic_path(out, directory=True) as tmp:
                export_onnx(model, info, sha, precision, tmp, say)
    return out


@contextlib.contextmanager
def one_gguf_parse():
    """Within the block, a GGUF header is parsed once. Every ``gguf.GGUFReader(path)`` call,
    transformers' too (it reads the header for the config, again for the tokenizer and again
    for the tokenizer's config), returns the first reader of that path: a header with a
    150,000-token vocabulary takes seconds to parse, and an export read it five times. What
    transformers derives from a header is kept too: ``load_gguf_checkpoint`` without tensors
    (config and tokenizer, four calls, a second each on the default model) and gguf's tensor
    name map (built again for each of several hundred modules: 5 s on the default model)."""
    import gguf

    made, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        if mode != "r":
            return made(path, mode)
        key = os.path.realpath(path)
        if key not in readers:
            readers[key] = made(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        with parsed_once():
            yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = made, name_map


@contextlib.contextmanager
def parsed_once():
    """transformers' ``load_gguf_checkpoint(path)`` (no tensors) computed once per path in the
    block, a copy handed to each caller (they edit what they get)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:                      # the export extra is missing: said later, plainly
        yield
        return
    found = getattr(gguf_utils, "load_gguf_checkpoint", None)
    if found is None:                        # another transformers: parse as it does
        yield
        return
    original = getattr(found, "__wrapped__", found)
    results: dict = {}
    block = {"open": True}

    @functools.wraps(original)
    def load(path, return_tensors=False, model_to_load=None):
        if return_tensors or model_to_load is not None or not block["open"]:
            return original(path, return_tensors, model_to_load)
        key = os.path.realpath(path)
        if key not in results:
            results[key] = original(path)
        return copy.deepcopy(results[key])

    def binds(module) -> bool:
        fn = getattr(module, "load_gguf_checkpoint", None)
        return getattr(fn, "__wrapped__", fn) is original

    bound = [m for name, m in list(sys.modules.items())
             if name.split(".")[0] == "transformers" and binds(m)]
    for module in bound:
        module.load_gguf_checkpoint = load   # modules imported in the block bind it themselves
    try:
        yield
    finally:
        results.clear()
        block["open"] = False                # a module that bound it meanwhile gets the original
        for module in bound:
            module.load_gguf_checkpoint = original


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


def export_onnx(model: Model, info: dict, sha: str, precision: str, out: Path, say) -> None:
    """Trace the graph with stand-in weights, then write the GGUF's weights into it one tensor at
    a time (see ``graph.py``): memory stays near the largest tensor, whatever the model's size."""
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    say(f"reading the configuration and tokenizer of {model.path.name}")
    try:
        skeleton = graph.Skeleton(model.path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model.path.parent, gguf_file=model.path.name)
    except Exception as exc:
        raise ExportError(f"transformers could not load {model.path.name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    config = skeleton.config
    n_layer = config.num_hidden_layers
    say(f"tracing the graph of {n_layer + 1} hidden states")
    traced = out / f"traced-{ONNX_NAME}"
    try:
        skeleton.trace(hidden_states_config(skeleton.model), traced)
    except Exception as exc:
        raise ExportError(f"optimum could not export {info['architecture']}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    loaded = time.perf_counter()
    say(f"writing the weights ({'8-bit blocks' if precision == 'int8' else 'fp32'}) "
        f"from {model.path.name}")
    try:
        counts = graph.fill(traced, skeleton.gguf_weights(model.path), out / ONNX_NAME,
                            int8=precision == "int8", say=say)
    except graph.MissingWeights as exc:
        raise UnsupportedArchitecture(
            f"transformers reads {info['architecture']} from {model.path.name} but finds no "
            f"GGUF tensor for {len(exc.names)} of its weights (e.g. {exc.names[0]}), so its "
            f"hidden states would be wrong; this architecture cannot be exported with "
            f"transformers {transformers.__version__}") from None
    finally:
        traced.unlink(missing_ok=True)
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER))
    config.save_pretrained(out)
    write_manifest(out, {
        "model": model.name,
        "architecture": info["architecture"],
        "n_layer": n_layer,
        "n_embd": config.hidden_size,
        "source_sha256": sha,
        "source_file": model.path.name,
        "source_path": str(model.path.resolve()),
        "precision": precision,
        **({"quantization": QUANTIZATION} if precision == "int8" else {}),
        "weights": counts,
        # tokenize as llama.cpp does: it prepends BOS only if the GGUF says so
        "bos_token_id": info["bos_token_id"] if info["bos_token_id"] is not None
        else tokenizer.bos_token_id,
        "add_bos": bool(info["add_bos"]) if info["add_bos"] is not None
        else bool(getattr(tokenizer, "add_bos_token", False)),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "onnx_bytes": onnx_size(out),
        "seconds": {"trace": round(loaded - started, 1),
                    "weights": round(time.perf_counter() - loaded, 1)},
        "edgeemo_version": __version__,
    })


# What "int8" means, recorded in the manifest: an int8 export made another way is made again.
# Weight-only 8-bit blocks keep the activations in float: the directions read from it are at cosine
# >= 0.997 to fp32 ones on SmolLM2-135M (dynamic int8, which quantizes activations too: 0.916).
QUANTIZATION = "matmul-nbits-8bit-block128-int8compute+gather-int8"


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
