"""The input checks, in one place: every public entry point of refmeta validates through these.

A check either returns quietly (some return the value they checked, normalised) or raises

    TypeError    the value has the wrong kind: a string where a number belongs, float labels
    ValueError   the kind is right but the value is not: out of range, NaN, the wrong shape

with a message that names the argument, says what was expected and what was given.

Checks read device arrays only through explicit scalar reads (``bool(...)``, ``int(...)``)
or one explicit ``backend.to_host`` of a label array, as CuPy allows; nothing here copies
a float array to the host.  Under autograd, the values are read with ``getval``.

values     choice, boolean, integer, number, positive, nonnegative, probability   scalars, names
           instance, generator, function, scalar, model_with_loss   a Config, an rng, a Model
           increasing_integers, specs                            tuples in a Config (SNAIL's)
           plain_fields                                          a Config's fields as Python values
arrays     float_array, finite (NotFinite: NaN or inf), finite_tree, nonnegative_array,
           indices, example_shape                                arrays, index arrays, image shapes
           params, tree_shapes, running_stats, adam_state, training_state   trees and the State
episodes   labels, class_counts, episode                          an Episode, N-way K-shot arithmetic
results    model_params, model_losses, model_outputs, embedding, scalar_output, model_shapes,
           init_shapes                                           what a user's function returned
           all_finite, first_non_finite, finite_results          a door's results: one read, then why
           memory_limit, fits                                    sizes refused before they are allocated

A user's model is checked on what it returns, where it returns it: its kind and shape (no
device read) at the call, and the finiteness of a door's results once (``finite_results``: one
explicit ``bool`` read); only when that fails does the door look for the first NaN or inf
(``first_non_finite``), to name it.
"""

from refmeta.checks.arrays import (NotFinite, adam_state, example_shape, finite, finite_tree,
                                   float_array, indices, nonnegative_array, params,
                                   running_stats, training_state, tree_shapes)
from refmeta.checks.episodes import class_counts, episode, labels
from refmeta.checks.results import (all_finite, embedding, finite_results, first_non_finite,
                                    fits, init_shapes, memory_limit, model_losses, model_outputs,
                                    model_params, model_shapes, scalar_output)
from refmeta.checks.values import (boolean, choice, function, generator, increasing_integers,
                                   instance, integer, model_with_loss, nonnegative, number,
                                   plain_fields, positive, probability, scalar, specs)

__all__ = ["NotFinite", "adam_state", "all_finite", "boolean", "choice", "class_counts",
           "embedding", "episode", "example_shape", "finite", "finite_results", "finite_tree",
           "first_non_finite", "fits", "float_array", "function", "generator",
           "increasing_integers", "indices", "init_shapes", "instance", "integer", "labels",
           "memory_limit", "model_losses", "model_outputs", "model_params", "model_shapes",
           "model_with_loss", "nonnegative", "nonnegative_array", "number", "params",
           "plain_fields", "positive", "probability", "running_stats", "scalar", "scalar_output",
           "specs", "training_state", "tree_shapes"]
