"""What the six algorithms' front doors share, so that each module keeps only its own.

    init_params(rng, config, kind, network)   the init door of an algorithm whose network is a
                                     Model: ``config.<network>.init(rng)`` held to the contract
    conventions(config, **extra)     every field of a Config as JSON-able data, then ``extra``
    reduce_tasks(losses, reduction)  the task reduction: mean or sum of per-task losses
    example_reductions(n_way)        the choices of MAML's and Reptile's inner reduction
    as_meta_batch(episode, n_way)    one task (n, ...) as a meta-batch of T = 1, and whether it was
    init_state(params, bn)           State(Adam's zero moments, running statistics on params' device)
    bn_statistics, bn_mode, bn_momentum   a Model's kept batch norm: its statistics and settings
    running(state, mode)             state.bn where batch norm is in mode "running", else None
    apply_model(model, params, x, …) a Model's outputs, with its batch norm's moments kept
    step(where, names, objective, params, state, lr, …)   Adam on an objective, state.bn tracked

These hold no equation of a paper and check none of their inputs: each module's door checks
them (``refmeta.checks``) before it calls these; ``step`` reads once that its loss and gradient
are finite, as every door reads its results.  ``init_params`` is a whole door, the same in the
modules whose network is a user's Model (MAML, Reptile, ProtoNet): it checks the rng and the
config, and holds what the Model's ``init`` returns to the contract.
"""

import dataclasses

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.tracer import getval

from refmeta import checks
from refmeta.contract import TASK_REDUCTIONS, Episode, Model, State, Step
from refmeta.nn import optimizers


def init_params(rng, config, kind, network="model"):
    """The params ``config.<network>.init(rng)`` makes (a ``contract.Model``'s), checked to be a
    dict of floating-point arrays, after ``rng`` (a Generator) and ``config`` (a ``kind``)."""
    checks.generator(rng)
    checks.instance("config", config, kind)
    return checks.model_params(f"config.{network}.init(rng)", getattr(config, network).init(rng))


def conventions(config, **extra):
    """Every field of a frozen dataclass Config as JSON-able data, then ``extra``: what
    reference cases record."""
    return {**{f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}, **extra}


def _plain(value):
    """A Model by its name, a tuple as a list (recursively), anything else as it is."""
    if isinstance(value, Model):
        return value.name
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def example_reductions(n_way):
    """What MAML's and Reptile's inner (and query) losses may reduce their examples by: "mean",
    "sum", and for classification (``n_way`` given) "n_way_times_mean" (the authors' N × mean)."""
    return TASK_REDUCTIONS + (() if n_way is None else ("n_way_times_mean",))


def reduce_tasks(per_task, reduction, axis=None):
    """Per-task values reduced over the tasks (every axis, or ``axis``): their mean ("mean") or
    their sum ("sum")."""
    return anp.mean(per_task, axis=axis) if reduction == "mean" else anp.sum(per_task, axis=axis)


def as_meta_batch(episode, n_way):
    """(the episode with one leading task axis, whether it had none): one task alone, support_y
    (n,) or (n, d_out) for regression (``n_way`` None), becomes a meta-batch of T = 1."""
    single = anp.ndim(episode.support_y) == (1 if n_way is not None else 2)
    return (Episode(*(field[None] for field in episode)) if single else episode), single


def init_state(params, bn=None, optimizer=True):
    """State(Adam's zero moments and step 0 for params, or None without ``optimizer``; ``bn``,
    host running statistics, on params' device and dtype, or {})."""
    if bn:
        like = getval(next(iter(params.values())))
        bn = {k: np.asarray(v, dtype=like.dtype, like=like) for k, v in bn.items()}
    return State(optimizers.adam_init(params) if optimizer else None, bn or {})


def bn_statistics(model, prefixes=("",)):
    """The host running statistics ``model.batch_norm.init()`` names, once per prefix (one per
    network the model is used as); {} for a Model without a kept batch norm."""
    if model.batch_norm is None:
        return {}
    return {prefix + k: v for prefix in prefixes for k, v in model.batch_norm.init().items()}


def bn_mode(model):
    """What a Model's ``loss`` and ``predict`` normalise by: its batch norm's mode, else
    "transductive" (a network's own batch norm, if any, on the batch's statistics)."""
    return "transductive" if model.batch_norm is None else model.batch_norm.mode


def bn_momentum(model):
    """The momentum with which ``step`` tracks a Model's batch norm (None without one)."""
    return None if model.batch_norm is None else model.batch_norm.momentum


def running(state, mode):
    """What ``loss`` and ``predict`` normalise by: state.bn in mode "running", else None (the
    batch's own statistics)."""
    return state.bn if mode == "running" else None


def apply_model(model, params, x, running_bn=None, moments=None, prefix=""):
    """``model``'s outputs for x.  Where ``model.batch_norm`` keeps statistics, normalised by
    ``running_bn`` (names without ``prefix``), or if None by the batch's own, whose moments, named
    with ``prefix``, are appended to the list ``moments`` (bookkeeping: not differentiated)."""
    if model.batch_norm is None or (running_bn is None and moments is None):
        return model.apply(params, x)
    if running_bn is not None:
        running_bn = {k[len(prefix):]: v for k, v in running_bn.items() if k.startswith(prefix)}
    outputs, found = model.batch_norm.apply(params, x, running_bn)
    if moments is not None and running_bn is None:
        moments.append({prefix + k: getval(v) for k, v in found.items()})
    return outputs


def tracked(bn, moments, momentum):
    """Running statistics after the training passes, in order: each pass's moments {name:
    (..., C)}, averaged over their leading axes, move bn by (1 − momentum)·bn + momentum·moment."""
    for found in moments:
        bn = {**bn, **{name: (1 - momentum) * bn[name] + momentum * anp.mean(
            anp.reshape(value, (-1, anp.shape(value)[-1])), axis=0) for name, value in found.items()}}
    return bn


def step(where, names, objective, params, state, lr, explain=None, momentum=None, clip_norm=None):
    """One training step as every algorithm with an outer Adam takes it.

    The value and gradient of ``objective(params, moments)``, whose training passes append their
    batch-norm moments to the list ``moments``; one read that both are finite, else NotFinite
    naming the first NaN or inf of ``explain()`` and then of them, as ``names`` (the loss's, the
    gradient's) call them: ``where``, the step, is not taken.  Then the gradient clipped to
    global norm ``clip_norm`` if given, Adam (step size lr), and state.bn ``tracked`` with
    ``momentum``.  Returns Step(params, State, the loss at the params given).
    """
    moments = []
    value, gradient = value_and_grad(objective)(params, moments)
    checks.finite_results(f"{where} (Adam step {state.optimizer.step + 1}, not taken)",
                          list(zip(names, (value, gradient))), explain)
    gradient = optimizers.clip_by_global_norm(gradient, clip_norm, check=False)
    new_params, optimizer = optimizers.adam_update(params, gradient, state.optimizer, lr=lr,
                                                   check=False)
    return Step(new_params, State(optimizer, tracked(state.bn, moments, momentum)), value)
