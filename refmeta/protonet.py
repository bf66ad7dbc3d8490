"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017), Section 2.1-2.2, Algorithm 1.

Symbols
    f_φ        embed(params, x)       any embedding (..., n, *x) -> (..., n, d), e.g. the
                                      4-block conv net with max-pool (``conv4_embedding``)
    N, K       n_way, shots           S_k: the support examples of class k = 0..N−1
    c_k        prototypes             (..., N, d)
    d(z, c)    distance               "sqeuclidean" (default), "euclidean", "cosine"
    Q          the query points (x, y)

Equations
    c_k = (1/|S_k|) Σ_{x_i ∈ S_k} f_φ(x_i)                                       (1)  Eq. 1
    p_φ(y = k | x) = exp(−d(f_φ(x), c_k)) / Σ_k′ exp(−d(f_φ(x), c_k′))          (2)  Eq. 2
    J(φ) = (1/|Q|) Σ_{(x, y) ∈ Q} −log p_φ(y | x)                                (3)  Algorithm 1

Distances, z (..., m, d) against c (..., n, d) -> (..., m, n):
    sqeuclidean   ‖z − c‖²       what the paper and the authors' code use (the text says
                                 "Euclidean"; Section 2.7 argues for the square)
    euclidean     ‖z − c‖        (its gradient is infinite where z = c)
    cosine        1 − zᵀc / (‖z‖ ‖c‖)

Two identities the tests check.  With f_φ the identity, (2) is a nearest-centroid classifier.
With the squared distance, −‖z − c_k‖² = 2c_kᵀz − c_kᵀc_k − zᵀz and the last term is the same
for every k, so (2) is a linear softmax model with w_k = 2c_k, b_k = −‖c_k‖² (Section 2.4, Eqs.
8-9).  With K = 1, (2) is a Matching Network without FCE under the same distance.

