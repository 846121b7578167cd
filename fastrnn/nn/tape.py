"""Tape: what a training forward keeps for its backward."""
import weakref

__all__ = ["Tape"]


class Tape:
    """What a training forward keeps for backward.  Opaque: pass it to the layer's `backward` (or to
    fastrnn.nn.functional.backward).

    `masks` is the list of the dropout masks applied between layers (empty without dropout): each is
    time-major (T, B, D*P) with entries 0 or 1/(1-dropout).  `rmasks` holds the recurrent dropout masks of
    each (layer, direction) (row k*D + d; None entries, or no list, without them).  `spec` and `params` are the configuration and
    the parameter arrays the forward ran with; backward reads the same arrays (so they must not be modified
    in between).
    """

    __slots__ = ("spec", "params", "_owner", "_version", "T", "B", "batched", "lengths", "inputs", "outputs",
                 "tapes", "h0", "c0", "masks", "rmasks", "checkpoint", "chunks", "__weakref__")

    def __init__(self, spec, params, T, B, batched, lengths):
        self.spec, self.params = spec, params
        self._owner, self._version = None, None  # set by a module (fastrnn.nn.modules) that recorded it
        self.T, self.B, self.batched, self.lengths = T, B, batched, lengths
        self.inputs, self.outputs, self.tapes, self.masks = [], [], [], []
        self.h0 = self.c0 = None
        self.rmasks = None  # forward(..., rmasks=): the checked list of L*D entries
        self.checkpoint = None  # k of forward(..., checkpoint=k): then chunks[j] replaces tapes[j]
        self.chunks = []

    def bind(self, owner, version):
        self._owner = weakref.ref(owner)
        self._version = version
        return self
