"""Parameter trees: ``dict[str, array]`` and the few algebra helpers the update rules need.

A tree is a flat ``dict`` mapping a parameter name to an array.  Every helper
is pure (it returns a new dict) so autograd can differentiate through it, and
every helper keeps the keys in sorted order so that ``flatten`` is
deterministic.  Names follow openai/supervised-reptile's ``variables.py``:

    add(a, b)               a + b
    subtract(a, b)          a - b
    scale(a, s)             s * a
    interpolate(a, b, t)    a + t (b - a)        (Reptile's update)
    flatten(a)              one 1-D vector, and the function that undoes it
    subtree(a, prefix)      the leaves "prefix.<name>", renamed "<name>"
    grad(f)(a, ...)         ∇_a f(a, ...), a tree: autograd's ``grad``, each leaf its own variable

Trees combined leaf-wise must have the same keys and shapes; a mismatch raises ValueError
naming the key.  ``flatten``, ``mean`` and ``sum_trees`` refuse an empty tree / an empty list;
a weight (``scale``'s s, ``interpolate``'s t) must be a real number, or a 0-d array of one;
``take_task`` refuses a task index outside the leading axis.
"""

import autograd.numpy as anp
from autograd.core import VJPNode, add_outgrads, vspace
from autograd.tracer import getval, isbox, new_box, trace_stack
from autograd.util import toposort

from refmeta import checks

__all__ = ["add", "subtract", "scale", "interpolate", "mean", "vdot", "zeros_like",
           "map_tree", "check_same_keys", "flatten", "broadcast_tasks", "take_task", "subtree",
           "grad"]


