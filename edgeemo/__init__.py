"""edgeemo: emotion vectors for small language models, extracted on CPU, applied by llama.cpp."""

__version__ = "0.1.0"
