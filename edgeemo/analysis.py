"""From activations to directions, and where in depth emotions separate best.

Direction per layer = mean(emotion) − mean(neutral) (default) or − the grand mean of the emotion
means; optionally with the top principal components of neutral text projected out (Anthropic's
denoising). Per-layer scores, against relative depth:

- accuracy     cross-validated 20-way nearest-centroid accuracy on held-out texts (primary)
- cosine       the paper's score: mean pairwise cosine of the emotion directions (lower is more
               separated; grand-mean centring pins it near −1/(E−1), so compare methods after
               re-centring both the same way)
- fisher       between-emotion over within-emotion variance
- anisotropy   mean pairwise cosine of neutral factual sentences (the baseline that any cosine
               must beat: small models' states all point roughly the same way)
"""

from __future__ import annotations

import numpy as np

from . import writes
from .emotions import NEUTRAL
from .errors import require
from .extract import Activations, read_pooled
from .vectors import DEFAULT_STRENGTH, ControlVector, at_strength, direction_layer

BASELINES = ("neutral", "grand")
BAND_WIDTH = 5             # layers in the steering band: the layers a vector writes and the probe reads


def neutral_components(acts: Activations, k: int) -> np.ndarray:
    """Top-k principal directions of neutral pooled states, per layer: (L, k, d)."""
    neutral = acts.by_label[NEUTRAL]                                    # (n, L, d)
    comps = []
    for layer in range(neutral.shape[1]):
        x = neutral[:, layer] - neutral[:, layer].mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps.append(vt[:k])
    return np.stack(comps)


def project_out(v: np.ndarray, comps: np.ndarray) -> np.ndarray:
    """Remove from v (L, d) its parts along comps (L, k, d) (orthonormal rows)."""
    coef = np.einsum("ld,lkd->lk", v, comps)
    return v - np.einsum("lk,lkd->ld", coef, comps)


