"""edgeemo: emotion vectors for small language models, extracted on CPU, applied by llama.cpp.

    from edgeemo import EmotionModel, ChatSession, ControlVector, Mix, make_vectors, models

The public names are imported on first use, so ``import edgeemo`` stays light.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "EmotionModel": "steer", "Completion": "steer", "ChatSession": "chat", "ControlVector": "vectors",
    "at_strength": "vectors", "check_strength": "vectors", "DEFAULT_STRENGTH": "vectors",
    "make_vectors": "make", "layer_report": "make", "export_model": "export",
    "Probe": "probe", "HiddenStateReader": "reader", "EdgeemoError": "errors", "Mix": "mix",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeemo' has no attribute {name!r}")
