"""Plain numpy float64 reference for RNN / LSTM / GRU: forward and hand-written BPTT.

This is the yardstick the kernels are measured against, so it is written to be read, not to be fast: one
Python loop over time, one step function per cell, the chain rule spelled out line by line.  It is itself
validated against torch.nn (forward and autograd) in tests/test_reference.py.

Conventions (docs/design.md, Notation): time-major arrays, x (T, B, I); T steps, B batch, I input size, H hidden size,
P output size of an LSTM with projection (else P = H), G gates (RNN 1, GRU 3, LSTM 4), L layers,
D directions.  Parameters are a dict keyed exactly like torch's state_dict():

    weight_ih_l{k}[_reverse]  (G*H, I) for k = 0, (G*H, D*P) above
    weight_hh_l{k}[_reverse]  (G*H, P)
    bias_ih_l{k}[_reverse]    (G*H)      absent when bias=False
    bias_hh_l{k}[_reverse]    (G*H)      absent when bias=False
    weight_hr_l{k}[_reverse]  (P, H)     LSTM with proj_size > 0 only

Gate order: LSTM i, f, g, o;  GRU r, z, n.

States: hx / state is h (L*D, B, H) for RNN and GRU and the pair (h (L*D, B, P), c (L*D, B, H)) for LSTM,
row k*D + d for layer k, direction d (torch's layout).

Variable lengths follow torch's pack_padded_sequence(enforce_sorted=False) + pad_packed_sequence(
total_length=T): sequence b uses steps 0 .. lengths[b]-1 only, the outputs at padded steps are 0, its final
state is the state after its last valid step, and the reverse direction starts at its own step lengths[b]-1.

Dropout between layers is driven by explicit masks: a list of L-1 arrays, mask k shaped like the
time-major output of layer k (T, B, D*P) with values 0 or 1/(1-p); the input of layer k+1 is
y_k * masks[k].

Recurrent dropout (Keras's recurrent_dropout, docs/keras.md) is driven by explicit masks too: `rmasks`, a
list of L*D entries (row k*D + d), each None or the masks of that layer and direction, fixed over time:
RNN (B, P), one mask on h_{t-1} in the recurrent product; LSTM (4, B, P), one per gate i, f, g, o, gate q's
recurrent product reading h_{t-1} * rmask[q]; GRU (3, B, H), one per gate r, z, n (Keras 3: gate q's
recurrent product reads h_{t-1} * rmask[q], with reset_after=False n's reads r * (h_{t-1} * rmask[2]); the
carry z * h_{t-1} reads the unmasked h_{t-1}).
"""

import numpy as np

from .nn.cells import CELLS
from .nn.spec import LayerSpec

GATES = {name: cell.G for name, cell in CELLS.items()}  # gates per cell, from the cell descriptors


def sigmoid(a):
    # 0.5*(1+tanh(a/2)) == 1/(1+exp(-a)) without overflow for large negative a.
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def normalize_cell(cell):
    c = str(cell).lower()
    if c not in GATES:
        raise ValueError(f"cell must be one of rnn, lstm, gru, got {cell!r}")
    return c


# ---- parameter names and shapes ------------------------------------------------------------------------

def param_shapes(cell, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                 proj_size=0):
    """{state_dict key: shape}, in torch's order (from the cell descriptor, fastrnn/nn/cells.py)."""
    cell = normalize_cell(cell)
    spec = LayerSpec(cell, input_size, hidden_size, num_layers, bias, bidirectional=bidirectional,
                     proj_size=proj_size if cell == "lstm" else 0, dtype=np.float64)
    return dict(spec.param_shapes())


def _direction_params(params, sfx, cell, H):
    """The arrays of one layer and direction; missing biases become zeros (their grads are dropped)."""
    G = GATES[cell]
    w_ih = np.asarray(params["weight_ih" + sfx], dtype=np.float64)
    w_hh = np.asarray(params["weight_hh" + sfx], dtype=np.float64)
    has_bias = ("bias_ih" + sfx) in params
    zeros = np.zeros(G * H)
    b_ih = np.asarray(params["bias_ih" + sfx], dtype=np.float64) if has_bias else zeros
    b_hh = np.asarray(params["bias_hh" + sfx], dtype=np.float64) if has_bias else zeros
    w_hr = params.get("weight_hr" + sfx)
    w_hr = None if w_hr is None else np.asarray(w_hr, dtype=np.float64)
    return dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr, has_bias=has_bias)


