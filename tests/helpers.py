"""Small shared pieces for the tests: tiny models and data on a chosen backend."""

import numpy as np
from autograd import grad

from refmeta import gradcheck
from refmeta.data import tasks
from refmeta.nn import layers, losses, trees


def tiny_mlp(rng, d_in=1, hidden=4, d_out=1, depth=2):
    """Host params of a d_in-hidden-...-d_out MLP with O(1) weights (so curvature is visible)."""
    sizes = (d_in,) + (hidden,) * depth + (d_out,)
    return layers.mlp_init(rng, sizes, weight_std=0.7)


def mlp_loss(activation):
    return losses.model_loss(lambda p, x: layers.mlp_apply(p, x, activation=activation), losses.mse)


def regression_episode(dev, rng, n_tasks, n_support, n_query, d_in=1, d_out=1):
    arrays = [rng.uniform(-2, 2, size=(n_tasks, n, d)) for n in (n_support, n_query)
              for d in (d_in, d_out)]
    return tasks.Episode.validated(*(dev.asarray(a) for a in arrays))


def classification_episode(dev, rng, n_tasks, n_way, n_shot, n_query, image_shape):
    """Random images with labels 0..n_way-1 (each class n_shot times in support)."""
    support_y = np.tile(np.repeat(np.arange(n_way), n_shot), (n_tasks, 1))
    query_y = np.tile(np.repeat(np.arange(n_way), n_query), (n_tasks, 1))
    support_x = rng.standard_normal((n_tasks, n_way * n_shot) + image_shape)
    query_x = rng.standard_normal((n_tasks, n_way * n_query) + image_shape)
    return tasks.Episode.validated(dev.asarray(support_x), dev.asarray(support_y),
                                   dev.asarray(query_x), dev.asarray(query_y), n_way=n_way)


def max_abs_diff(a, b, dev):
    """max |a - b| over every leaf of two trees (or arrays), as a float."""
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k], dev) for k in a)
    return float(np.max(np.abs(dev.to_host(a) - dev.to_host(b))))


def check_grad_away_from_kinks(f, x, rng, n_directions=3, rtol=1e-5, grad_fn=None):
    """Check ⟨grad_fn(x), u⟩ (default autograd's ∇f) against central differences along random
    directions, skipping any direction where the differences at ε = 1e-5 and 1e-6 disagree (a
    ReLU, max-pool or clip kink lies within reach). Returns how many directions were checked;
    the caller requires at least one."""
    gradient = (grad_fn or grad(f))(x)
    checked = 0
    for _ in range(n_directions):
        u = {k: np.asarray(rng.standard_normal(np.shape(v)), like=v) for k, v in x.items()}
        coarse, fine = (gradcheck.directional_derivative(f, x, u, eps) for eps in (1e-5, 1e-6))
        if abs(coarse - fine) > 1e-6 * max(abs(fine), 1.0):
            continue
        analytic = float(trees.vdot(gradient, u))
        assert abs(analytic - fine) <= 1e-8 + rtol * max(abs(analytic), abs(fine)), (analytic, fine)
        checked += 1
    return checked