def directions(acts: Activations, *, baseline: str = "neutral",
               denoise: int = 0) -> dict[str, np.ndarray]:
    """Emotion -> (L, d) direction, unnormalised (its norm says how far the mean moved)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}")
    means = {e: acts.by_label[e].mean(0) for e in acts.emotions}       # e -> (L, d)
    if baseline == "neutral":
        ref = acts.by_label[NEUTRAL].mean(0)
    else:
        ref = np.mean(list(means.values()), axis=0)
    out = {e: m - ref for e, m in means.items()}
    if denoise:
        comps = neutral_components(acts, denoise)
        out = {e: project_out(v, comps) for e, v in out.items()}
    return {e: v.astype(np.float32) for e, v in out.items()}


def unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """vectors (n, d) -> mean cosine over distinct pairs."""
    u = unit(vectors)
    sims = u @ u.T
    n = len(u)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def paired_centred(acts: Activations) -> dict[str, np.ndarray]:
    """For generation, story i of every emotion comes from the same prompt template (a
    character, a place); subtracting each template's mean over emotions removes what the stories
    share by topic, so that separation measures emotion, not scenery. Other designs pass through."""
    if not acts.info.get("paired"):
        return acts.by_label
    stacked = np.stack([acts.by_label[e] for e in acts.emotions])       # (E, n, L, d)
    centred = stacked - stacked.mean(0, keepdims=True)
    out = {e: centred[i] for i, e in enumerate(acts.emotions)}
    out[NEUTRAL] = acts.by_label[NEUTRAL] - acts.by_label[NEUTRAL].mean(0)
    return out


def cv_accuracy(acts: Activations, folds: int = 4, *, baseline: str = "neutral",
                per_emotion: bool = False):
    """Cross-validated nearest-centroid accuracy per layer, over the activations' emotions.

    Fold f holds out every ``folds``-th text of each emotion; centroids (minus the neutral mean)
    come from the rest, and a held-out text goes to the centroid with the highest cosine.
    With ``per_emotion``, returns {emotion: (L,) recall} instead.
    """
    labels = acts.emotions
    neutral_mean = acts.by_label[NEUTRAL].mean(0)                       # (L, d)
    by_label = paired_centred(acts)
    correct = {e: np.zeros(len(acts.layers)) for e in labels}
    total = {e: 0 for e in labels}
    for f in range(folds):
        train, test = {}, []
        for e in labels:
            x = by_label[e] - neutral_mean                              # (n, L, d)
            held = np.arange(len(x)) % folds == f
            if held.all() or not held.any():
                continue
            train[e] = x[~held].mean(0)
            test += [(e, row) for row in x[held]]
        if len(train) < 2:
            continue
        names = list(train)
        cents = unit(np.stack([train[e] for e in names]))               # (E, L, d)
        for e, row in test:
            sims = np.einsum("eld,ld->el", cents, unit(row))            # (E, L)
            correct[e] += np.array(names)[sims.argmax(0)] == e
            total[e] += 1
    if per_emotion:
        return {e: correct[e] / max(total[e], 1) for e in labels}
    return sum(correct.values()) / max(sum(total.values()), 1)


def fisher_ratio(acts: Activations) -> np.ndarray:
    """Between-emotion over within-emotion variance (trace), per layer."""
    by_label = paired_centred(acts)
    groups = [by_label[e] for e in acts.emotions]                       # each (n, L, d)
    grand = np.concatenate(groups).mean(0)
    between = sum(len(g) * ((g.mean(0) - grand) ** 2).sum(-1) for g in groups)
    within = sum(((g - g.mean(0)) ** 2).sum(-1).sum(0) for g in groups)
    return between / np.maximum(within, 1e-12)


def anisotropy(neutral_states: np.ndarray) -> np.ndarray:
    """(n, L, d) pooled states of neutral factual sentences -> mean pairwise cosine per layer."""
    return np.array([mean_pairwise_cosine(neutral_states[:, l])
                     for l in range(neutral_states.shape[1])])


def best_band(scores: np.ndarray, layers: list[int], width: int = BAND_WIDTH) -> tuple[int, int]:
    """The ``width`` consecutive layers with the highest mean score: (first, last) indices."""
    width = min(width, len(layers))
    means = np.convolve(scores, np.ones(width) / width, mode="valid")
    start = int(means.argmax())
    return layers[start], layers[start + width - 1]


def layer_report(acts: Activations, neutral_facts: np.ndarray | None = None, *,
                 baseline: str = "neutral", denoise: int = 0) -> dict:
    """Every per-layer score, the best band, and the settings, as a JSON-able dict."""
    dirs = directions(acts, baseline=baseline, denoise=denoise)
    stacked = np.stack([dirs[e] for e in acts.emotions])                # (E, L, d)
    recentred = stacked - stacked.mean(0)                               # comparable across methods
    n_layer = acts.info["n_layer"]
    report = {
        "model": acts.info["model"], "method": acts.method, "baseline": baseline,
        "denoise": denoise, "emotions": acts.emotions, "n_layer": n_layer,
        "layers": acts.layers,
        "depth": [round(k / n_layer, 4) for k in acts.layers],
        "accuracy": cv_accuracy(acts, baseline=baseline).round(4).tolist(),
        "cosine": [round(mean_pairwise_cosine(stacked[:, l]), 4) for l in range(len(acts.layers))],
        "cosine_recentred": [round(mean_pairwise_cosine(recentred[:, l]), 4)
                             for l in range(len(acts.layers))],
        "fisher": fisher_ratio(acts).round(5).tolist(),
        "residual_norm": np.round(acts.norms, 2).tolist(),
        "chance": round(1 / len(acts.emotions), 4),
    }
    if neutral_facts is not None:
        report["anisotropy"] = anisotropy(neutral_facts).round(4).tolist()
    first, last = best_band(np.array(report["accuracy"]), acts.layers)
    report["best_band"] = [first, last]
    report["best_band_depth"] = [round(first / n_layer, 3), round(last / n_layer, 3)]
    return report


# --- control vectors ----------------------------------------------------------------------------

def make_vector(acts: Activations, emotion: str, direction: np.ndarray, band: tuple[int, int], *,
                strength: float | None = None, settings: dict | None = None):
    """A llama.cpp control vector for ``emotion`` over hidden states ``band`` (inclusive), at
    ``strength`` (default ``vectors.DEFAULT_STRENGTH``; see ``vectors.at_strength`` for what the
    tensors hold). direction: (L, d) over ``acts.layers``.
    """
    first, last = band
    picked = [i for i, k in enumerate(acts.layers) if first <= k <= last]
    if not picked:
        raise ValueError(f"hidden states {first}-{last} are not among {acts.layers}")
    n_layer = acts.info["n_layer"]
    raw = {direction_layer(acts.layers[i], n_layer=n_layer): direction[i] for i in picked}
    metadata = {
        "emotion": emotion, "method": acts.method, "pooling": acts.info.get("pooling", "mean"),
        "layers": f"{min(raw)}-{max(raw)}",
        "hidden_states": f"{acts.layers[picked[0]]}-{acts.layers[picked[-1]]}",
        "residual_norm": [float(x) for x in acts.norms[picked]],
        "model": acts.info["model"], "n_layer": int(n_layer),
        "source_sha256": acts.info["source_sha256"],
        "stimuli_hash": acts.info.get("stimuli_hash", ""),
        "edgeemo_version": acts.info.get("edgeemo_version", ""),
        **(settings or {}),
    }
    if "seed" in acts.info:
        metadata["seed"] = int(acts.info["seed"])
    vec = ControlVector(acts.info["architecture"], acts.info["n_embd"], raw, metadata)
    return at_strength(vec, DEFAULT_STRENGTH if strength is None else strength)


def band_scores(acts: Activations) -> np.ndarray:
    """The per-layer score the steering band is chosen on: 20-way accuracy when there are
    several emotions; for one custom concept, how far its texts sit from neutral (a d′)."""
    if len(acts.emotions) >= 3:
        return cv_accuracy(acts)
    concept = acts.by_label[acts.emotions[0]]                           # (n, L, d)
    neutral = acts.by_label[NEUTRAL]
    diff = concept.mean(0) - neutral.mean(0)                            # (L, d)
    axis = unit(diff)
    a = np.einsum("nld,ld->nl", concept, axis)
    b = np.einsum("nld,ld->nl", neutral, axis)
    spread = np.sqrt((a.var(0) + b.var(0)) / 2) + 1e-9
    return (a.mean(0) - b.mean(0)) / spread


def per_emotion_separation(acts: Activations, band: tuple[int, int]) -> dict[str, float]:
    """How well each emotion separates from the other 19: its cross-validated recall (held-out
    texts assigned to it), averaged over ``band``. Unlike the mean pairwise cosine, which
    re-centring pins near −1/(E−1) for every method, recall can be compared across methods."""
    recall = cv_accuracy(acts, per_emotion=True)
    picked = [i for i, k in enumerate(acts.layers) if band[0] <= k <= band[1]]
    return {e: float(r[picked].mean()) for e, r in recall.items()}


def compare(sep_a: dict[str, float], sep_b: dict[str, float]) -> dict:
    """Mann-Whitney U (two-sided) and Cohen's d between two methods' per-emotion scores."""
    require("eval", "scipy")
    from scipy.stats import mannwhitneyu

    common = [e for e in sep_a if e in sep_b]
    a = np.array([sep_a[e] for e in common])
    b = np.array([sep_b[e] for e in common])
    u, p = mannwhitneyu(a, b, alternative="two-sided")
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return {"n": len(common), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "mann_whitney_u": float(u), "p_value": float(p),
            "cohens_d": float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0}


def plot_layers(reports: list[dict], path) -> None:
    """Accuracy (and anisotropy) against relative depth, one line per report."""
    require("eval", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rep in reports:
        ax.plot(rep["depth"], rep["accuracy"], marker="o", ms=3,
                label=f"{rep['model']} · {rep['method']} accuracy")
        lo, hi = rep["best_band_depth"]
        ax.axvspan(lo, hi, alpha=0.08)
        if "anisotropy" in rep:
            ax.plot(rep["depth"], rep["anisotropy"], ls=":", lw=1,
                    label=f"{rep['model']} anisotropy (neutral cosine)")
    ax.axhline(reports[0]["chance"], color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("relative depth (hidden state / n_layer)")
    ax.set_ylabel("held-out accuracy · neutral cosine")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Where emotions separate")
    fig.tight_layout()
    with writes.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def classify(states: np.ndarray, acts: Activations, dirs: dict[str, np.ndarray],
             band: tuple[int, int]) -> list[list[tuple[str, float]]]:
    """Rank emotions for pooled states (n, L, d) read at ``acts.layers``: the cosine of each
    state (minus the neutral mean) with each direction, averaged over ``band``; best first."""
    picked = [i for i, k in enumerate(acts.layers) if band[0] <= k <= band[1]]
    names = list(dirs)
    centred = states[:, picked] - acts.by_label[NEUTRAL].mean(0)[picked]   # (n, l, d)
    cents = unit(np.stack([dirs[e][picked] for e in names]))               # (E, l, d)
    sims = np.einsum("nld,eld->nel", unit(centred), cents).mean(-1)        # (n, E)
    return [sorted(zip(names, row.tolist()), key=lambda p: -p[1]) for row in sims]


def heldout_accuracy(acts: Activations, texts: dict[str, list[str]], reader,
                     band: tuple[int, int]) -> dict:
    """Nearest-direction accuracy on texts the extraction never saw (top-1 and top-3)."""
    dirs = directions(acts)
    hits1 = hits3 = total = 0
    per_emotion = {}
    for emotion, items in texts.items():
        if emotion == NEUTRAL or emotion not in dirs:
            continue
        states, _ = read_pooled(reader, items, acts.layers, pooling=acts.info.get("pooling", "mean"))
        ranks = [[name for name, _ in r] for r in classify(states, acts, dirs, band)]
        top1 = sum(r[0] == emotion for r in ranks)
        hits1 += top1
        hits3 += sum(emotion in r[:3] for r in ranks)
        total += len(ranks)
        per_emotion[emotion] = top1 / len(ranks)
    return {"top1": hits1 / total, "top3": hits3 / total, "n": total,
            "chance": 1 / len(dirs), "per_emotion": per_emotion}
