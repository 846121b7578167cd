"""Layer initialisation: torch's U(-1/sqrt(H), 1/sqrt(H)), the same numbers from a seed as one uniform draw per
parameter, without a float64 temporary of the whole parameter (peak < 1.5x the parameters' memory)."""
import math
import tracemalloc

import numpy as np
import pytest

import fastrnn


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {"proj_size": 5, "num_layers": 2}), (fastrnn.GRU, {}),
                                    (fastrnn.RNN, {"bidirectional": True})])
def test_seeded_numbers_are_one_uniform_draw_per_parameter(cls, kw):
    layer = cls(7, 600, seed=3, **kw)
    rng = np.random.default_rng(3)
    b = 1 / math.sqrt(600)
    for name, shape in layer.spec.param_shapes():
        np.testing.assert_array_equal(layer.state_dict()[name],
                                      rng.uniform(-b, b, size=shape).astype(np.float32), err_msg=name)


def test_init_does_not_need_twice_the_memory():
    tracemalloc.start()
    try:
        layer = fastrnn.LSTM(1024, 1024)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    params = sum(a.nbytes for a in layer.state_dict().values())
    assert params == 4 * 1024 * 2048 * 4 + 2 * 4 * 1024 * 4
    assert peak < 1.5 * params, (peak, params)
