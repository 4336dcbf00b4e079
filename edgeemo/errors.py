"""Errors that reach the user.

Library code raises these; the CLI prints ``str(error)`` as one line and exits 1. Each message says
what went wrong and what to do about it. Set ``EDGEEMO_RAISE_ERRORS=1`` to see the traceback.
"""


class EdgeemoError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class UnknownModel(EdgeemoError):
    pass


class ModelFileError(EdgeemoError):
    """A file that is not a GGUF model, or one we cannot use."""


class ChecksumMismatch(EdgeemoError):
    pass


class NetworkError(EdgeemoError):
    pass


class StoreError(EdgeemoError):
    """The store cannot be written: read-only, full, or not a directory."""


class ExportError(EdgeemoError):
    pass


class UnsupportedArchitecture(ExportError):
    pass


class VectorFormatError(EdgeemoError):
    pass


class VectorNotFound(VectorFormatError):
    """A directory given for vectors has no file for an emotion asked for."""


class UnknownEmotion(EdgeemoError):
    pass


class MissingExtra(EdgeemoError):
    """An optional part of edgeemo is not installed."""


EXTRAS = {"export": "GGUF -> ONNX export", "eval": "evaluation, statistics and plots",
          "serve": "the HTTP server"}


def require(extra: str, *modules: str) -> None:
    """Import ``modules`` or raise a one-line MissingExtra naming the ``pip install`` to run."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtra(f"{EXTRAS.get(extra, extra)} needs the '{extra}' extra ({name} is "
                               f"not installed): pip install 'edgeemo[{extra}]'") from None


class NotSteerable(EdgeemoError):
    """llama.cpp loads the model but ignores control vectors for its architecture."""
