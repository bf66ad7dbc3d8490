"""Losses with an explicit reduction over the example axis.

Each loss first forms one value per example, then reduces the **example axis**
(the last axis of that per-example array) as ``reduction`` says:

    "mean"  (1/n) Σ_i ℓ_i
    "sum"   Σ_i ℓ_i
    "none"  the per-example values, shape (..., n)

``cross_entropy`` also takes ``"n_way_times_mean"``: (C/n) Σ_i ℓ_i with C the
number of classes.  It is the MAML authors' inner loss (each example's CE
divided by K, summed over all N·K examples); a port that uses the plain mean
with the same α steps N times smaller.

Leading axes (tasks in a meta-batch) are kept, so a meta-batch gives one loss
per task.

    mse:            ℓ_i = (1/d) Σ_j (pred_ij − target_ij)²          pred (..., n, d)
    cross_entropy:  ℓ_i = −log softmax(logits_i)[y_i]
                        = logsumexp(logits_i) − logits_i[y_i]        logits (..., n, C)

The log-softmax subtracts the row maximum first, so large logits never
overflow.

Primitive.  mse's mean of squares is one autograd primitive, ``mean_square(r, axes)`` =
(1/m) Σ r² over the last one or two axes, with its VJP written out, r̄ = (2/m) ḡ r
(``_scaled_residual``), and that VJP's in ḡ, (2/m) Σ h r (``_residual_dot``); the three are
closed under taking adjoints, so they differentiate to any order (MAML differentiates the
inner loss twice) at one recorded operation where ``square`` and ``mean`` took two, and they
compute the same floating-point operations in the same order.

Checks.  ``mse``, ``cross_entropy`` and ``one_hot`` are public doors: by default they refuse
NaN or inf inputs, mismatched shapes, unknown reductions and labels outside 0..C−1 (through
``refmeta.checks``).  An algorithm that validated its episode at its own entry calls them with
``check=False`` (as SciPy's ``check_finite=False``), so nothing is checked twice.
"""

import math

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from refmeta import checks, contract

REDUCTIONS = ("mean", "sum", "none")
CLASSIFICATION_REDUCTIONS = REDUCTIONS + ("n_way_times_mean",)


def reduce(per_example, reduction):
    """Reduce (..., n) per-example values over the last axis."""
    if reduction == "mean":
        return anp.mean(per_example, axis=-1)
    if reduction == "sum":
        return anp.sum(per_example, axis=-1)
    if reduction == "none":
        return per_example
    checks.choice("reduction", reduction, REDUCTIONS)       # raises: not one of them


def mse(pred, target, reduction="mean", check=True):
    """Mean squared error. pred, target (..., n, d) -> (...) or (..., n) for "none"."""
    if check:
        checks.choice("reduction", reduction, REDUCTIONS)
        checks.finite("mse pred", pred)
        checks.finite("mse target", target)
        if anp.ndim(pred) < 2 or anp.shape(pred) != anp.shape(target):
            raise ValueError(f"mse: expected pred and target (..., n, d) of one shape; "
                             f"got pred {anp.shape(pred)} and target {anp.shape(target)}")
    if reduction == "mean":                         # (1/n) Σ_i (1/d) Σ_j in one reduction
        return mean_square(pred - target, (-2, -1))
    return reduce(mean_square(pred - target, (-1,)), reduction)


# ----- the mean of squares, one primitive: three closed under adjoints -----
@primitive
def mean_square(r, axes):
    """(1/m) Σ r² over ``axes`` (the last one or two axes of r), m the entries summed."""
    return np.square(r).mean(axis=axes)


@primitive
def _scaled_residual(r, g, axes):
    """r̄ = (2/m) ḡ r, ḡ (one per reduced block) spread over ``axes``: mean_square's VJP."""
    return g.reshape(g.shape + (1,) * len(axes)) / _entries(r, axes) * 2 * r


@primitive
def _residual_dot(h, r, axes):
    """(2/m) Σ h r over ``axes``: _scaled_residual's VJP in ḡ."""
    return (h * r).sum(axis=axes) * 2 / _entries(r, axes)


def _entries(r, axes):
    return math.prod(r.shape[axis] for axis in axes)


defvjp(mean_square, lambda ans, r, axes: lambda g: _scaled_residual(r, g, axes))
defvjp(_scaled_residual, lambda ans, r, g, axes: lambda h: _scaled_residual(h, g, axes),
       lambda ans, r, g, axes: lambda h: _residual_dot(h, r, axes))
defvjp(_residual_dot, lambda ans, h, r, axes: lambda k: _scaled_residual(r, k, axes),
       lambda ans, h, r, axes: lambda k: _scaled_residual(h, k, axes))


def log_softmax(logits, axis=-1):
    """Numerically stable log-softmax."""
    shifted = logits - _stop_gradient_max(logits, axis)
    return shifted - anp.log(anp.sum(anp.exp(shifted), axis=axis, keepdims=True))


def one_hot(labels, n_classes, like, check=True):
    """(..., n) integer labels -> (..., n, n_classes) float one-hot on ``like``'s device."""
    if check:
        checks.integer("n_classes", n_classes, minimum=1)
        checks.float_array("one_hot like", like)
        checks.labels("one_hot labels", labels, n_classes)
    like = getval(like)
    classes = np.arange(n_classes, like=like)
    return (getval(labels)[..., None] == classes).astype(like.dtype)


def cross_entropy(logits, labels, reduction="mean", check=True):
    """Softmax cross-entropy. logits (..., n, C), labels (..., n) ints in 0..C-1."""
    n_classes = anp.shape(logits)[-1]
    if check:
        checks.choice("reduction", reduction, CLASSIFICATION_REDUCTIONS)
        checks.finite("cross_entropy logits", logits)
        if anp.ndim(logits) < 2:
            raise ValueError(f"cross_entropy: expected logits (..., n, C); got {anp.shape(logits)}")
        checks.labels("cross_entropy labels", labels, n_classes, shape=anp.shape(logits)[:-1])
    log_probs = log_softmax(logits)
    per_example = -anp.sum(log_probs * one_hot(labels, n_classes, logits, check=False), axis=-1)
    if reduction == "n_way_times_mean":
        return n_classes * anp.mean(per_example, axis=-1)
    return reduce(per_example, reduction)


def _stop_gradient_max(x, axis):
    # The shift cancels in log-softmax, so its gradient is zero; detaching it is exact.
    return anp.max(getval(x), axis=axis, keepdims=True)


def model_loss(predict, loss):
    """Bind a model to a loss: (params, x, y, reduction) -> loss(predict(params, x), y, reduction).

    The ``Model.loss`` that ``contract.supervised`` builds; with task-batched params and data it
    returns one loss per task.
    """
    return contract.supervised(None, predict, loss).loss
