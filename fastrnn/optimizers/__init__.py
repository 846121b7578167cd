"""fastrnn.optimizers: Keras 3's optimizers (SGD, Adam, AdamW, RMSprop, Adagrad) with their argument names and
defaults, gradient clipping (clipnorm per weight, global_clipnorm over all, clipvalue elementwise), decoupled
weight_decay and learning-rate schedules (ExponentialDecay, CosineDecay).

An optimizer updates in place the parameters it is given as one flat vector (the model keeps every weight as a
view of one buffer), so a step is a few vector operations whatever the number of weights; `segments` (the
(offset, size) of each weight in the vector) serve clipnorm.  Depends on numpy only.
"""
import math

import numpy as np

from ..nn import updates

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "ExponentialDecay", "CosineDecay",
           "LearningRateSchedule", "get"]


class LearningRateSchedule:
    def __call__(self, step):
        raise NotImplementedError


class ExponentialDecay(LearningRateSchedule):
    """lr = initial_learning_rate * decay_rate ** (step / decay_steps) (floored with staircase)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name=None):
        if not decay_steps > 0:
            raise ValueError(f"decay_steps: expected > 0, got {decay_steps!r}")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), float(decay_steps)
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}


class CosineDecay(LearningRateSchedule):
    """Keras's CosineDecay: optional linear warm-up to warmup_target, then a cosine from it down to alpha of it
    over decay_steps."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name=None, warmup_target=None,
                 warmup_steps=0):
        if not decay_steps > 0:
            raise ValueError(f"decay_steps: expected > 0, got {decay_steps!r}")
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), int(decay_steps), \
            float(alpha)
        self.warmup_target = None if warmup_target is None else float(warmup_target)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        if self.warmup_target is not None and step < self.warmup_steps:
            return self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate) * \
                step / self.warmup_steps
        top = self.initial_learning_rate if self.warmup_target is None else self.warmup_target
        s = min(step - (self.warmup_steps if self.warmup_target is not None else 0), self.decay_steps)
        cos = 0.5 * (1 + math.cos(math.pi * s / self.decay_steps))
        return top * ((1 - self.alpha) * cos + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


def _pos(name, v, allow_none=True, zero_ok=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) \
            or v < 0 or (v == 0 and not zero_ok):
        raise ValueError(f"{name}: expected a float {'>=' if zero_ok else '>'} 0, got {v!r}")
    return float(v)


class Optimizer:
    """Base: learning_rate (a float or a schedule), weight_decay, clipnorm / global_clipnorm / clipvalue."""
    _slots = 0  # state vectors per parameter

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        for k in kwargs:
            if k not in ("use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                         "gradient_accumulation_steps"):
                raise TypeError(f"{type(self).__name__}: unexpected argument {k!r}")
            if kwargs[k] not in (None, False):
                raise ValueError(f"{type(self).__name__}: {k} is not supported")
        if sum(v is not None for v in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of clipnorm, clipvalue and global_clipnorm can be set")
        self.clipnorm = _pos("clipnorm", clipnorm)
        self.clipvalue = _pos("clipvalue", clipvalue)
        self.global_clipnorm = _pos("global_clipnorm", global_clipnorm)
        self.weight_decay = _pos("weight_decay", weight_decay, zero_ok=True)
        if isinstance(learning_rate, LearningRateSchedule):
            self.learning_rate = learning_rate
        else:
            self.learning_rate = _pos("learning_rate", learning_rate)
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._state = None

    def current_learning_rate(self):
        lr = self.learning_rate
        return float(lr(self.iterations)) if isinstance(lr, LearningRateSchedule) else lr

    def set_learning_rate(self, lr):
        if isinstance(self.learning_rate, LearningRateSchedule):
            raise ValueError("set_learning_rate: the learning rate is a schedule")
        self.learning_rate = _pos("learning_rate", lr)

    def clip(self, g, segments=None):
        """Apply the clipping in place on the flat gradient vector g."""
        if self.clipvalue is not None:
            np.clip(g, -self.clipvalue, self.clipvalue, out=g)
        elif self.global_clipnorm is not None:
            n = math.sqrt(float(np.dot(g, g)))
            if n > self.global_clipnorm:
                g *= self.global_clipnorm / n
        elif self.clipnorm is not None:
            if segments is None:
                segments = [(0, g.size)]
            starts = np.array([o for o, _ in segments])
            sq = np.add.reduceat(g * g, starts) if len(starts) else np.zeros(0)
            norms = np.sqrt(sq)
            scale = np.where(norms > self.clipnorm, self.clipnorm / np.maximum(norms, 1e-30), 1.0)
            if np.any(scale != 1.0):
                sizes = np.array([s for _, s in segments])
                g *= np.repeat(scale, sizes).astype(g.dtype)
        return g

    def apply(self, w, g, segments=None):
        """One step on the flat parameter vector w (in place) from the flat gradient g (clipped in place)."""
        if self._state is None or (self._state and self._state[0].shape != w.shape):
            self._state = [np.zeros_like(w) for _ in range(self._slots)]
            self._init_state(w)
        self.clip(g, segments)
        lr = self.current_learning_rate()
        if self.weight_decay:
            w -= w * (self.weight_decay * lr)
        self.iterations += 1
        self._update(w, g, lr, self.iterations)

    def _init_state(self, w):
        pass

    def _update(self, w, g, lr, t):
        raise NotImplementedError

    def get_config(self):
        lr = self.learning_rate
        cfg = {"learning_rate": lr if not isinstance(lr, LearningRateSchedule) else
               {"class_name": type(lr).__name__, "config": lr.get_config()},
               "weight_decay": self.weight_decay, "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
               "global_clipnorm": self.global_clipnorm}
        cfg.update(self._extra_config())
        return cfg

    def _extra_config(self):
        return {}


class SGD(Optimizer):
    """Keras 3's SGD: m = momentum*m - lr*g; w += m (nesterov: w += momentum*m - lr*g); plain w -= lr*g."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        if not 0 <= momentum < 1 or isinstance(momentum, bool):
            raise ValueError(f"momentum: expected a float in [0, 1), got {momentum!r}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self._slots = 1 if self.momentum else 0

    def _update(self, w, g, lr, t):
        if not self.momentum:
            w -= lr * g
            return
        m = self._state[0]
        m *= self.momentum
        m -= lr * g
        if self.nesterov:
            w += self.momentum * m - lr * g
        else:
            w += m

    def _extra_config(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Keras 3's Adam (epsilon outside the square root, bias correction folded into the step size)."""
    _slots = 2
    _fused = True  # one C loop (fastrnn.nn.updates.adam); False: numpy's form (the same bits, for tests)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        for n, v in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= v < 1:
                raise ValueError(f"{n}: expected a float in [0, 1), got {v!r}")
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = float(beta_1), float(beta_2), float(epsilon), \
            bool(amsgrad)
        if self.amsgrad:
            self._slots = 3

    def _update(self, w, g, lr, t):
        m, v = self._state[0], self._state[1]
        b1, b2 = self.beta_1, self.beta_2
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        if self._fused and updates.adam(w, g, m, v, self._state[2] if self.amsgrad else None, 1 - b1, 1 - b2,
                                        alpha, self.epsilon):
            return
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        if self.amsgrad:
            vh = self._state[2]
            np.maximum(vh, v, out=vh)
            v = vh
        w -= alpha * m / (np.sqrt(v) + self.epsilon)

    def _extra_config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras's default weight_decay=0.004)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """Keras 3's RMSprop: v = rho*v + (1-rho)*g^2; step lr*g/sqrt(v + eps) (centered: v - mean(g)^2 + eps)."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = float(rho), float(momentum), float(epsilon), \
            bool(centered)
        self._slots = 1 + (self.momentum > 0) + self.centered

    def _update(self, w, g, lr, t):
        v = self._state[0]
        rho = self.rho
        v *= rho
        v += (1 - rho) * g * g
        if self.centered:
            ag = self._state[-1]
            ag *= rho
            ag += (1 - rho) * g
            denom = v - ag * ag + self.epsilon
        else:
            denom = v + self.epsilon
        inc = lr * g / np.sqrt(denom)
        if self.momentum > 0:
            m = self._state[1]
            m *= self.momentum
            m += inc
            w -= m
        else:
            w -= inc

    def _extra_config(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Keras 3's Adagrad: acc += g^2; w -= lr*g/sqrt(acc + eps), acc starting at initial_accumulator_value."""
    _slots = 1

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.initial_accumulator_value, self.epsilon = float(initial_accumulator_value), float(epsilon)

    def _init_state(self, w):
        self._state[0][...] = self.initial_accumulator_value

    def _update(self, w, g, lr, t):
        acc = self._state[0]
        acc += g * g
        w -= lr * g / np.sqrt(acc + self.epsilon)

    def _extra_config(self):
        return {"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon}


_NAMES = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier):
    """An optimizer from a name ("adam", "sgd", "rmsprop", "adamw", "adagrad"), an instance or a config dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict) and str(identifier.get("class_name", "")).lower() in _NAMES:
        cfg = dict(identifier.get("config", {}))
        lr = cfg.get("learning_rate")
        if isinstance(lr, dict):
            cls = {"ExponentialDecay": ExponentialDecay, "CosineDecay": CosineDecay}[lr["class_name"]]
            cfg["learning_rate"] = cls(**lr["config"])
        return _NAMES[identifier["class_name"].lower()](**cfg)
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    raise ValueError(f"optimizer: unknown optimizer {identifier!r}; expected one of {sorted(_NAMES)} or a "
                     f"fastrnn.optimizers.Optimizer")
