"""Setting a control vector on a live llama-cpp-python model: the only ctypes code in edgeemo.

llama-cpp-python has no high-level call for control vectors, so we call the C API directly:

    int32_t llama_set_adapter_cvec(struct llama_context * ctx, const float * data, size_t len,
                                   int32_t n_embd, int32_t il_start, int32_t il_end);

(``llama_apply_adapter_cvec`` before llama-cpp-python 0.3.17, ``llama_control_vector_apply`` in
0.3.6 and earlier; all three take the context and the same arguments.) Invariants the C function relies on and we enforce:

* ``data`` starts at layer 1 (llama.cpp keeps no layer-0 tensor) and we always pass the full
  ``n_embd * (n_layer - 1)`` floats: llama.cpp copies only the layers the buffer covers, so a short
  buffer would leave an earlier vector's values in the upper layers.
* ``data = NULL`` turns steering off (the tensors stay allocated).
* llama.cpp copies the buffer into its own tensors (``ggml_backend_tensor_set`` in
  ``llama_adapter_cvec::apply``), so the numpy buffer need not outlive the call.
* After any change we call ``Llama.reset()`` (unless asked not to): ``generate`` otherwise reuses
  the cached prompt prefix, whose keys and values were computed with the previous vector.

Layer indices follow :mod:`edgeemo.vectors`: layer N here is tensor ``direction.N``.
"""

from __future__ import annotations

import ctypes

import numpy as np

# Newest name first: in 0.3.36 the middle one is a Python wrapper that warns it is deprecated.
_FUNCTION_NAMES = ("llama_set_adapter_cvec", "llama_apply_adapter_cvec",
                   "llama_control_vector_apply")


def _function():
    import llama_cpp

    for name in _FUNCTION_NAMES:
        fn = getattr(llama_cpp, name, None)
        if fn is not None:
            return fn
    raise RuntimeError(f"llama_cpp {getattr(llama_cpp, '__version__', '?')} has none of "
                       f"{', '.join(_FUNCTION_NAMES)}; install llama-cpp-python>=0.3.17")


def model_shape(llm) -> tuple[str, int, int]:
    """``(architecture, n_embd, n_layer)`` of a loaded ``llama_cpp.Llama``."""
    import llama_cpp

    arch = llm.metadata.get("general.architecture", "")
    n_embd = int(llm.n_embd())
    n_layer_fn = getattr(llama_cpp, "llama_model_n_layer", None) or getattr(llama_cpp, "llama_n_layer")
    n_layer = int(n_layer_fn(llm._model.model))
    return arch, n_embd, n_layer


def apply(llm, buffer: np.ndarray | None, *, il_start: int | None = None,
          il_end: int | None = None, reset: bool = True) -> None:
    """Set ``buffer`` (from ``ControlVector.buffer`` or ``mix_buffer``) as the control vector.

    ``buffer=None`` clears it. ``il_start``/``il_end`` are the inclusive llama.cpp layer range
    that is steered; by default the layers whose part of the buffer is not zero, since llama.cpp
    adds the buffer at every layer of the range, zeros included. Raises ValueError for a buffer of
    the wrong type or size and RuntimeError if llama.cpp refuses it. ``reset=False`` keeps the
    cached keys and values (reply-only steering sets the vector between the prompt and the reply
    on purpose, see ``steer.EmotionModel.stream_ids``).
    """
    _, n_embd, n_layer = model_shape(llm)
    fn = _function()

    if buffer is None:
        data, length = None, 0
        il_start, il_end = il_start or 1, il_end or n_layer - 1
    else:
        if not isinstance(buffer, np.ndarray) or buffer.dtype != np.float32:
            raise ValueError(f"control-vector buffer must be a float32 numpy array, not "
                             f"{getattr(buffer, 'dtype', type(buffer).__name__)}")
        if buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise ValueError("control-vector buffer must be a 1-D contiguous array")
        expected = n_embd * (n_layer - 1)
        if buffer.size != expected:
            raise ValueError(f"control-vector buffer has {buffer.size} floats but this model needs "
                             f"n_embd * (n_layer - 1) = {n_embd} * {n_layer - 1} = {expected}")
        written = steered_layers(buffer, n_embd)
        il_start = (written[0] if written else 1) if il_start is None else il_start
        il_end = (written[-1] if written else n_layer - 1) if il_end is None else il_end
        if not 1 <= il_start <= il_end <= n_layer - 1:
            raise ValueError(f"layer range {il_start}..{il_end} is outside 1..{n_layer - 1}")
        data, length = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buffer.size

    rc = fn(llm._ctx.ctx, data, length, n_embd, il_start, il_end)
    if rc != 0:
        raise RuntimeError(f"llama.cpp refused the control vector (return code {rc}; "
                           f"n_embd {n_embd}, {length} floats, layers {il_start}..{il_end})")
    if reset:
        llm.reset()


def last_logits(llm) -> np.ndarray:
    """The next-token logits after the last ``llm.eval`` (float64, a copy). llama-cpp-python
    copies logits into ``Llama.scores`` only with ``logits_all=True``; llama.cpp itself keeps
    the batch's last token's logits, read here."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)


def steered_layers(buffer: np.ndarray, n_embd: int) -> list[int]:
    """The llama.cpp layers (1-based rows of the buffer) that hold something other than zeros."""
    rows = buffer.reshape(-1, n_embd)
    return [int(i) + 1 for i in np.flatnonzero(np.any(rows != 0, axis=1))]
