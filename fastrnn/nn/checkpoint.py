"""Training with checkpoints (`checkpoint=k`): memory for compute on long sequences.

The training forward runs each (layer, direction) in chunks of k steps with the inference kernels and keeps
only the state at the start of each chunk (and the layer's input and output, as without checkpoints);
backward walks the chunks in reverse processing order, re-runs the training forward of one chunk from its
saved state to get that chunk's tape, and back-propagates through it, carrying the state gradient to the
chunk before.  One chunk's tape is alive at a time: memory ~ (T/k) states + k steps of tape, instead of T
steps of tape, for one more forward pass.  The Python loop is over chunks, not steps.

With lengths, a chunk [t0, t1) runs the sequences still active at t0 (lengths > t0), gathered; its local
lengths are clip(lengths - t0, 1, t1 - t0).  The kernels' rules then give exactly the whole-sequence result:
the forward direction's state of a sequence that ends inside the chunk is its final state, and the reverse
direction starts each sequence at its own last step min(lengths, t1) - 1 from the state carried from the
chunk after it (or h0 when the sequence ends before t1).

Recurrent dropout masks (rm: one per sequence, fixed over the steps) go to every chunk's forward -- the
recorded one and the recomputed one -- and its backward, the chunk's sequences' rows of them.
"""
import numpy as np

from . import buffers

__all__ = ["forward_direction", "backward_direction"]


class _Chunk:
    __slots__ = ("t0", "t1", "idx", "lens", "h0", "c0")

    def __init__(self, t0, t1, idx, lens, h0, c0):
        self.t0, self.t1, self.idx, self.lens, self.h0, self.c0 = t0, t1, idx, lens, h0, c0


def _chunks(T, k, lengths, reverse):
    """(t0, t1, idx, local lengths) of each chunk in processing order; idx None when every sequence runs."""
    bounds = [(t0, min(t0 + k, T)) for t0 in range(0, T, k)]
    if reverse:
        bounds.reverse()
    out = []
    for t0, t1 in bounds:
        if lengths is None:
            out.append((t0, t1, None, None))
            continue
        idx = np.flatnonzero(lengths > t0)
        if idx.size == 0:
            continue
        loc = np.clip(lengths[idx] - t0, 1, t1 - t0).astype(np.int32)
        if idx.size == lengths.size:
            idx = None
        full = bool(np.all(loc == t1 - t0))
        out.append((t0, t1, idx, None if full else np.ascontiguousarray(loc)))
    return out


def _take(a, idx):
    return a if idx is None or a is None else np.ascontiguousarray(a[idx])


def _take_rm(rm, idx):
    """The rows of sequences idx of recurrent dropout masks (B, P) or (G, B, P)."""
    return rm if idx is None or rm is None else np.ascontiguousarray(rm[..., idx, :])


def forward_direction(spec, cell, k, inp, lens, reverse, h0, c0, p, out_d, ldy, hn, cn, rm=None):
    """Inference-kernel forward of one (layer, direction) in chunks of k steps, writing out_d (T, B, ·) (a
    strided view) and hn / cn; returns the chunk records backward needs."""
    T, B, I = inp.shape
    dt = spec.dtype
    H, P = spec.hidden_size, spec.P
    has_c = cn is not None
    h = np.zeros((B, P), dt) if h0 is None else h0.copy()  # the state each sequence carries into a chunk
    c = (np.zeros((B, H), dt) if c0 is None else c0.copy()) if has_c else None
    if lens is not None:
        out_d[...] = 0  # steps of sequences that no chunk runs (past their length)
    records = []
    for t0, t1, idx, loc in _chunks(T, k, lens, reverse):
        n = B if idx is None else idx.size
        xh = inp[t0:t1] if idx is None else np.ascontiguousarray(inp[t0:t1][:, idx])
        hs, cs = _take(h, idx).copy(), (_take(c, idx).copy() if has_c else None)
        if idx is None:
            hs_out, cs_out, y = h, c, out_d[t0:t1]
        else:
            hs_out, cs_out = np.empty((n, P), dt), (np.empty((n, H), dt) if has_c else None)
            y = buffers.empty((t1 - t0, n, P), dt)
        cell.forward(spec, t1 - t0, n, I, reverse, loc, xh, hs, cs, p, y, P if idx is not None else ldy,
                     hs_out, cs_out, None, _take_rm(rm, idx))
        if idx is not None:
            out_d[t0:t1, idx] = y
            h[idx] = hs_out
            if has_c:
                c[idx] = cs_out
        records.append(_Chunk(t0, t1, idx, loc, hs, cs))
    hn[...] = h
    if has_c:
        cn[...] = c
    return records


def backward_direction(spec, cell, records, inp, reverse, p, dy_d, dhn, dcn, din, dx_acc, dh0, dc0, grads,
                       rm=None):
    """BPTT of one (layer, direction) from its chunk records: re-runs each chunk's training forward, then
    its backward; adds into the parameter gradients `grads` (zeroed here first) and writes (or, dx_acc, adds)
    din (None: not computed), and writes dh0 / dc0."""
    T, B, I = inp.shape
    dt = spec.dtype
    H, P = spec.hidden_size, spec.P
    has_c = dc0 is not None
    f64 = dt == np.float64
    dh = np.zeros((B, P), dt) if dhn is None else dhn.copy()  # gradient of the state leaving the chunk
    dc = (np.zeros((B, H), dt) if dcn is None else dcn.copy()) if has_c else None
    for g in grads:
        if g is not None:
            g[...] = 0
    tmp = [None if g is None else np.empty_like(g) for g in grads]
    if din is not None and not dx_acc:
        din[...] = 0
    for r in reversed(records):
        t0, t1, idx = r.t0, r.t1, r.idx
        S = t1 - t0
        n = B if idx is None else idx.size
        xh = inp[t0:t1] if idx is None else np.ascontiguousarray(inp[t0:t1][:, idx])
        y = buffers.empty((S, n, P), dt)
        tape = buffers.empty(cell.tape_len(S, n, H, P, f64), dt)
        hn_tmp = np.empty((n, P), dt)
        cn_tmp = np.empty((n, H), dt) if has_c else None
        rmc = _take_rm(rm, idx)  # the same masks as the recorded forward
        cell.forward(spec, S, n, I, reverse, r.lens, xh, r.h0, r.c0, p, y, P, hn_tmp, cn_tmp, tape, rmc)
        dyc = np.ascontiguousarray(dy_d[t0:t1] if idx is None else dy_d[t0:t1][:, idx])
        dxc = buffers.empty((S, n, I), dt) if din is not None else None
        dh0c = np.empty((n, P), dt)
        dc0c = np.empty((n, H), dt) if has_c else None
        cell.backward(spec, S, n, I, reverse, r.lens, xh, r.h0, r.c0, p, y, P, tape, dyc, P,
                      _take(dh, idx), _take(dc, idx) if has_c else None, dxc, False, dh0c, dc0c, tmp, rmc)
        for g, t in zip(grads, tmp):
            if g is not None:
                g += t
        if idx is None:
            if din is not None:
                din[t0:t1] += dxc
            dh[...] = dh0c
            if has_c:
                dc[...] = dc0c
        else:
            if din is not None:
                din[t0:t1, idx] += dxc
            dh[idx] = dh0c
            if has_c:
                dc[idx] = dc0c
    dh0[...] = dh
    if has_c:
        dc0[...] = dc
