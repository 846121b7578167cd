"""The numpy reference (fastrnn/reference.py) validated against torch.nn in float64: forward and autograd
gradients over the option combinations torch has; dropout masks against torch layers composed by hand;
GRU reset_after=False against an independent torch autograd implementation; and every backward of the
reference against central finite differences of its own forward.  Needs torch, not fastrnn."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastrnn import reference as ref  # noqa: E402
from helpers import (FD_RTOL, FD_STEP, TORCH_VARIANTS, VARIANTS, Case, assert_close,  # noqa: E402
                     assert_grads_close, assert_state_close, random_data, random_params, reference_run,
                     torch_module, torch_run)

F64 = np.float64

# (id, options): every option torch has, alone and together.
CONFIGS = [
    ("base", dict()),
    ("nohx", dict(with_hx=False)),
    ("nobias", dict(bias=False)),
    ("T1_B1", dict(T=1, B=1)),
    ("L2", dict(num_layers=2)),
    ("bidir", dict(bidirectional=True)),
    ("lengths", dict(lengths=(5, 2, 4))),
    ("lengths_all_short", dict(lengths=(2, 1, 3))),
    ("lengths_bidir", dict(bidirectional=True, lengths=(3, 5, 1))),
    ("L3_bidir_lengths_nohx", dict(num_layers=3, bidirectional=True, lengths=(2, 5, 4), with_hx=False)),
    ("L2_bidir_nobias", dict(num_layers=2, bidirectional=True, bias=False)),
]


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
@pytest.mark.parametrize("cfg", [c[1] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_reference_matches_torch(variant, cfg):
    case = Case.variant(variant, **cfg)
    params = random_params(case, F64, seed=3)
    data = random_data(case, F64, seed=4)
    want = torch_run(case, torch_module(case, F64, params), data, F64)
    got = reference_run(case, params, data)
    d = case.depth
    assert_close(got["y"], want["y"], F64, d, f"{case} y", record="reference vs torch")
    assert_state_close(got["state"], want["state"], F64, d, f"{case} state", record="reference vs torch")
    assert_close(got["dx"], want["dx"], F64, d, f"{case} dx", record="reference vs torch")
    if case.with_hx:
        assert_state_close(got["dhx"], want["dhx"], F64, d, f"{case} dhx", record="reference vs torch")
    assert_grads_close(got["grads"], want["grads"], F64, d, f"{case} grads", record="reference vs torch")
    if case.lengths is not None:   # padded outputs are exactly zero
        for b, n in enumerate(case.lengths):
            assert np.all(got["y"][n:, b] == 0)


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_param_shapes_match_torch(variant):
    for kw in [dict(), dict(num_layers=3, bidirectional=True), dict(num_layers=2, bias=False)]:
        case = Case.variant(variant, I=5, H=7, **kw)
        sd = torch_module(case, F64).state_dict()
        assert list(case.shapes()) == list(sd)
        assert {k: tuple(v.shape) for k, v in sd.items()} == case.shapes()


def _torch_layers_with_masks(case, params, data, masks):
    """Layer-by-layer torch: single-layer torch modules with the dropout masks applied in between."""
    y_all = []
    inp = torch.from_numpy(data.x)
    LD = case.D
    h_n, c_n = [], []
    for k in range(case.num_layers):
        one = case.but(num_layers=1, I=inp.shape[2], batch_first=False)
        sub = {name.replace(f"_l{k}", "_l0"): v for name, v in params.items() if f"_l{k}" in name}
        m = torch_module(one, F64, sub)
        hx = None
        if data.hx is not None:
            if case.cell == "lstm":
                hx = tuple(torch.from_numpy(s[k * LD:(k + 1) * LD].copy()) for s in data.hx)
            else:
                hx = torch.from_numpy(data.hx[k * LD:(k + 1) * LD].copy())
        if case.lengths is not None:
            packed = torch.nn.utils.rnn.pack_padded_sequence(inp, torch.as_tensor(case.lengths),
                                                             enforce_sorted=False)
            out, st = m(packed, hx)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=case.T)
        else:
            y, st = m(inp, hx)
        if case.cell == "lstm":
            h_n.append(st[0])
            c_n.append(st[1])
        else:
            h_n.append(st)
        y_all.append(y)
        inp = y * torch.from_numpy(masks[k]) if k < case.num_layers - 1 else y
    state = (torch.cat(h_n).detach().numpy(), torch.cat(c_n).detach().numpy()) if case.cell == "lstm" \
        else torch.cat(h_n).detach().numpy()
    return inp.detach().numpy(), state


def make_masks(case, p, seed):
    rng = np.random.default_rng(seed)
    return [(rng.random((case.T, case.B, case.D * case.P)) >= p) / (1 - p)
            for _ in range(case.num_layers - 1)]


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
@pytest.mark.parametrize("bidir,lengths", [(False, None), (True, (4, 1, 5))])
def test_reference_dropout_masks_match_composed_torch(variant, bidir, lengths):
    case = Case.variant(variant, num_layers=3, bidirectional=bidir, lengths=lengths)
    params = random_params(case, F64, seed=5)
    data = random_data(case, F64, seed=6)
    masks = make_masks(case, 0.4, seed=7)
    y, state, _ = ref.ref_forward(case.cell, params, data.x, data.hx, masks=masks, **case.ref_kwargs())
    y_t, state_t = _torch_layers_with_masks(case, params, data, masks)
    assert_close(y, y_t, F64, case.depth, f"{case} y")
    assert_state_close(state, state_t, F64, case.depth, f"{case} state")
    # and the masks do matter
    y0, _, _ = ref.ref_forward(case.cell, params, data.x, data.hx, **case.ref_kwargs())
    assert np.abs(y - y0).max() > 1e-3


def _torch_gru_reset_before(params, x, h0, sfx="_l0"):
    """GRU with the reset gate applied to h before the matrix product (Cho et al. 2014), in torch."""
    w_ih, w_hh = params["weight_ih" + sfx], params["weight_hh" + sfx]
    b_ih, b_hh = params.get("bias_ih" + sfx), params.get("bias_hh" + sfx)
    H = w_hh.shape[1]
    h, ys = h0, []
    for t in range(x.shape[0]):
        gi = x[t] @ w_ih.T + (0 if b_ih is None else b_ih)
        gh = lambda a, rows: a @ w_hh[rows].T + (0 if b_hh is None else b_hh[rows])  # noqa: E731
        r = torch.sigmoid(gi[:, :H] + gh(h, slice(0, H)))
        z = torch.sigmoid(gi[:, H:2 * H] + gh(h, slice(H, 2 * H)))
        n = torch.tanh(gi[:, 2 * H:] + gh(r * h, slice(2 * H, 3 * H)))
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys), h


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T,B", [(1, 1), (6, 3)])
def test_reference_gru_reset_before_matches_torch_autograd(bias, T, B):
    case = Case.variant("gru_reset_before", T=T, B=B, bias=bias)
    params = random_params(case, F64, seed=8)
    data = random_data(case, F64, seed=9)
    got = reference_run(case, params, data)
    tp = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in params.items()}
    x = torch.from_numpy(data.x.copy()).requires_grad_()
    h0 = torch.from_numpy(data.hx[0].copy()).requires_grad_()
    y, h = _torch_gru_reset_before(tp, x, h0)
    loss = (y * torch.from_numpy(data.dy)).sum() + (h * torch.from_numpy(data.dstate[0])).sum()
    loss.backward()
    d = case.depth
    assert_close(got["y"], y.detach().numpy(), F64, d, "y")
    assert_close(got["state"][0], h.detach().numpy(), F64, d, "h_n")
    assert_close(got["dx"], x.grad.numpy(), F64, d, "dx")
    assert_close(got["dhx"][0], h0.grad.numpy(), F64, d, "dh0")
    assert_grads_close(got["grads"], {k: v.grad.numpy() for k, v in tp.items()}, F64, d)
    # and it is not torch's GRU
    m = torch_module(case.but(reset_after=True), F64, params)
    y_torch, _ = m(torch.from_numpy(data.x), torch.from_numpy(data.hx))
    assert np.abs(y_torch.detach().numpy() - got["y"]).max() > 1e-4


# ---- the reference's backward against finite differences of its own forward (all variants, all options)


def _fd_check_reference(case, masks=None, n_samples=4, seed=0):
    params = random_params(case, F64, seed=seed + 10)
    data = random_data(case, F64, seed=seed + 11)
    kw = case.ref_kwargs()

    def loss(p, x, hx):
        y, state, _ = ref.ref_forward(case.cell, p, x, hx, masks=masks, **kw)
        return ref.ref_loss(y, state, data.dy, data.dstate)

    got = reference_run(case, params, data, masks=masks)
    rng = np.random.default_rng(seed)

    def fd(get_array, analytic, name):
        a = get_array()
        scale = max(1.0, float(np.abs(analytic).max()))
        for flat in rng.choice(a.size, size=min(n_samples, a.size), replace=False):
            idx = np.unravel_index(flat, a.shape)
            old = a[idx]
            a[idx] = old + FD_STEP
            lp = loss(params, data.x, data.hx)
            a[idx] = old - FD_STEP
            lm = loss(params, data.x, data.hx)
            a[idx] = old
            num = (lp - lm) / (2 * FD_STEP)
            assert abs(num - analytic[idx]) <= FD_RTOL * scale, \
                f"{case} {name}{idx}: finite difference {num:.10g}, backward {analytic[idx]:.10g}"

    fd(lambda: data.x, got["dx"], "dx")
    if data.hx is not None:
        if case.cell == "lstm":
            fd(lambda: data.hx[0], got["dhx"][0], "dh0")
            fd(lambda: data.hx[1], got["dhx"][1], "dc0")
        else:
            fd(lambda: data.hx, got["dhx"], "dh0")
    for k in params:
        fd(lambda k=k: params[k], got["grads"][k], k)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cfg", [dict(),
                                 dict(num_layers=2, bidirectional=True, lengths=(4, 1, 3), dropout=0.5),
                                 dict(bias=False, lengths=(2, 4, 4), T=4)],
                         ids=["base", "L2_bidir_lengths_masks", "nobias_lengths"])
def test_reference_backward_matches_finite_differences(variant, cfg):
    cfg = dict(cfg)
    p = cfg.pop("dropout", 0.0)
    case = Case.variant(variant, **cfg)
    masks = make_masks(case, p, seed=12) if p else None
    _fd_check_reference(case, masks=masks)