def check_same_keys(a, b):
    """Raise ValueError unless trees ``a`` and ``b`` have the same names and shapes."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise TypeError(f"expected two dict trees; got {type(a).__name__} and {type(b).__name__}")
    if set(a) != set(b):
        raise ValueError(f"trees have different keys: {sorted(set(a) - set(b))} only in the first, "
                         f"{sorted(set(b) - set(a))} only in the second")
    for name in a:
        if anp.shape(a[name]) != anp.shape(b[name]):
            raise ValueError(f"parameter {name!r} has shape {anp.shape(a[name])} in one tree "
                             f"and {anp.shape(b[name])} in the other")


def map_tree(fn, *trees):
    """Apply ``fn`` leaf-wise to one or more trees with the same keys."""
    for other in trees[1:]:
        check_same_keys(trees[0], other)
    return {name: fn(*(t[name] for t in trees)) for name in sorted(trees[0])}


def add(a, b):
    return map_tree(lambda x, y: x + y, a, b)


def subtract(a, b):
    return map_tree(lambda x, y: x - y, a, b)


def scale(a, s):
    checks.instance("the tree to scale", getval(a), dict)    # under autograd a DictBox: its dict
    checks.scalar("s", s)
    return {name: s * a[name] for name in sorted(a)}


def interpolate(a, b, t):
    """a + t (b - a): t = 0 gives a, t = 1 gives b."""
    checks.scalar("t", t)
    return map_tree(lambda x, y: x + t * (y - x), a, b)


def zeros_like(a):
    return {name: anp.zeros_like(a[name]) for name in sorted(a)}


def vdot(a, b):
    """Σ over every leaf of the elementwise product (a scalar)."""
    check_same_keys(a, b)
    return sum(anp.sum(a[name] * b[name]) for name in sorted(a))


def mean(trees):
    """Leaf-wise mean of a non-empty list of trees."""
    checks.instance("trees", trees, (list, tuple))
    if not trees:
        raise ValueError("mean of an empty list of trees")
    return scale(sum_trees(trees), 1.0 / len(trees))


def sum_trees(trees):
    """Leaf-wise sum of a non-empty list (or tuple) of trees."""
    checks.instance("trees", trees, (list, tuple))
    if not trees:
        raise ValueError("sum of an empty list of trees")
    total = trees[0]
    for tree in trees[1:]:
        total = add(total, tree)
    return total


def broadcast_tasks(params, n_tasks):
    """Give every leaf a leading task axis of length ``n_tasks`` (no copy on the forward pass).

    Differentiating through it sums the per-task gradients, which is exactly the
    meta-gradient of a sum over tasks.
    """
    checks.integer("n_tasks", n_tasks, minimum=1)
    leaves = ((name, params[name]) for name in sorted(params))   # each leaf read once
    return {name: anp.broadcast_to(leaf, (n_tasks,) + anp.shape(leaf)) for name, leaf in leaves}


def take_task(params, t):
    """The parameters of task ``t`` from a tree whose leaves carry a leading task axis."""
    checks.instance("params", getval(params), dict)          # under autograd a DictBox: its dict
    lengths = {anp.shape(leaf)[0] if anp.ndim(leaf) else 0 for leaf in getval(params).values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"take_task needs leaves with one leading task axis of length T >= 1; got "
                         f"the shapes {[anp.shape(params[name]) for name in sorted(params)]}")
    checks.integer("t", t, minimum=0, maximum=lengths.pop() - 1)
    return {name: params[name][t] for name in sorted(params)}


def flatten(a):
    """Concatenate every leaf (sorted by name) into one 1-D vector.

    Returns:
        (vector, unflatten) where ``unflatten(vector)`` rebuilds the tree.
    """
    if not isinstance(a, dict):
        raise TypeError(f"flatten expects a dict tree; got {type(a).__name__}")
    if not a:
        raise ValueError("flatten of an empty tree: there is no leaf to concatenate")
    names = sorted(a)
    shapes = [anp.shape(a[name]) for name in names]
    sizes = [int(anp.size(a[name])) for name in names]
    vector = anp.concatenate([anp.reshape(a[name], (-1,)) for name in names])

    def unflatten(v):
        if anp.shape(v) != (sum(sizes),):
            raise ValueError(f"expected a vector of shape ({sum(sizes)},); got {anp.shape(v)}")
        out, start = {}, 0
        for name, shape, size in zip(names, shapes, sizes):
            out[name] = anp.reshape(v[start:start + size], shape)
            start += size
        return out

    return vector, unflatten


def subtree(params, prefix):
    """The leaves named ``prefix.<name>``, renamed ``<name>``: one sub-network of a tree.

    ``subtree({"g.W": W, "f.W": V}, "g")`` is ``{"W": W}``.
    """
    return {name[len(prefix) + 1:]: v for name, v in params.items() if name.startswith(prefix + ".")}


def grad(fun):
    """∇ of ``fun(tree, *args)``, a real scalar, with respect to the tree: ``autograd.grad``, with
    every leaf traced as a variable of its own.

    autograd traces a dict as one boxed container: reading a leaf is a recorded operation, and
    the gradient is assembled into a new dict one leaf at a time, a dozen recorded operations per
    leaf that a second derivative (MAML's) differentiates again.  Here each leaf gets its own box
    and root, ``fun`` reads plain dict entries, and one backward pass (autograd's, over the same
    VJPs) keeps each leaf's gradient where it arrives.  It nests in ``autograd.grad`` and in
    itself to any order; a leaf ``fun`` does not read gets zeros.
    """
    def gradient(tree, *args, **kwargs):
        with trace_stack.new_trace() as trace:
            roots = {name: VJPNode.new_root() for name in tree}
            out = fun({name: new_box(leaf, trace, roots[name]) for name, leaf in tree.items()},
                      *args, **kwargs)
        found = _backward(out, trace, set(roots.values())) if isbox(out) and out._trace == trace else {}
        return {name: found[root] if root in found else vspace(tree[name]).zeros()
                for name, root in roots.items()}
    return gradient


def _backward(out, trace, roots):
    """{root: gradient} by one backward pass from the scalar ``out`` (autograd's backward_pass,
    which returns the gradient of one root only)."""
    if vspace(out._value).size != 1:
        raise TypeError(f"trees.grad needs a real scalar function; got shape {anp.shape(out._value)}")
    outgrads, found = {out._node: (vspace(out._value).ones(), False)}, {}
    for node in toposort(out._node):
        outgrad = outgrads.pop(node)[0]
        if node in roots:
            found[node] = outgrad
            continue
        for parent, ingrad in zip(node.parents, node.vjp(outgrad)):
            outgrads[parent] = add_outgrads(outgrads.get(parent), ingrad)
    return found
