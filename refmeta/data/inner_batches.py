"""The mini-batches of an inner loop (Reptile's, Nichol et al. 2018, Appendix A): which support
examples each inner step reads, drawn on the host as the authors' code draws them, then taken.

    sample_inner_batches(rng, n_tasks, n_examples, inner_steps, batch_size) -> (T, k, b) indices
    mini_batch(x, y, batch_indices, step) -> the rows of step ``step``, every task at once

The indices are data: an algorithm takes them as an input (``reptile``'s ``batch_indices``), so
the random draws are part of the episode and a reference case can record them.
"""

import autograd.numpy as anp
import numpy as np

from refmeta import checks


def sample_inner_batches(rng, n_tasks, n_examples, inner_steps, batch_size):
    """(n_tasks, inner_steps, batch_size) host indices, as the authors' code draws them.

    Each task's examples are shuffled and cut into consecutive batches; when a
    batch would run past the end, the examples are reshuffled and cutting restarts.
    """
    checks.generator(rng)
    checks.integer("n_tasks", n_tasks, minimum=1)
    checks.integer("n_examples", n_examples, minimum=1)
    checks.integer("inner_steps", inner_steps, minimum=0)
    checks.integer("batch_size", batch_size, minimum=1, maximum=n_examples)
    out = np.empty((n_tasks, inner_steps, batch_size), dtype=np.int64)
    for t in range(n_tasks):
        order, start = rng.permutation(n_examples), 0
        for step in range(inner_steps):
            if start + batch_size > n_examples:
                order, start = rng.permutation(n_examples), 0
            out[t, step] = order[start:start + batch_size]
            start += batch_size
    return out


def mini_batch(x, y, batch_indices, step):
    """x, y (T, n, ...) -> their rows batch_indices[:, step] (T, b, ...), on their device; all of
    them where ``batch_indices`` is None (every step on the whole support set).  No checks: the
    algorithm's door checks the indices against x."""
    if batch_indices is None:
        return x, y
    tasks = np.arange(anp.shape(x)[0], like=batch_indices)[:, None]  # (T, 1)
    rows = batch_indices[:, step]                                     # (T, b)
    return x[tasks, rows], y[tasks, rows]
