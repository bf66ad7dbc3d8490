"""The types every algorithm shares: Episode (its data), Model (a network), State and Step.

Every algorithm module (``maml``, ``reptile``, ``protonet``, ``matching``, ``snail``,
``metanet``) has the same public shape; docs/architecture.md tables it:

    Config                         frozen dataclass; ``Config.conventions()`` is JSON-able
    init(rng, config)              -> params, a dict of host float64 arrays
    init_state(params, config)     -> State: everything ``step`` updates besides the params
    loss(params, episode, config, *, state=None)   -> the training objective, a scalar
    step(params, state, episode, config)           -> Step(params, state, loss)
    predict(params, episode, config, *, state=None) -> the query outputs (logits or values)
    adapt(params, episode, config)                 -> task-adapted params (MAML and Reptile)

The first positional arguments are always these.  ``loss`` and ``predict`` read running
batch-norm statistics from ``state`` where the config says so (bn mode "running"), and
accept it everywhere; the other extras are keyword-only (MAML's ``steps``, Reptile's
``batch_indices``, Meta Networks' ``meta_info``).

Episodes.  The task axes are the labels' leading axes: support_y (n,) or, for regression,
(n, d_out) is one task; (T, n) or (T, n, d_out) a meta-batch of T tasks.  Every algorithm
takes a meta-batch with one leading task axis and one task alone; ProtoNet, Matching Networks
and SNAIL take any number of leading axes.

Checks.  Each entry point (``init``, ``init_state``, ``loss``, ``step``, ``predict``,
``adapt``, a ``Config``'s constructor) checks its inputs once, at its door, through
``refmeta.checks``, and then runs the equations, which check nothing.  A user's model is held
to its contract on what it returns, where it returns it (kind and shape, no device read); each
entry point reads once whether its results are finite, and only if they are not recomputes
step by step to name the first NaN or inf (a loss at inner step j, an embedding, a parameter's
gradient) and, in ``step``, the step, which is not taken.
"""

from typing import Any, Callable, NamedTuple

TASK_REDUCTIONS = ("mean", "sum")          # over a meta-batch's tasks: (1/T) Σ_i or Σ_i


class Episode(NamedTuple):
    """One task, or a meta-batch of T tasks when every field has a leading task axis.

        regression      x (..., n, d_in) float    y (..., n, d_out) float
        classification  x (..., n, ...)  float    y (..., n) integer labels in 0..n_way-1

    ``refmeta.checks.episode`` checks one (shapes, finiteness, labels, the N-way K-shot
    arithmetic) and returns it as an Episode.
    """
    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any


class BatchNorm(NamedTuple):
    """A Model's batch norm, whose running statistics ``init_state`` and ``step`` keep.

    init() -> host statistics {name: (C,)}: "….mean" 0, "….var" 1, named as the network's
        batch-norm params are ("bn0.mean" beside "bn0.offset").
    apply(params, x, running) -> (outputs, moments): running None normalises by the batch's own
        statistics, as ``Model.apply`` does, and moments are the batch's {name: (..., C)}
        (unbiased variances, one per leading index); ``running`` given normalises by it.
    mode: what ``loss`` and ``predict`` normalise by: "transductive" the batch's statistics,
        "running" state.bn.  ``step`` always trains on the batch's statistics and tracks them:
        state.bn ← (1 − momentum)·state.bn + momentum·(the moments, averaged over the leading axes).
    """
    init: Callable
    apply: Callable
    mode: str = "transductive"
    momentum: float = 0.1


class Model(NamedTuple):
    """A network as MAML, Reptile, ProtoNet and Matching Networks take it (stax's pair + a loss).

    init(rng) -> host params;  apply(params, x (..., n, ...)) -> outputs (..., n, ...).
    loss(params, x, y, reduction) -> one loss per leading (task) index, reduced over the
    examples as ``refmeta.nn.losses`` does; None for an embedding, which has no loss.
    ``name`` is what the algorithms' ``conventions()`` record; ``batch_norm`` (a BatchNorm)
    where the network's running batch-norm statistics are to be kept, else None (Reptile, which
    keeps none, refuses a Model that has one).
    """
    init: Callable
    apply: Callable
    loss: Callable = None
    name: str = "model"
    batch_norm: BatchNorm = None


class State(NamedTuple):
    """Everything ``step`` updates besides the params: ``init_state`` makes it, ``step`` returns
    the next one, ``loss`` and ``predict`` read ``bn`` where the config says so.

        optimizer   the outer optimizer's state, Adam's (step, m, v); None where the update
                    keeps none (Reptile: its empty state is State(None, {}))
        bn          running batch-norm statistics {"….bn{i}.mean", "….bn{i}.var": (C,)},
                    named as the network's params; {} where no statistics are kept
    """
    optimizer: Any
    bn: dict


class Step(NamedTuple):
    """What every algorithm's ``step`` returns: the new params and State, and the loss that
    the step descended (evaluated at the params it started from)."""
    params: dict
    state: State
    loss: Any


def supervised(init, apply, loss, name="model", batch_norm=None):
    """A Model whose loss is ``loss(apply(params, x), y, reduction)``.

    Pass the loss with ``check=False`` (``functools.partial(losses.cross_entropy, check=False)``):
    MAML and Reptile check the episode at their door, and the model's loss runs at every inner
    step, where a check would copy the labels to the host again each time.
    """
    return Model(init, apply, lambda params, x, y, reduction: loss(apply(params, x), y, reduction),
                 name, batch_norm)
