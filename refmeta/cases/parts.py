"""What the case builders share: the Array record, its default tolerance, the loss
descriptions, the synthetic episode of the classification cases and its batch-norm
perturbation."""

import math
from typing import NamedTuple

import numpy as np

RTOL = 1e-10          # see default_tolerance and docs/reference-cases.md, "Tolerances"
ATOL_FACTOR = 1e-10
NOT_APPLICABLE = "not applicable: "


class Array(NamedTuple):
    """One input or output of a case: a host array and what it means."""
    value: object
    meaning: str
    rtol: float = None
    atol: float = None


def default_tolerance(scale):
    """(rtol, atol) = (1e-10, 1e-10 · scale rounded up to a power of ten).

    ``scale`` is the largest |value| in the output's group: every output whose name shares the
    part before the first "/" (all of ``meta_gradient/...``), or the output alone.  An element
    passes when |theirs − reference| ≤ atol + rtol·|reference|.  atol covers entries that are
    small because terms cancelled (a conv bias before batch norm has a meta-gradient of pure
    rounding noise): their rounding error scales with the terms, i.e. with the group's
    magnitude, not with the entry's.
    """
    if not scale > 0.0:
        return RTOL, ATOL_FACTOR
    return RTOL, 10.0 ** math.ceil(math.log10(ATOL_FACTOR * scale))


def tree_arrays(prefix, tree, meaning):
    """{prefix/name: Array} for every leaf of a params tree."""
    return {f"{prefix}/{name}": Array(np.asarray(tree[name]), meaning) for name in sorted(tree)}


def group_scales(outputs):
    """{group: max |value| over the outputs named group/...} (a name without "/" is a group)."""
    scales = {}
    for name, array in outputs.items():
        group = name.split("/")[0]
        finite = np.abs(np.asarray(array.value, dtype=np.float64))
        finite = finite[np.isfinite(finite)]
        largest = float(finite.max()) if finite.size else 0.0
        scales[group] = max(scales.get(group, 0.0), largest)
    return scales


MSE_LOSS = {"type": "mse", "per_example": "mean over the output dimension of (prediction − y)^2",
            "reduction_over_examples": "see conventions"}
CE_LOSS = {"type": "cross_entropy", "per_example": "−log softmax(logits)[label]",
           "labels": "integers 0..n_way−1 stored as float64 (support_y, query_y)",
           "reduction_over_examples": "see conventions; n_way_times_mean = n_way × mean"}
ADAM_META = {"meta_optimizer": "adam", "adam_b1": 0.9, "adam_b2": 0.999, "adam_eps": 1e-8,
             "adam_state": "fresh: zero moments, step 1 is the first"}


def synthetic_episode(rng, n_way, k_shot, n_query, image_size):
    """Host (support_x (N·K, 1, s, s), support_y, query_x (N·n_query, ...), query_y): one random
    "character" per class plus noise; the queries are shuffled."""
    characters = rng.uniform(0.0, 1.0, (n_way, 1, 1, image_size, image_size))
    draw = lambda n: (characters + 0.1 * rng.standard_normal((n_way, n, 1, image_size, image_size))
                      ).reshape((n_way * n, 1, image_size, image_size))
    support_x, query_x = draw(k_shot), draw(n_query)
    order = rng.permutation(n_way * n_query)
    return (support_x, np.repeat(np.arange(n_way), k_shot), query_x[order],
            np.repeat(np.arange(n_way), n_query)[order])


def perturbed_batch_norm(rng, params, width, prefix=""):
    """params with the four conv4 batch-norm layers' offsets drawn U(±0.1) and scales 1 + U(±0.1)
    (draws in the order bn0.offset, bn0.scale, bn1.offset, …), so that a case tests them."""
    return dict(params, **{f"{prefix}bn{i}.{k}": v + rng.uniform(-0.1, 0.1, width) for i in range(4)
                           for k, v in (("offset", 0.0), ("scale", 1.0))})
