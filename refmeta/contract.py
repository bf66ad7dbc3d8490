"""The types every algorithm shares: Episode (its data), Model (a network), Step (its result).

Every algorithm module (``maml``, ``reptile``, ``protonet``, ``matching``, ``snail``,
``metanet``) has the same public shape; docs/architecture.md tables it:

    Config                         frozen dataclass; ``Config.conventions()`` is JSON-able
    init(rng, config)              -> params, a dict of host float64 arrays
    init_state(params, config)     -> the training state (Adam's moments, running BN, ...)
    loss(params, episode, config)  -> the training objective on an Episode, a scalar
    step(params, state, episode, config) -> Step(params, state, loss): one training step
    predict(params, episode, config)     -> the query outputs (logits or regression values)
    adapt(params, episode, config)       -> task-adapted params (MAML and Reptile only)

The first positional arguments are always these; an algorithm's extras are keyword-only
(MAML's ``steps``, Reptile's ``batch_indices``, SNAIL's ``bn_state``, Meta Networks'
``meta_info``).  Each entry point checks its inputs once, through ``refmeta.checks``, and
then runs unchecked math.
"""

from typing import Any, Callable, NamedTuple


class Episode(NamedTuple):
    """One task, or a meta-batch of T tasks when every field has a leading task axis.

        regression      x (..., n, d_in) float    y (..., n, d_out) float
        classification  x (..., n, ...)  float    y (..., n) integer labels in 0..n_way-1
    """
    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any

    @classmethod
    def validated(cls, support_x, support_y, query_x, query_y, n_way=None, k_shot=None):
        """Build an Episode after ``checks.episode``: shapes, dtypes, finiteness and labels."""
        from refmeta import checks
        return checks.episode(cls(support_x, support_y, query_x, query_y), n_way, k_shot)


class Model(NamedTuple):
    """A network as MAML, Reptile, ProtoNet and Matching Networks take it (stax's pair + a loss).

    init(rng) -> host params;  apply(params, x (..., n, ...)) -> outputs (..., n, ...).
    loss(params, x, y, reduction) -> one loss per leading (task) index, reduced over the
    examples as ``refmeta.nn.losses`` does; None for an embedding, which has no loss.
    ``name`` is what the algorithms' ``conventions()`` record.
    """
    init: Callable
    apply: Callable
    loss: Callable = None
    name: str = "model"


class Step(NamedTuple):
    """What every algorithm's ``step`` returns: the new params and state, and the loss that
    the step descended (evaluated at the params it started from)."""
    params: dict
    state: Any
    loss: Any


def supervised(init, apply, loss, name="model"):
    """A Model whose loss is ``loss(apply(params, x), y, reduction)``.

    Pass the loss with ``check=False`` (``functools.partial(losses.cross_entropy, check=False)``):
    MAML and Reptile check the episode at their door, and the model's loss runs at every inner
    step, where a check would copy the labels to the host again each time.
    """
    return Model(init, apply, lambda params, x, y, reduction: loss(apply(params, x), y, reduction),
                 name)