Conventions (``ProtoNetConfig``, recorded by ``conventions()``):
    distance          "sqeuclidean" (default), "euclidean" or "cosine"
    joint_embedding   True (default, the authors' code): support and query go through f_φ in
                      one call, so transductive batch norm sees both; False: two calls
    task_reduction    "mean" (default) or "sum" of the per-task losses (3) over a leading task axis
Every function takes leading task axes: support (..., N·K, ...), query (..., n_q, ...).
"""

from dataclasses import asdict, dataclass

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.device import backend
from refmeta.nn import layers, losses
from refmeta.data.tasks import Episode

DISTANCES = ("sqeuclidean", "euclidean", "cosine")
TASK_REDUCTIONS = ("mean", "sum")


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ProtoNetConfig:
    """The choices of (1)-(3); the defaults are the paper's."""
    distance: str = "sqeuclidean"
    joint_embedding: bool = True
    task_reduction: str = "mean"

    def __post_init__(self):
        check_choice("distance", self.distance, DISTANCES)
        check_choice("task_reduction", self.task_reduction, TASK_REDUCTIONS)
        if not isinstance(self.joint_embedding, bool):
            raise TypeError(f"joint_embedding must be True or False; got {self.joint_embedding!r}")

    def conventions(self):
        return {**asdict(self), "prototype": "class mean of the support embeddings (Eq. 1)",
                "loss": "mean over query points of -log softmax(-d)[y] (Algorithm 1)"}


def prototypes(z_support, support_y, n_way):
    """(1): z_support (..., n_s, d), support_y (..., n_s) -> c (..., N, d)."""
    check_labels(support_y, None, n_way)
    _check_rows(z_support, support_y, "z_support", "support_y")
    one_hot = losses.one_hot(support_y, n_way, z_support)                  # (..., n_s, N)
    sums = anp.matmul(anp.swapaxes(one_hot, -1, -2), z_support)              # (..., N, d)
    return sums / anp.sum(one_hot, axis=-2)[..., None]


def pairwise_distance(z, c, distance="sqeuclidean"):
    """d(z_i, c_j) for z (..., m, d) and c (..., n, d) -> (..., m, n); see the module docstring."""
    check_choice("distance", distance, DISTANCES)
    if anp.ndim(z) < 2 or anp.ndim(c) < 2 or anp.shape(z)[-1] != anp.shape(c)[-1]:
        raise ValueError(f"embeddings must be (..., m, d) and (..., n, d) with the same d; "
                         f"got {anp.shape(z)} and {anp.shape(c)}")
    if distance == "cosine":
        return 1.0 - anp.matmul(normalize(z), anp.swapaxes(normalize(c), -1, -2))
    difference = z[..., :, None, :] - c[..., None, :, :]                    # (..., m, n, d)
    squared = anp.sum(difference * difference, axis=-1)
    return squared if distance == "sqeuclidean" else anp.sqrt(squared)


def normalize(z, eps=1e-12):
    """z / ‖z‖ along the last axis (‖z‖ floored at eps, as a zero vector has no direction)."""
    return z / anp.sqrt(anp.maximum(anp.sum(z * z, axis=-1, keepdims=True), eps * eps))


def log_probabilities(z_support, support_y, z_query, n_way, distance="sqeuclidean"):
    """(2) in logs: log p(y = k | x) for every query, (..., n_q, N)."""
    _check_embeddings(z_support, z_query)
    return losses.log_softmax(-pairwise_distance(z_query, prototypes(z_support, support_y, n_way),
                                                 distance))


def loss_from_embeddings(z_support, support_y, z_query, query_y, n_way, config=ProtoNetConfig()):
    """(3) for every task: the mean over queries of −log p(y | x), shape (...)."""
    check_labels(support_y, query_y, n_way)
    _check_embeddings(z_support, z_query)
    _check_rows(z_query, query_y, "z_query", "query_y")
    logits = -pairwise_distance(z_query, prototypes(z_support, support_y, n_way), config.distance)
    return losses.cross_entropy(logits, query_y, "mean")                   # log_softmax inside


def embed_episode(params, episode, embed, joint=True):
    """(f_φ(support_x), f_φ(query_x)), through one call of ``embed`` when ``joint``."""
    if not joint:
        return embed(params, episode.support_x), embed(params, episode.query_x)
    axis = anp.ndim(episode.support_y) - 1                                    # the example axis
    z = embed(params, anp.concatenate([episode.support_x, episode.query_x], axis=axis))
    n_support = anp.shape(episode.support_y)[-1]
    return z[..., :n_support, :], z[..., n_support:, :]


def episode_loss(params, episode, embed, n_way, config=ProtoNetConfig()):
    """J(φ) of (3) for an Episode (one task, or a meta-batch reduced by task_reduction)."""
    episode = Episode.validated(*episode, n_way=n_way)
    z_support, z_query = embed_episode(params, episode, embed, config.joint_embedding)
    task_losses = loss_from_embeddings(z_support, episode.support_y, z_query, episode.query_y,
                                       n_way, config)
    return anp.mean(task_losses) if config.task_reduction == "mean" else anp.sum(task_losses)


def accuracy(log_probs, query_y):
    """Fraction of queries whose most probable class is the label, per task (...) (host floats)."""
    predicted = np.argmax(backend.to_host(getval(log_probs)), axis=-1)
    return np.mean(predicted == backend.to_host(query_y), axis=-1)


# ----- the 4-block conv embedding with max-pool (Section 3.1) -----
def conv4_embedding_init(rng, hidden=64, in_channels=1, image_size=28):
    """Host params of the conv4 max-pool net without a head: a (hidden·H/16·W/16)-d embedding
    (64-d on 28×28).  Batch norm learns its offset and scale, as PyTorch's BatchNorm2d."""
    return layers.conv4_init(rng, in_channels=in_channels, n_out=None, hidden=hidden,
                             variant="maxpool", bn_affine="both", image_size=image_size)


def conv4_embedding(bn_mode="transductive", bn_state=None, bn_eps=1e-5):
    """embed(params, x (..., n, C, H, W)) -> (..., n, d): conv4 with max-pool; BN eps as PyTorch."""
    return lambda params, x: layers.conv4_apply(params, x, variant="maxpool", bn_mode=bn_mode,
                                                bn_state=bn_state, bn_eps=bn_eps)


# ----- checks -----
def check_labels(support_y, query_y, n_way):
    """Labels in 0..n_way−1, every class in every task's support; ValueError/TypeError if not."""
    if isinstance(n_way, bool) or not isinstance(n_way, (int, np.integer)) or n_way < 2:
        raise ValueError(f"n_way must be an integer >= 2; got {n_way!r}")
    for name, y in (("support", support_y), ("query", query_y)):
        if y is None:
            continue
        if not hasattr(y, "dtype") or not np.issubdtype(y.dtype, np.integer) or anp.ndim(y) < 1:
            raise TypeError(f"{name} labels must be an integer array (..., n); got "
                            f"{getattr(y, 'dtype', type(y).__name__)} {anp.shape(y)}")
        host = backend.to_host(y)
        if host.size and (host.min() < 0 or host.max() >= n_way):
            raise ValueError(f"{name} labels must be in 0..{n_way - 1} (n_way={n_way}); "
                             f"got values from {host.min()} to {host.max()}")
        if name == "support":
            present = (host[..., None] == np.arange(n_way)).any(axis=-2)    # (..., N)
            if not present.all():
                missing = sorted(set(np.nonzero(~present)[-1].tolist()))
                raise ValueError(f"every class 0..{n_way - 1} needs at least one support example; "
                                 f"classes {missing} have none")


def _check_rows(z, y, z_name, y_name):
    if anp.ndim(z) != anp.ndim(y) + 1 or anp.shape(z)[:-1] != anp.shape(y):
        raise ValueError(f"{z_name} must be (..., n, d) with (..., n) = {y_name}'s shape "
                         f"{anp.shape(y)}; got {anp.shape(z)}")


def _check_embeddings(z_support, z_query):
    if anp.ndim(z_support) != anp.ndim(z_query) or anp.shape(z_support)[:-2] != anp.shape(z_query)[:-2] \
            or anp.shape(z_support)[-1] != anp.shape(z_query)[-1]:
        raise ValueError(f"support and query embeddings must be (..., n_s, d) and (..., n_q, d) "
                         f"with the same task axes and d; got {anp.shape(z_support)} and "
                         f"{anp.shape(z_query)}")
