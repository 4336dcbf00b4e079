"""The layer-index rule, pinned against llama.cpp itself.

llama.cpp adds ``direction.N`` to the output of block N, which the ONNX export calls
``hidden_states.{N+1}``. To check it without reaching inside llama.cpp we use a substitution:
for two two-token texts [a, x] and [a, y], adding ``h_k(a,y)[1] − h_k(a,x)[1]`` (read from ONNX at
hidden state k) to llama.cpp's layer N turns x's residual stream into y's from that point on, so
llama.cpp's final state for [a, x] becomes the ONNX final state for [a, y] — but only when k is the
hidden state that layer N really writes. Off by one either way, the substitution misses.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeemo import _llama, vectors

pytestmark = pytest.mark.slow


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("layer", [12, 16, 20])
def test_direction_n_acts_on_hidden_state_n_plus_1(layer, default_gguf, default_reader):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(default_gguf), embedding=True, n_ctx=64, verbose=False,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
    _, n_embd, n_layer = _llama.model_shape(llm)
    a = llm.tokenize(b"The", add_bos=True)
    x, y = llm.tokenize(b" apple", add_bos=False), llm.tokenize(b" storm", add_bos=False)
    assert len(x) == len(y) == 1
    every = list(range(n_layer + 1))
    hx = next(default_reader.read([a + x], every))[:, -1]          # (n_layer+1, d) at x's position
    hy = next(default_reader.read([a + y], every))[:, -1]
    text_x = llm.detokenize(a + x).decode()

    def final_state_with(k):
        """llama.cpp's final state at x's position with h_k(y) − h_k(x) added at layer N."""
        buffer = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
        buffer[(layer - 1) * n_embd: layer * n_embd] = hy[k] - hx[k]
        _llama.set_control_vector(llm, buffer)
        return np.array(llm.embed(text_x, normalize=False))[-1]

    rule = vectors.hidden_state_index(layer)
    match = {k: cosine(final_state_with(k), hy[n_layer]) for k in (rule - 1, rule, rule + 1)}
    _llama.set_control_vector(llm, None)
    print(f"direction.{layer}: cosine to the substituted final state by hidden state k: {match}")
    assert rule == layer + 1
    assert match[rule] >= 0.99
    miss = {k: 1 - c for k, c in match.items()}        # what the substitution failed to carry
    assert 2 * miss[rule] < miss[rule - 1] and 2 * miss[rule] < miss[rule + 1]
