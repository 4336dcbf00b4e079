"""Control vectors: the ControlVector type, the layer-index rule and strength.

The layer-index rule
--------------------
llama.cpp adds the control-vector tensor ``direction.N`` to the output of block ``N`` (0-based),
after the block's FFN residual add. In the HF/ONNX convention that output is
``hidden_states[N + 1]``: ``hidden_states[0]`` is the embedding output and
``hidden_states[n_layer]`` is taken after the final norm, so it has no llama.cpp counterpart.
Hence:

* a direction measured on ``hidden_states[k]`` is written as ``direction.{k - 1}``;
* ``direction.0`` does not exist: llama.cpp keeps no tensor for block 0 and its loader rejects
  the whole file when one is present;
* the layers we can extract for are ``N = 1 .. n_layer - 2`` (:func:`usable_layers`); llama.cpp
  also accepts ``N = n_layer - 1``, which only matters for vectors made elsewhere.

Every other module converts between the two conventions with :func:`hidden_state_index` and
:func:`direction_layer`, never with a bare ``+ 1`` or ``- 1``.

The file format is in ``vectorfile.py``: :meth:`ControlVector.to_gguf` and
:meth:`ControlVector.from_gguf` write and read it.

Strength
--------
A strength is a fraction of each steered layer's typical residual norm (the unit Anthropic and
Jeong use). An edgeemo vector stores its tensors *at* its recommended strength:
``direction.N = unit direction × strength × residual_norm[N]``, with ``edgeemo.strength`` and
``edgeemo.residual_norm`` in the metadata, so stock llama.cpp at scale 1.0 steers at that strength.
Stock llama.cpp steers the prompt's tokens too, and edgeemo by default only the reply's, so a
calibrated file may carry a second, larger ``edgeemo.reply_strength``: the strength edgeemo's
reply-only steering applies when none is asked for, while the tensors stay at the one that keeps
whole-sequence greedy replies coherent (``edgeemo calibrate --stock``).
This module owns that definition: :data:`DEFAULT_STRENGTH`, :data:`MAX_STRENGTH`,
:func:`check_strength`, :func:`at_strength` (make or re-scale a vector) and :func:`scale_for`
(the factor that takes a file's tensors to another strength). A foreign vector (llama.cpp's
cvector-generator, repeng) has no strength; it applies at scale 1, or at the scale asked for.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import vectorfile
from .errors import EdgeemoError, VectorFormatError
from .vectorfile import metadata_value


# --- the layer-index rule -------------------------------------------------------------------------

def hidden_state_index(direction_layer: int, *, n_layer: int | None = None) -> int:
    """The HF/ONNX ``hidden_states`` index whose activations ``direction.N`` is added to: N + 1."""
    if direction_layer < 1:
        raise ValueError(f"direction layer {direction_layer} does not exist: llama.cpp control "
                         f"vectors start at layer 1 (direction.0 is rejected)")
    if n_layer is not None and direction_layer > n_layer - 1:
        raise ValueError(f"direction layer {direction_layer} does not exist in a model with "
                         f"{n_layer} layers (the last one is {n_layer - 1})")
    return direction_layer + 1


def direction_layer(hidden_state_index: int, *, n_layer: int | None = None) -> int:
    """The llama.cpp layer N (tensor ``direction.N``) for ``hidden_states[k]``: k - 1."""
    if hidden_state_index < 2:
        raise ValueError(f"hidden_states[{hidden_state_index}] has no control-vector layer: index 0 "
                         f"is the embedding output and index 1 would be direction.0, which "
                         f"llama.cpp rejects; use indices 2 and up")
    if n_layer is not None and hidden_state_index > n_layer - 1:
        raise ValueError(f"hidden_states[{hidden_state_index}] has no control-vector layer in a "
                         f"model with {n_layer} layers: hidden_states[{n_layer}] is after the "
                         f"final norm; use indices up to {n_layer - 1}")
    return hidden_state_index - 1


def usable_layers(n_layer: int) -> range:
    """The llama.cpp layers we extract directions for: 1 .. n_layer - 2 (inclusive)."""
    if n_layer < 3:
        raise ValueError(f"a model with {n_layer} layers has no layer a control vector can be "
                         f"extracted for (need at least 3)")
    return range(1, n_layer - 1)

# --- the control vector ---------------------------------------------------------------------------

@dataclass(eq=False)
class ControlVector:
    """Directions for one model, keyed by llama.cpp layer N (tensor ``direction.N``).

    Invariants, checked on construction: every key is an int >= 1; every value is a read-only,
    finite, float32 array of shape ``(n_embd,)`` owned by this vector (inputs are copied, so no
    caller array is aliased and arithmetic always builds new arrays).
    """

    model_hint: str
    n_embd: int
    directions: dict[int, np.ndarray]
    metadata: dict = field(default_factory=dict)
    # Where the vector was read from; used in messages only, not part of its value.
    source: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n_embd, numbers.Integral) or self.n_embd < 1:
            raise ValueError(f"n_embd must be a positive int, not {self.n_embd!r}")
        self.n_embd = int(self.n_embd)
        self.model_hint = str(self.model_hint)
        for layer in self.directions:
            _check_layer(layer)
        self.directions = {int(layer): self._own(layer, self.directions[layer])
                           for layer in sorted(self.directions)}
        for key in self.metadata:
            if not isinstance(key, str) or not key:
                raise ValueError(f"metadata keys must be non-empty strings, not {key!r}")
        self.metadata = {key: metadata_value(key, self.metadata[key])
                         for key in sorted(self.metadata)}

    def _own(self, layer: int, values) -> np.ndarray:
        arr = np.array(values, dtype=np.float32, copy=True)
        if arr.shape != (self.n_embd,):
            raise ValueError(f"direction for layer {layer} has shape {arr.shape}, expected "
                             f"({self.n_embd},)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"direction for layer {layer} has non-finite values")
        arr.flags.writeable = False
        return arr

    # -- value semantics --

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlVector):
            return NotImplemented
        return (self.model_hint == other.model_hint and self.n_embd == other.n_embd
                and self.metadata == other.metadata
                and self.directions.keys() == other.directions.keys()
                and all(np.array_equal(self.directions[k], other.directions[k])
                        for k in self.directions))

    __hash__ = None  # mutable container of arrays

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def name(self) -> str:
        return Path(self.source).name if self.source else ""

    # -- arithmetic (results are new vectors without metadata: the caller says what they mean) --

    def _like(self, directions: dict[int, np.ndarray]) -> "ControlVector":
        return ControlVector(self.model_hint, self.n_embd, directions)

    def _same_model(self, other: "ControlVector", what: str) -> None:
        if (self.model_hint, self.n_embd) != (other.model_hint, other.n_embd):
            raise VectorFormatError(
                f"cannot {what} control vectors made for different models: "
                f"{self.model_hint} (n_embd {self.n_embd}) and "
                f"{other.model_hint} (n_embd {other.n_embd})")

    def __add__(self, other: object) -> "ControlVector":
        if not isinstance(other, ControlVector):
            return NotImplemented
        self._same_model(other, "add")
        zero = np.zeros(self.n_embd, dtype=np.float32)
        layers = sorted(set(self.directions) | set(other.directions))
        return self._like({n: self.directions.get(n, zero) + other.directions.get(n, zero)
                           for n in layers})

    def __sub__(self, other: object) -> "ControlVector":
        if not isinstance(other, ControlVector):
            return NotImplemented
        self._same_model(other, "subtract")
        return self + (-other)

    def __neg__(self) -> "ControlVector":
        return self._like({n: -d for n, d in self.directions.items()})

    def __mul__(self, scale: object) -> "ControlVector":
        if not isinstance(scale, numbers.Real) or isinstance(scale, (bool, np.bool_)):
            return NotImplemented
        # float32 scale, as in buffer(): (v * s).buffer() == v.buffer(scale=s) exactly.
        s = np.float32(scale)
        return self._like({n: d * s for n, d in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: object) -> "ControlVector":
        if not isinstance(scale, numbers.Real) or isinstance(scale, (bool, np.bool_)):
            return NotImplemented
        if scale == 0:
            raise ZeroDivisionError("cannot divide a control vector by zero")
        s = np.float32(scale)
        return self._like({n: d / s for n, d in self.directions.items()})

    # -- llama.cpp buffer --

    def buffer(self, n_layer: int, scale: float = 1.0) -> np.ndarray:
        """The flat float32 buffer llama.cpp's ``llama_set_adapter_cvec`` takes.

        Shape ``((n_layer - 1) * n_embd,)``: llama.cpp keeps no tensor for layer 0, so layer N's
        direction starts at offset ``(N - 1) * n_embd``; layers without a direction are zero.
        """
        if n_layer < 2:
            raise ValueError(f"n_layer must be at least 2, not {n_layer}")
        too_high = [n for n in self.directions if n >= n_layer]
        if too_high:
            raise ValueError(f"vector has a direction for layer {max(too_high)} but the model has "
                             f"{n_layer} layers; call check_compatible() first")
        out = np.zeros((n_layer - 1) * self.n_embd, dtype=np.float32)
        s = np.float32(scale)
        for n, d in self.directions.items():
            start = (n - 1) * self.n_embd
            out[start:start + self.n_embd] = d * s
        return out

    # -- compatibility --

    def describe(self) -> str:
        """``llama (n_embd 576, 30 layers)`` -- the model this vector was made for."""
        hint = self.model_hint or "an unknown architecture"
        n_layer = self.metadata.get("n_layer")
        if isinstance(n_layer, int) and not isinstance(n_layer, bool):
            shape = f"{n_layer} layers"
        elif self.directions:
            shape = f"layers {min(self.directions)}-{max(self.directions)}"
        else:
            shape = "no layers"
        return f"{hint} (n_embd {self.n_embd}, {shape})"

    def check_compatible(self, model_hint: str, n_embd: int, n_layer: int,
                         model_name: str = "") -> None:
        """Raise VectorFormatError, naming both sides, unless this vector fits the model.

        The vector fits when n_embd is equal, every layer exists in the model (N < n_layer), and
        the architecture matches (skipped when the vector carries no model hint).
        """
        fits = (n_embd == self.n_embd
                and all(n < n_layer for n in self.directions)
                and (not self.model_hint or self.model_hint == model_hint))
        if fits:
            return
        vector = f"vector {self.name}" if self.name else "the vector"
        model = f"the model {model_name}" if model_name else "the model"
        extra = ""
        if n_embd == self.n_embd and self.directions and max(self.directions) >= n_layer:
            extra = f" (it has a direction for layer {max(self.directions)})"
        raise VectorFormatError(
            f"{vector} was made for {self.describe()}{extra} but {model} is {model_hint} "
            f"(n_embd {n_embd}, {n_layer} layers); export a vector for this model with "
            f"`edgeemo export-vector --model {model_name or '<model>'}`")

    # -- GGUF (the file format is in vectorfile.py) --

    def to_gguf(self, path: Path | str) -> Path:
        """Write the vector as a llama.cpp control-vector GGUF; return the path.

        Raises ValueError if the vector breaks an invariant (e.g. a ``direction.0`` added to
        ``directions`` after construction), so a file llama.cpp would reject is never written.
        """
        if not self.directions:
            raise ValueError("a control vector needs at least one direction")
        # Re-validate: the dicts are plain and may have been changed after construction.
        checked = ControlVector(self.model_hint, self.n_embd, self.directions, self.metadata)
        return vectorfile.write(path, checked.model_hint, checked.directions, checked.metadata)

    @classmethod
    def from_gguf(cls, path: Path | str) -> "ControlVector":
        """Read a control-vector GGUF; raise a one-line VectorFormatError for anything else
        (see :func:`edgeemo.vectorfile.read` for what is accepted)."""
        path = Path(path)
        model_hint, n_embd, directions, metadata = vectorfile.read(path)
        try:
            return cls(model_hint, n_embd, directions, metadata, source=str(path))
        except ValueError as exc:
            raise VectorFormatError(f"{path}: {exc}") from exc


def _check_layer(layer: Any) -> int:
    if not isinstance(layer, numbers.Integral) or isinstance(layer, (bool, np.bool_)):
        raise ValueError(f"direction layers are ints, not {layer!r}")
    if layer < 1:
        raise ValueError(f"direction.{layer} is not valid: llama.cpp control vectors start at "
                         f"layer 1 and its loader rejects a file with direction.0")
    return int(layer)


def mix_buffer(parts: list[tuple[ControlVector, float]], n_layer: int) -> np.ndarray:
    """The llama.cpp buffer of a weighted mix: the sum of each part's ``buffer(n_layer, scale)``.

    Summed in the order given, in float32, so a mix equals the sum of its parts exactly.
    """
    if not parts:
        raise ValueError("a mix needs at least one vector")
    first = parts[0][0]
    total = np.zeros((n_layer - 1) * first.n_embd, dtype=np.float32)
    for vector, scale in parts:
        first._same_model(vector, "mix")
        total += vector.buffer(n_layer, scale)
    return total


# --- strength -------------------------------------------------------------------------------------

DEFAULT_STRENGTH = 0.08   # fraction of the residual norm; `edgeemo calibrate` refines it per vector
MAX_STRENGTH = 1.0        # beyond a residual norm's worth the text is noise, whatever the emotion


def check_strength(strength: Any, *, positive: bool = False) -> float:
    """``strength`` as a float, or a one-line EdgeemoError saying what a strength may be."""
    if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, numbers.Real):
        raise EdgeemoError(f"strength must be a number such as 0.08, not {strength!r}")
    value = float(strength)
    if not np.isfinite(value):
        raise EdgeemoError(f"strength must be a finite number, not {strength}")
    if abs(value) > MAX_STRENGTH:
        raise EdgeemoError(f"strength {value} is beyond ±{MAX_STRENGTH} (a whole residual norm); "
                           f"useful values are about 0.02–0.2")
    if positive and value <= 0:
        raise EdgeemoError(f"strength {value} is not positive: give a fraction of the residual "
                           f"norm such as {DEFAULT_STRENGTH}")
    return value


def _strength_value(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if np.isfinite(value) and 0 < abs(value) <= MAX_STRENGTH else None


def recommended_strength(vec: ControlVector, *, whole_sequence: bool = False) -> float | None:
    """The strength to steer with when none is asked for: for reply-only steering (edgeemo's
    default) the file's ``reply_strength`` when it has one, else (and for ``whole_sequence``, the
    prompt steered too, as stock llama.cpp does) the strength its tensors are stored at. None
    for a foreign vector (or a bad value)."""
    stored = _strength_value(vec.metadata.get("strength"))
    if whole_sequence or stored is None:
        return stored
    reply = _strength_value(vec.metadata.get("reply_strength"))
    return stored if reply is None else reply


def scale_for(vec: ControlVector, strength: float | None, *,
              whole_sequence: bool = False) -> tuple[float, float]:
    """``(scale, applied)``: the factor on the file's tensors that steers at ``strength``.

    ``strength`` None means the vector's own (:func:`recommended_strength` for the steering
    mode). A foreign vector has no strength, so a number given for it is the scale itself (as
    ``--control-vector-scaled F:S`` in llama.cpp), and None is scale 1.
    """
    stored = _strength_value(vec.metadata.get("strength"))
    if strength is None:
        if stored is None:
            return 1.0, 1.0
        strength = recommended_strength(vec, whole_sequence=whole_sequence)
        return strength / stored, strength
    strength = check_strength(strength)
    return (strength / stored if stored else strength), strength


def _unit(d: np.ndarray) -> np.ndarray:
    return d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-12)


def at_strength(vec: ControlVector, strength: float, *, reply_strength: float | None = None,
                **metadata) -> ControlVector:
    """The vector with each tensor set to its unit direction × ``strength`` × that layer's
    residual norm (``metadata["residual_norm"]``, in layer order), and its metadata updated
    (``strength``, ``direction_scale``, plus ``metadata``). Used to make, calibrate and re-scale.
    ``reply_strength``: the strength of reply-only steering when it differs from ``strength``
    (see the module's docstring); a re-scale without it drops the file's old one."""
    strength = check_strength(strength, positive=True)
    if reply_strength is not None:
        reply_strength = check_strength(reply_strength, positive=True)
    norms = vec.metadata.get("residual_norm")
    if not isinstance(norms, list) or len(norms) != len(vec.layers):
        raise EdgeemoError(f"{vec.source or 'the vector'} has no per-layer residual_norm metadata "
                           f"for its {len(vec.layers)} layers; only edgeemo vectors can be "
                           f"re-scaled")
    directions, scales = {}, []
    for layer, norm in zip(vec.layers, norms):          # residual_norm is in layer order
        d = vec.directions[layer]
        if not np.any(d):
            raise EdgeemoError(f"{vec.source or 'the vector'}: direction.{layer} is zero; "
                               f"re-export the vector")
        scale = np.float32(strength) * np.float32(norm)  # float32, as the tensors are
        directions[layer] = _unit(d) * scale
        scales.append(float(scale))
    meta = {**{k: v for k, v in vec.metadata.items() if k != "reply_strength"},
            "strength": strength, "direction_scale": scales, **metadata}
    if reply_strength is not None and reply_strength != strength:
        meta["reply_strength"] = reply_strength
    return ControlVector(vec.model_hint, vec.n_embd, directions, meta, source=vec.source)
