"""The numpy engine under fastrnn.torch: `spec(...)`, `forward(...)`, `backward(...)` with the contract of
fastrnn.nn.functional (LayerSpec, F.forward, F.backward).

When fastrnn.nn.functional is present (it is the engine's stateless core) this module only re-exports it.
Until then a small adapter over the numpy module classes gives the same contract: a module instance per spec
(cached), whose parameter dict is pointed at the caller's arrays for each call, so parameters are still read
in place and never copied.
"""
import numpy as np

try:  # the stateless core of fastrnn.nn
    from ..nn import LayerSpec as _LayerSpec, functional as _F
except ImportError:  # pragma: no cover - depends on the fastrnn.nn in use
    _LayerSpec = _F = None

__all__ = ["make_spec", "forward", "backward", "param_shapes", "HAVE_FUNCTIONAL"]

HAVE_FUNCTIONAL = _F is not None


def make_spec(cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
              bidirectional=False, proj_size=0, nonlinearity="tanh", dtype=np.float32):
    """A hashable description of a layer (fastrnn.nn.LayerSpec when available, else an equivalent tuple)."""
    kw = dict(input_size=int(input_size), hidden_size=int(hidden_size), num_layers=int(num_layers),
              bias=bool(bias), batch_first=bool(batch_first), dropout=float(dropout),
              bidirectional=bool(bidirectional), proj_size=int(proj_size), nonlinearity=nonlinearity,
              dtype=np.dtype(dtype))
    if HAVE_FUNCTIONAL:
        return _LayerSpec(cell, reset_after=True, go_backwards=False, **kw)
    return _Spec(cell, **kw)


if HAVE_FUNCTIONAL:
    def forward(spec, params, x, hx=None, lengths=None, train=False, mask_fn=None):
        return _F.forward(spec, params, x, hx=hx, lengths=lengths, train=train, mask_fn=mask_fn)

    def backward(tape, dy, dstate=None, out=None):
        return _F.backward(tape, dy, dstate=dstate, out=out)

    def param_shapes(spec):
        return spec.param_shapes()

else:  # pragma: no cover - the adapter, used only before fastrnn.nn.functional exists
    import threading
    from collections import namedtuple
    from ..nn import modules as _m

    _Spec = namedtuple("_Spec", "cell input_size hidden_size num_layers bias batch_first dropout bidirectional "
                                "proj_size nonlinearity dtype")
    _local = threading.local()

    def _layer(spec):
        cache = getattr(_local, "layers", None)
        if cache is None:
            cache = _local.layers = {}
        lay = cache.get(spec)
        if lay is None:
            common = dict(num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
                          dropout=spec.dropout, bidirectional=spec.bidirectional, dtype=spec.dtype)
            if spec.cell == "lstm":
                lay = _m.LSTM(spec.input_size, spec.hidden_size, proj_size=spec.proj_size, **common)
            elif spec.cell == "gru":
                lay = _m.GRU(spec.input_size, spec.hidden_size, **common)
            else:
                lay = _m.RNN(spec.input_size, spec.hidden_size, nonlinearity=spec.nonlinearity, **common)
            cache[spec] = lay
        return lay

    class _Masks:
        """Stands for the layer's numpy generator: turns mask_fn's masks into the uniforms it thresholds."""

        def __init__(self, mask_fn):
            self.mask_fn, self.k = mask_fn, 0

        def random(self, shape):
            m = self.mask_fn(self.k, shape)
            self.k += 1
            return (m == 0).astype(np.float64)  # 0 < keep where kept, 1 >= keep where dropped

    def param_shapes(spec):
        return _layer(spec)._param_shapes()

    def forward(spec, params, x, hx=None, lengths=None, train=False, mask_fn=None):
        lay = _layer(spec)
        lay._params = params
        lay._layer_cache = {}
        if train and spec.dropout > 0 and mask_fn is not None:
            lay._rng = _Masks(mask_fn)
        try:
            y, state, tape = lay._run(x, hx, lengths, train=train)
        finally:
            lay._params = {}
            lay._layer_cache = {}
        return y, state, (None if tape is None else (lay, params, tape))

    def backward(tape, dy, dstate=None, out=None):
        lay, params, t = tape
        lay._params = params
        lay._layer_cache = {}
        try:
            dx, dhx, grads = lay.backward(t, dy, dstate)
        finally:
            lay._params = {}
            lay._layer_cache = {}
        if out:
            for k, a in out.items():
                a[...] = grads[k]
                grads[k] = a
        return dx, dhx, grads
