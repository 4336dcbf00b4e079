"""The emotion probe: which of the model's emotion directions a text lights up.

A text is read by the ONNX model, pooled like the stimuli were, centred on a reference that
matches how the vectors were made (vectors against neutral text: the mean of the neutral texts;
vectors against the mean of all emotions: the mean of the emotional vignettes), and compared
(cosine) with each emotion vector at that vector's own layers. The ranking is
the model's readout of the text, the monitoring use Anthropic proposes for emotion probes.
"""

from __future__ import annotations

import numpy as np

from . import emotions, models, stimuli, store, writes
from .errors import EdgeemoError
from .export import export_model
from .extract import read_pooled
from .reader import HiddenStateReader
from .steer import find_vector
from .vectors import ControlVector, hidden_state_index


class Probe:
    """``say(message)`` hears about the export and the one-time reading of the reference texts,
    which ``progress(label, done, total)`` follows text by text."""

    def __init__(self, model: models.Model, *, names: list[str] | None = None, say=None,
                 progress=None):
        self.model = model
        self.say, self.progress = say, progress
        self.vectors: dict[str, ControlVector] = {}
        for name in names or emotions.EMOTIONS:
            path = find_vector(model, name)
            if path is not None:
                self.vectors[name] = ControlVector.from_gguf(path)
        if len(self.vectors) < 2:
            raise EdgeemoError(f"the probe needs emotion vectors for {model.name}: make them with "
                               f"`edgeemo export-vector --all --model {model.name}`")
        self.reader = HiddenStateReader(export_model(model, say=say), notice=say)
        self.layers = sorted({hidden_state_index(n) for v in self.vectors.values()
                              for n in v.directions})
        self.reference = self.reference_mean()                            # (L, d)

    def reference_texts(self) -> list[str]:
        """The texts whose mean state is the zero of the readout. A vector made against the mean
        of all emotions points away from a typical emotional text, so a text is centred on the
        mean of the emotional vignettes; one made against neutral text, on the neutral texts
        (held-out vignettes in the probe's top 5: 18 of 24 against 11 of 24 for the prebuilt
        grand-mean vectors)."""
        texts = stimuli.comprehension()
        if any(v.metadata.get("baseline") == "grand" for v in self.vectors.values()):
            return [t for name, group in texts.items() if name != "neutral" for t in group]
        return texts["neutral"]

    def reference_mean(self) -> np.ndarray:
        """Mean pooled state of :meth:`reference_texts` at the probe's layers (cached)."""
        texts = self.reference_texts()
        key = stimuli.stimuli_hash(self.layers, texts)[:16]
        path = store.cache_dir("probe", self.model.sha256) / f"reference-{key}.npy"
        if path.is_file():
            return np.load(path)
        if self.say:
            self.say(f"reading the probe's {len(texts)} reference texts (once for this model)")
        states, _ = read_pooled(self.reader, texts, self.layers, label="probe reference",
                                progress=self.progress)
        mean = states.mean(0)
        with writes.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, mean)
        return mean

    def scores(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """For each text, (emotion, score) pairs ranked best first; score = mean cosine."""
        if not texts or any(not t.strip() for t in texts):
            raise EdgeemoError("the probe needs non-empty text")
        states, _ = read_pooled(self.reader, texts, self.layers)          # (n, L, d)
        centred = states - self.reference
        centred /= np.linalg.norm(centred, axis=-1, keepdims=True) + 1e-12
        out = []
        for row in centred:
            ranked = []
            for name, vec in self.vectors.items():
                cos = [float(row[self.layers.index(hidden_state_index(n))] @ d / np.linalg.norm(d))
                       for n, d in vec.directions.items()]
                ranked.append((name, float(np.mean(cos))))
            out.append(sorted(ranked, key=lambda p: -p[1]))
        return out
