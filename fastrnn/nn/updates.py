"""Fused optimizer updates on flat vectors, by the kernels' binding (csrc/optim.c): what fastrnn.optimizers
calls once per step.  Each returns False, touching nothing, when its arrays are not 1-D contiguous float32 /
float64 arrays of one dtype and size; the caller then uses its numpy form (the same numbers)."""
from .. import _core


def adam(w, g, m, v, vh, c1, c2, alpha, eps):
    """Keras 3's Adam step in place: m += (g - m) c1; v += (g^2 - v) c2; vh = max(vh, v) when vh is given
    (amsgrad, then used for v); w -= alpha m / (sqrt(v) + eps)."""
    return _core.adam_update(w, g, m, v, vh, float(c1), float(c2), float(alpha), float(eps))
