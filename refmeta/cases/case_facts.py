"""What the diagnoses of ``refmeta.cases.diagnose`` read from a case's JSON.

``CaseFacts(document)`` collects, from a case already checked by ``refmeta.cases.files``:

- the sizes a constant factor may be (``quantities``): T tasks, N classes, K shots, the
  support, query and mini-batch sizes, from ``hyperparameters`` in either spelling
  (``n_support`` or ``n_support_per_task``, ...), each with the convention it usually breaks;
- which outputs have a leading task axis: their meaning starts "(T, ", or they have the shape
  of a parameter with T in front;
- the names of a parameter's axes from the layer that reads it in ``model`` (``LAYER_AXES``:
  dense (in, out), conv2d OIHW, causal_conv1d (k, in, out)), for naming a permutation;
- the rounding noise about which nothing is claimed (``noise``): the outputs marked
  "structurally_zero", and the ``updated/<p>`` computed from such a gradient.

The JSON's optional parts may be absent or odd; a fact that cannot be read is left out.
"""

import re

from refmeta.cases.parts import NOT_APPLICABLE

LAYER_AXES = {"dense": ("in", "out"), "conv2d": ("O", "I", "H", "W"),
              "causal_conv1d": ("k", "in", "out")}


class CaseFacts:
    """What the diagnoses read from a case's JSON (any of it may be absent or odd).

    n_tasks: T, or None; quantities: see ``_quantities``; layers: {weight name: layer type};
    params: {parameter name: shape}; meanings: {output name: its meaning}; noise: the names of
    the outputs about which nothing is claimed.
    """

    def __init__(self, document):
        hyper = _mapping(document.get("hyperparameters"))
        self.n_tasks = _size(hyper.get("n_tasks"))
        self.quantities = _quantities(hyper, _mapping(document.get("conventions")))
        self.layers = _weight_layers(document.get("model"))
        self.params = {name[len("params/"):]: tuple(entry["shape"])
                       for name, entry in document["inputs"].items() if name.startswith("params/")}
        self.meanings = {name: str(entry.get("meaning", ""))
                         for name, entry in document["outputs"].items()}
        # rounding noise, about which nothing is claimed: the outputs that are 0 in exact
        # arithmetic, and the update computed from such a gradient (Adam amplifies its noise)
        zero = {name for name, entry in document["outputs"].items()
                if entry.get("structurally_zero")}
        self.noise = zero | {"updated/" + name.split("/", 1)[1] for name in zero if "/" in name}

    def has_task_axis(self, name, shape):
        """True for an output whose first axis is the task axis: documented "(T, ...)" or the
        shape of a parameter with T in front."""
        if self.n_tasks is None or not shape or shape[0] != self.n_tasks:
            return False
        if re.match(r"\(T\s*[,)]", self.meanings.get(name, "")):
            return True
        return "/" in name and self.params.get(name.split("/", 1)[1]) == tuple(shape[1:])

    def axis_names(self, name, shape):
        """The names of the case's axes of output ``name`` where its parameter's layer is known
        (("in", "out") for dense, OIHW for conv2d, ...), "task" first for a task axis; or None."""
        task = self.has_task_axis(name, shape)
        param = name.split("/", 1)[1] if "/" in name else ""
        kind = self.layers.get(param) or next(
            (k for weight, k in self.layers.items() if param.endswith("." + weight)), None)
        axes = LAYER_AXES.get(kind)
        if axes is None and not self.layers and len(shape) - task == 4:
            axes = LAYER_AXES["conv2d"]     # no layer list: refmeta's 4-D params are conv kernels
        if axes is None or len(axes) != len(shape) - task:
            return None
        return ("task",) * task + axes


def conventions(document):
    """The case's ``conventions`` object, or {} where the JSON has none."""
    return _mapping(document.get("conventions"))


def _mapping(value):
    """``value`` if it is a JSON object, else {}."""
    return value if isinstance(value, dict) else {}


def _size(value):
    """A case size worth naming as a factor: an int >= 2, else None."""
    return value if type(value) is int and value >= 2 else None


def _weight_layers(model):
    """{weight name: layer type} from the model description's layers, at any depth."""
    found, stack = {}, [model]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("weight"), str) and isinstance(node.get("type"), str):
                found[node["weight"]] = node["type"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _quantities(hyper, conventions):
    """[(value, symbol, what it counts, what a factor of it usually is)] from hyperparameters
    (either spelling of the example counts: n_support or n_support_per_task, ...)."""
    def said(key):
        value = conventions.get(key)
        usable = isinstance(value, str) and not value.startswith(NOT_APPLICABLE)
        return f" (this case: {key} {value!r})" if usable else ""

    def first(*keys):
        return next(((key, hyper[key]) for key in keys if _size(hyper.get(key))), (None, None))
    T, N, K = (_size(hyper.get(key)) for key in ("n_tasks", "n_way", "k_shot"))
    support = first("n_support_per_task", "n_support")
    if support[0] is None and N and K:
        support = ("N·K", N * K)
    per_class = first("n_query_per_class", *(("n_query",) if N else ()))
    query = first("n_query_per_task", "n_query_total", *(() if N else ("n_query",)))
    if query[0] is None and N and per_class[1]:
        query = (f"N·{per_class[0]}", N * per_class[1])
    batch = first("batch_size")
    over_support = "sum vs mean over the support set" + said("inner_reduction")
    named = [(T, "T", "the number of tasks", "sum vs mean over tasks" + said("task_reduction")),
             (N, "N", "the number of classes",
              "N × mean cross-entropy vs the plain mean" + said("inner_reduction")),
             (K, "K", "the shots per class", "sum vs mean over each class's shots"),
             (support[1], support[0], "the support examples per task", over_support),
             (per_class[1], per_class[0], "the queries per class",
              "sum vs mean over each class's queries"),
             (query[1], query[0], "the query examples per task",
              "sum vs mean over the query set" + said("query_reduction")),
             (batch[1], batch[0], "the mini-batch size",
              "sum vs mean over the mini-batch" + said("inner_reduction"))]
    return [entry for entry in named if entry[0]]