# ---- one time step, batch-vectorised -------------------------------------------------------------------
# Each *_step_forward returns (h_new, c_new or None, saved); saved holds what the backward step needs.
# Each *_step_backward takes dh_new (and dc_new) and returns (dx_t, dh_prev, dc_prev or None, grads)
# with grads the contributions of this step to dw_ih, dw_hh, db_ih, db_hh (and dw_hr).


def rec_forward(w_hh, h, rm):
    """The recurrent product h W_hh^T of one step: with recurrent dropout masks rm (G, B, P), gate block q
    of the result is (h * rm[q]) W_hh,q^T; rm None is no mask."""
    if rm is None:
        return h @ w_hh.T
    G = rm.shape[0]
    return np.concatenate([(h * rm[q]) @ w_q.T for q, w_q in enumerate(np.split(w_hh, G, axis=0))], axis=1)


def rec_backward(w_hh, h, rm, da):
    """(dL/dh, dL/dW_hh) through rec_forward, da = dL/d(the product) (B, G*H)."""
    if rm is None:
        return da @ w_hh, da.T @ h
    G = rm.shape[0]
    w_q, da_q = np.split(w_hh, G, axis=0), np.split(da, G, axis=1)
    dh = sum((da_q[q] @ w_q[q]) * rm[q] for q in range(G))
    dw = np.concatenate([da_q[q].T @ (h * rm[q]) for q in range(G)], axis=0)
    return dh, dw


def rnn_step_forward(p, x_t, h, nonlinearity, rm=None):
    a = x_t @ p["w_ih"].T + p["b_ih"] + rec_forward(p["w_hh"], h, rm) + p["b_hh"]
    if nonlinearity == "tanh":
        h_new = np.tanh(a)
    elif nonlinearity == "relu":
        h_new = np.maximum(a, 0.0)
    else:
        raise ValueError(nonlinearity)
    return h_new, None, dict(a=a, h_new=h_new)


def rnn_step_backward(p, x_t, h, saved, dh_new, nonlinearity, rm=None):
    if nonlinearity == "tanh":
        da = dh_new * (1.0 - saved["h_new"] ** 2)
    else:
        da = dh_new * (saved["a"] > 0)
    dh, dw_hh = rec_backward(p["w_hh"], h, rm, da)
    grads = dict(w_ih=da.T @ x_t, w_hh=dw_hh, b_ih=da.sum(0), b_hh=da.sum(0))
    return da @ p["w_ih"], dh, None, grads


def lstm_step_forward(p, x_t, h, c, rm=None):
    a = x_t @ p["w_ih"].T + p["b_ih"] + rec_forward(p["w_hh"], h, rm) + p["b_hh"]
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    m = o * tanh_c                      # the cell output before projection, (B, H)
    h_new = m if p["w_hr"] is None else m @ p["w_hr"].T
    return h_new, c_new, dict(i=i, f=f, g=g, o=o, tanh_c=tanh_c, m=m)


def lstm_step_backward(p, x_t, h, c, saved, dh_new, dc_new, rm=None):
    i, f, g, o, tanh_c, m = (saved[k] for k in ("i", "f", "g", "o", "tanh_c", "m"))
    grads = {}
    if p["w_hr"] is None:
        dm = dh_new
    else:
        dm = dh_new @ p["w_hr"]
        grads["w_hr"] = dh_new.T @ m
    do = dm * tanh_c
    dc = dc_new + dm * o * (1.0 - tanh_c ** 2)
    di, df, dg = dc * g, dc * c, dc * i
    dc_prev = dc * f
    da = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g ** 2),
                         do * o * (1.0 - o)], axis=1)
    dh, dw_hh = rec_backward(p["w_hh"], h, rm, da)
    grads.update(w_ih=da.T @ x_t, w_hh=dw_hh, b_ih=da.sum(0), b_hh=da.sum(0))
    return da @ p["w_ih"], dh, dc_prev, grads


