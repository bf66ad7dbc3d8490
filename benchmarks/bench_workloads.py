"""The benchmarks' workloads: the data every implementation gets, and refmeta's side of each.

Every ``*_data(seed)`` returns host float64 arrays drawn from ``numpy.random.default_rng(seed)``;
``in_dtype`` casts them (floating arrays only; labels stay integers) for a float32 run, as the
Omniglot demos cast theirs.  Every ``refmeta_*`` returns a function of no arguments that
computes the gradient once (a dict by parameter name).  The peers are in ``bench_torch`` and
``bench_jax``; bench.py's module docstring says what each workload computes.
"""

from functools import partial

import numpy as np

N_TASKS, K_SUPPORT, K_QUERY, SIZES = 25, 10, 10, (1, 40, 40, 1)
N_WAY, K_SHOT, N_QUERY_PER_CLASS, HIDDEN, IMAGE = 5, 1, 15, 64, 28
SNAIL_EPISODES, SNAIL_QUERIES = 8, 1     # the demo's step: 8 episodes 5-way 1-shot, 1 query per class
METANET_WAY, METANET_QUERIES, METANET_HIDDEN = 20, 1, 32   # the demo's training episode


def in_dtype(tree, dtype):
    """A dict, tuple or array with every floating array cast to ``dtype`` (integers kept)."""
    cast = lambda a: a.astype(dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a
    if isinstance(tree, dict):
        return {k: cast(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(cast(a) for a in tree)
    return cast(tree)


# ----- sinusoid: MAML's MLP 1-40-40-1, a meta-batch of 25 tasks -----
def sinusoid_data(seed=0):
    from refmeta.data import tasks
    from refmeta.nn import models
    rng = np.random.default_rng(seed)
    params = models.mlp_init(rng, SIZES)
    episode = tasks.sample_sinusoid_episode(rng, tasks.SinusoidFamily(), N_TASKS, K_SUPPORT, K_QUERY)
    return params, tuple(np.asarray(a) for a in episode)


def refmeta_sinusoid(params, data, vectorised=True):
    """``maml.meta_gradient`` with the paper's sinusoid MLP (MAMLConfig's default model), its
    loss vectorised across tasks or wrapped by ``maml.looped`` into a per-task loop."""
    from refmeta import maml
    from refmeta.data import tasks
    from refmeta.nn import losses, models
    model = maml.MAMLConfig().model
    if not vectorised:
        one_task = losses.model_loss(models.mlp_apply, partial(losses.mse, check=False))
        model = model._replace(loss=maml.looped(one_task))
    config, episode = maml.MAMLConfig(model, inner_lr=0.01, inner_steps=1), tasks.Episode(*data)
    return lambda: maml.meta_gradient(params, episode, config)


def refmeta_sinusoid_fused(params, data, written_out):
    """The same meta-gradient with ``fused_mlp`` (written-out gradient and R-operator): through
    ``maml.meta_gradient``, or by ``FusedMLP.meta_gradient`` (MAML's Eq. (3), no autograd)."""
    from refmeta import maml
    from refmeta.data import tasks
    from refmeta.fast import fused_mlp
    mlp = fused_mlp.FusedMLP(SIZES, "relu")
    config = maml.MAMLConfig(mlp.model(), inner_lr=0.01, inner_steps=1)
    episode, flat = tasks.Episode(*data), mlp.pack(params)
    if written_out:
        return lambda: mlp.unpack(mlp.meta_gradient(flat, episode, config))
    return lambda: mlp.unpack(maml.meta_gradient(flat, episode, config))


# ----- conv4 second-order MAML: MAML's Omniglot net, one 5-way 1-shot task -----
def conv4_data(seed=0):
    from refmeta.nn import models
    rng = np.random.default_rng(seed)
    params = models.conv4_init(rng, 1, N_WAY, HIDDEN, "stride", "offset", IMAGE)
    support_x = rng.uniform(0, 1, (1, N_WAY * K_SHOT, 1, IMAGE, IMAGE))
    query_x = rng.uniform(0, 1, (1, N_WAY * N_QUERY_PER_CLASS, 1, IMAGE, IMAGE))
    support_y = np.repeat(np.arange(N_WAY), K_SHOT)[None]
    query_y = np.repeat(np.arange(N_WAY), N_QUERY_PER_CLASS)[None]
    return params, (support_x, support_y, query_x, query_y)


def refmeta_conv4(params, data, inner_steps=1):
    from refmeta import contract, maml
    from refmeta.data import tasks
    from refmeta.nn import losses, models
    init = lambda rng: models.conv4_init(rng, 1, N_WAY, HIDDEN, "stride", "offset", IMAGE)
    model = contract.supervised(init, models.conv4_apply, partial(losses.cross_entropy, check=False),
                                f"conv4 stride, {HIDDEN} filters, cross-entropy")
    config = maml.MAMLConfig(model, n_way=N_WAY, inner_lr=0.4, inner_steps=inner_steps,
                             inner_reduction="n_way_times_mean")
    episode = tasks.Episode(*data)
    return lambda: maml.meta_gradient(params, episode, config)


# ----- the ProtoNet episode and the conv4 max-pool pass under it -----
def metric_config():
    """ProtoNet with conv4 max-pool, HIDDEN filters on IMAGE×IMAGE, N_WAY-way."""
    from refmeta import protonet
    return protonet.ProtoNetConfig(protonet.conv4_embedding(HIDDEN, image_size=IMAGE), n_way=N_WAY)


def metric_data(seed=0):
    """(params, images (80, 1, 28, 28): the support images first, support_y, query_y)."""
    from refmeta import protonet
    rng = np.random.default_rng(seed)
    params = protonet.init(rng, metric_config())
    images = rng.uniform(0, 1, (N_WAY * (K_SHOT + N_QUERY_PER_CLASS), 1, IMAGE, IMAGE))
    return params, images, np.repeat(np.arange(N_WAY), K_SHOT), np.repeat(np.arange(N_WAY), N_QUERY_PER_CLASS)


def refmeta_conv4_pass(params, images, support_y=None, query_y=None):
    """The gradient of Σ z² for z = conv4 max-pool (images): one forward and one backward pass."""
    import autograd.numpy as anp
    from autograd import grad
    embed = metric_config().embedding.apply
    return lambda: grad(lambda p: anp.sum(embed(p, images) ** 2))(params)


def refmeta_protonet(params, images, support_y, query_y):
    """The gradient of ``protonet.loss`` on one episode (its door's checks included)."""
    from autograd import grad
    from refmeta import protonet
    from refmeta.contract import Episode
    config, n_support = metric_config(), len(support_y)
    episode = Episode(images[:n_support], support_y, images[n_support:], query_y)
    return lambda: grad(protonet.loss)(params, episode, config)


# ----- SNAIL: one training step (Mishra et al. 2018, the paper's Omniglot stack) -----
def snail_data(seed=0):
    from refmeta import snail
    rng = np.random.default_rng(seed)
    config = snail.SNAILConfig(n_way=N_WAY, k_shot=K_SHOT)
    params = snail.init(rng, config)
    support_x = rng.uniform(0, 1, (SNAIL_EPISODES, N_WAY * K_SHOT, 1, IMAGE, IMAGE))
    query_x = rng.uniform(0, 1, (SNAIL_EPISODES, N_WAY * SNAIL_QUERIES, 1, IMAGE, IMAGE))
    support_y = np.stack([rng.permutation(np.repeat(np.arange(N_WAY), K_SHOT)) for _ in range(SNAIL_EPISODES)])
    query_y = np.tile(np.repeat(np.arange(N_WAY), SNAIL_QUERIES), (SNAIL_EPISODES, 1))
    return config, params, (support_x, support_y, query_x, query_y)


def refmeta_snail(config, params, data):
    """({case: () -> gradient dict}: the whole step (embedding + stack) and the stack alone,
    the sequences the stack alone reads)."""
    import autograd.numpy as anp
    from autograd import grad
    from refmeta import snail
    from refmeta.data import tasks
    episode = tasks.Episode(*data)
    rng = np.random.default_rng(1)
    sequences = rng.standard_normal((SNAIL_EPISODES * N_WAY * SNAIL_QUERIES, config.sequence_length,
                                     config.embedding_dim + N_WAY))
    sequences[:, -1, config.embedding_dim:] = 0.0
    stack = {k: v for k, v in params.items() if not k.startswith("embed.")}
    stack_loss = lambda p: anp.sum(snail.apply(p, sequences, config)[..., -1, :] ** 2)
    # The public loss: its input checks are timed with the step, as in the demo's snail.step.
    cases = {"step": lambda: grad(snail.loss)(params, episode, config),
             "stack": lambda: grad(stack_loss)(stack)}
    return cases, sequences


def snail_channels(config):
    from refmeta import snail
    return snail.channel_plan(config)


# ----- Meta Networks: one training step as the Omniglot demo takes it -----
def metanet_data(seed=0):
    from refmeta import metanet
    rng = np.random.default_rng(seed)
    config = metanet.MetaNetConfig(n_way=METANET_WAY, hidden=METANET_HIDDEN, n_blocks=4, fast_init_scale=0.1,
                                   fast_conv_blocks=0)
    params = metanet.init(rng, config)
    support_x = rng.uniform(0, 1, (METANET_WAY, 1, IMAGE, IMAGE))
    query_x = rng.uniform(0, 1, (METANET_WAY * METANET_QUERIES, 1, IMAGE, IMAGE))
    support_y = rng.permutation(METANET_WAY)
    query_y = np.repeat(np.arange(METANET_WAY), METANET_QUERIES)
    return config, params, (support_x, support_y, query_x, query_y)


def refmeta_metanet(config, params, data):
    from autograd import grad
    from refmeta import contract, metanet
    episode = contract.Episode(*data)
    return lambda: grad(metanet.loss)(params, episode, config)