def gru_step_forward(p, x_t, h, reset_after, rm=None):
    H = h.shape[1]
    gi = x_t @ p["w_ih"].T + p["b_ih"]                       # (B, 3H): input parts of r, z, n
    w_hr_z, w_hn = p["w_hh"][:2 * H], p["w_hh"][2 * H:]
    b_hr_z, b_hn = p["b_hh"][:2 * H], p["b_hh"][2 * H:]
    hn = h if rm is None else h * rm[2]                      # n's operand (recurrent dropout: masked)
    gh_rz = rec_forward(w_hr_z, h, None if rm is None else rm[:2]) + b_hr_z
    r = sigmoid(gi[:, :H] + gh_rz[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh_rz[:, H:])
    if reset_after:                                          # torch: r * (h W_hn^T + b_hn)
        gh_n = hn @ w_hn.T + b_hn
        n = np.tanh(gi[:, 2 * H:] + r * gh_n)
        saved = dict(r=r, z=z, n=n, gh_n=gh_n)
    else:                                                    # Cho et al.: (r * h) W_hn^T + b_hn
        rh = r * hn
        n = np.tanh(gi[:, 2 * H:] + rh @ w_hn.T + b_hn)
        saved = dict(r=r, z=z, n=n, rh=rh)
    h_new = (1.0 - z) * n + z * h
    return h_new, None, saved


def gru_step_backward(p, x_t, h, saved, dh_new, reset_after, rm=None):
    H = h.shape[1]
    mn = 1.0 if rm is None else rm[2]                        # n's mask on h_{t-1}
    r, z, n = saved["r"], saved["z"], saved["n"]
    w_hr_z, w_hn = p["w_hh"][:2 * H], p["w_hh"][2 * H:]
    dn = dh_new * (1.0 - z)
    dz = dh_new * (h - n)
    dh_prev = dh_new * z
    da_n = dn * (1.0 - n ** 2)                  # pre-activation of n
    if reset_after:
        dr = da_n * saved["gh_n"]
        dgh_n = da_n * r                        # gradient of h W_hn^T + b_hn
        dh_prev = dh_prev + (dgh_n @ w_hn) * mn
        dw_hn = dgh_n.T @ (h * mn)
    else:
        drh = da_n @ w_hn                       # gradient of r*h (r * h * mask_n when masked)
        dr = drh * h * mn
        dh_prev = dh_prev + drh * r * mn
        dgh_n = da_n                            # gradient of (r*h) W_hn^T + b_hn
        dw_hn = da_n.T @ saved["rh"]
    da_r = dr * r * (1.0 - r)
    da_z = dz * z * (1.0 - z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)
    dgh_rz = np.concatenate([da_r, da_z], axis=1)
    dh_rz, dw_rz = rec_backward(w_hr_z, h, None if rm is None else rm[:2], dgh_rz)
    dh_prev = dh_prev + dh_rz
    grads = dict(w_ih=dgi.T @ x_t,
                 w_hh=np.concatenate([dw_rz, dw_hn], axis=0),
                 b_ih=dgi.sum(0),
                 b_hh=np.concatenate([dgh_rz.sum(0), dgh_n.sum(0)]))
    return dgi @ p["w_ih"], dh_prev, None, grads


# ---- one layer, one direction, whole sequence -------------------------------------------------------------

def _time_index(s, lengths, reverse):
    """The time index step s reads for every sequence, and which sequences are still running."""
    active = s < lengths
    t = (lengths - 1 - s) if reverse else np.full_like(lengths, s)
    return np.where(active, t, 0), active


def direction_forward(cell, p, x, h0, c0, reverse, lengths, nonlinearity="tanh", reset_after=True, rm=None):
    T, B, _ = x.shape
    P = p["w_hh"].shape[1]
    batch = np.arange(B)
    y = np.zeros((T, B, P))
    h, c = h0.copy(), (None if c0 is None else c0.copy())
    steps = []
    for s in range(T):
        t, active = _time_index(s, lengths, reverse)
        x_t = x[t, batch]                         # inactive rows read a dummy row; their results are dropped
        if cell == "rnn":
            h_new, c_new, saved = rnn_step_forward(p, x_t, h, nonlinearity, rm)
        elif cell == "lstm":
            h_new, c_new, saved = lstm_step_forward(p, x_t, h, c, rm)
        else:
            h_new, c_new, saved = gru_step_forward(p, x_t, h, reset_after, rm)
        steps.append(dict(t=t, active=active, x_t=x_t, h=h, c=c, saved=saved, rm=rm))
        y[t[active], batch[active]] = h_new[active]
        keep = active[:, None]
        h = np.where(keep, h_new, h)              # finished sequences keep their last valid state
        if c is not None:
            c = np.where(keep, c_new, c)
    return y, h, c, steps


def direction_backward(cell, p, steps, x_shape, dy, dh_n, dc_n, nonlinearity="tanh",
                       reset_after=True):
    T, B, I = x_shape
    batch = np.arange(B)
    dx = np.zeros((T, B, I))
    grads = {k: np.zeros_like(p[k]) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    if p["w_hr"] is not None:
        grads["w_hr"] = np.zeros_like(p["w_hr"])
    dh = dh_n.copy()
    dc = None if dc_n is None else dc_n.copy()
    for s in reversed(range(T)):
        st = steps[s]
        t, active = st["t"], st["active"]
        keep = active[:, None]
        dh_new = np.where(keep, dh + dy[t, batch], 0.0)     # inactive rows contribute nothing
        if cell == "rnn":
            dx_t, dh_prev, dc_prev, g = rnn_step_backward(p, st["x_t"], st["h"], st["saved"], dh_new,
                                                          nonlinearity, st["rm"])
        elif cell == "lstm":
            dc_new = np.where(keep, dc, 0.0)
            dx_t, dh_prev, dc_prev, g = lstm_step_backward(p, st["x_t"], st["h"], st["c"], st["saved"],
                                                           dh_new, dc_new, st["rm"])
        else:
            dx_t, dh_prev, dc_prev, g = gru_step_backward(p, st["x_t"], st["h"], st["saved"], dh_new,
                                                          reset_after, st["rm"])
        for k, v in g.items():
            grads[k] += v
        dx[t[active], batch[active]] += dx_t[active]
        dh = np.where(keep, dh_prev, dh)          # through an inactive step the state passes unchanged
        if dc is not None:
            dc = np.where(keep, dc_prev, dc)
    return dx, dh, dc, grads


# ---- the whole network -----------------------------------------------------------------------------------

def ref_forward(cell, params, x, hx=None, *, num_layers=1, bidirectional=False, nonlinearity="tanh",
                reset_after=True, proj_size=0, lengths=None, masks=None, rmasks=None):
    """Forward pass.  x (T, B, I); hx None, h0, or (h0, c0) for LSTM; rmasks: see the module docstring.

    Returns (y, state, cache): y (T, B, D*P); state h_n or (h_n, c_n); cache for ref_backward.
    """
    cell = normalize_cell(cell)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError("the reference takes time-major batched x (T, B, I)")
    T, B, I = x.shape
    L, D, G = num_layers, (2 if bidirectional else 1), GATES[cell]
    H = np.asarray(params["weight_hh_l0"]).shape[0] // G
    if cell != "lstm":
        proj_size = 0
    P = proj_size or H
    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    else:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be (B,) = ({B},) ints in [1, T], got {lengths}")
    if masks is not None:
        masks = [np.asarray(m, dtype=np.float64) for m in masks]
        if len(masks) != L - 1 or any(m.shape != (T, B, D * P) for m in masks):
            raise ValueError("masks: a list of L-1 arrays shaped (T, B, D*P)")
    if rmasks is not None:
        if len(rmasks) != L * D:
            raise ValueError(f"rmasks: a list of L*D = {L * D} entries")
        # internally always (G_m, B, P): the RNN's single mask as one block
        rmasks = [None if m is None else np.asarray(m, dtype=np.float64).reshape(-1, B, P) for m in rmasks]
        want = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
        if any(m is not None and m.shape[0] != want for m in rmasks):
            raise ValueError(f"rmasks: each entry None or {'(B, P)' if want == 1 else f'({want}, B, P)'}")

    if hx is None:
        h0 = np.zeros((L * D, B, P))
        c0 = np.zeros((L * D, B, H)) if cell == "lstm" else None
    elif cell == "lstm":
        h0, c0 = (np.asarray(a, dtype=np.float64) for a in hx)
    else:
        h0, c0 = np.asarray(hx, dtype=np.float64), None
    assert h0.shape == (L * D, B, P), h0.shape
    assert c0 is None or c0.shape == (L * D, B, H), c0.shape

    h_n = np.zeros((L * D, B, P))
    c_n = np.zeros((L * D, B, H)) if cell == "lstm" else None
    layers = []
    inp = x
    for k in range(L):
        outs, dirs = [], []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            p = _direction_params(params, sfx, cell, H)
            row = k * D + d
            y_d, h_d, c_d, steps = direction_forward(cell, p, inp, h0[row],
                                                     None if c0 is None else c0[row], reverse=(d == 1),
                                                     lengths=lengths, nonlinearity=nonlinearity,
                                                     reset_after=reset_after,
                                                     rm=None if rmasks is None else rmasks[row])
            outs.append(y_d)
            h_n[row] = h_d
            if c_n is not None:
                c_n[row] = c_d
            dirs.append(dict(sfx=sfx, p=p, steps=steps))
        y_k = np.concatenate(outs, axis=2)
        layers.append(dict(dirs=dirs, x_shape=inp.shape))
        inp = y_k * masks[k] if (masks is not None and k < L - 1) else y_k
    cache = dict(cell=cell, L=L, D=D, H=H, P=P, nonlinearity=nonlinearity, reset_after=reset_after,
                 masks=masks, layers=layers, B=B)
    state = (h_n, c_n) if cell == "lstm" else h_n
    return y_k, state, cache


def ref_backward(cache, dy, dstate=None):
    """BPTT.  dy like y; dstate None, dh_n, or (dh_n, dc_n) for LSTM (either part may be None).

    Returns (dx, dhx, grads): dx like x; dhx like the state (dh0 or (dh0, dc0)); grads keyed like params.
    """
    cell, L, D, H, P, B = (cache[k] for k in ("cell", "L", "D", "H", "P", "B"))
    dy = np.asarray(dy, dtype=np.float64)
    dh_n, dc_n = (dstate if cell == "lstm" and dstate is not None else (dstate, None))
    dh_n = np.zeros((L * D, B, P)) if dh_n is None else np.asarray(dh_n, dtype=np.float64)
    dc_n = (np.zeros((L * D, B, H)) if dc_n is None else np.asarray(dc_n, dtype=np.float64)) \
        if cell == "lstm" else None
    dh0 = np.zeros((L * D, B, P))
    dc0 = np.zeros((L * D, B, H)) if cell == "lstm" else None
    grads = {}
    d_out = dy
    for k in reversed(range(L)):
        layer = cache["layers"][k]
        d_in = np.zeros(layer["x_shape"])
        for d, di in enumerate(layer["dirs"]):
            row = k * D + d
            dx_d, dh_d, dc_d, g = direction_backward(
                cell, di["p"], di["steps"], layer["x_shape"], d_out[:, :, d * P:(d + 1) * P],
                dh_n[row], None if dc_n is None else dc_n[row], cache["nonlinearity"],
                cache["reset_after"])
            d_in += dx_d
            dh0[row] = dh_d
            if dc0 is not None:
                dc0[row] = dc_d
            sfx = di["sfx"]
            grads["weight_ih" + sfx] = g["w_ih"]
            grads["weight_hh" + sfx] = g["w_hh"]
            if di["p"]["has_bias"]:
                grads["bias_ih" + sfx] = g["b_ih"]
                grads["bias_hh" + sfx] = g["b_hh"]
            if "w_hr" in g:
                grads["weight_hr" + sfx] = g["w_hr"]
        if k > 0:
            d_out = d_in * cache["masks"][k - 1] if cache["masks"] is not None else d_in
        else:
            dx = d_in
    dhx = (dh0, dc0) if cell == "lstm" else dh0
    return dx, dhx, grads


def ref_loss(y, state, R_y, R_state):
    """The scalar sum(y*R_y) + sum(state*R_state) whose gradient ref_backward(cache, R_y, R_state) is."""
    total = float(np.sum(y * R_y))
    if isinstance(state, tuple):
        total += sum(float(np.sum(s * r)) for s, r in zip(state, R_state))
    else:
        total += float(np.sum(state * R_state))
    return total
