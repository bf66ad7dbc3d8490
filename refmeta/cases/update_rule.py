"""Do theirs hang together?  The case's last update, applied to theirs' own arrays.

``hang_together(document, case_arrays, theirs)`` recomputes each ``updated/<p>`` from theirs'
own gradient (or adapted parameters) by the update rule the case records, and compares it with
theirs' ``updated/<p>`` at that output's tolerance:

    MAML      Adam's first step from a fresh state (hyperparameters meta_optimizer "adam",
              adam_state "fresh…"): bias correction makes m̂ = g and v̂ = g², so
              updated = params − meta_lr · g / (|g| + adam_eps), g = theirs' meta_gradient/<p>.
    one plain gradient step (hyperparameters optimizer "one plain gradient step", lr):
              updated = params − lr · g, g = theirs' gradient/<p>.
    Reptile   (meta_step_size ε, inner_steps k): serial, with task_start, updated = φ_{T−1} +
              ε (φ̃_{T−1} − φ_{T−1}) from theirs' task_start and adapted_step<k>; batched,
              updated = params + ε · mean_t (φ̃_t − params) (sum if task_reduction is "sum").

A real computation hangs together whatever it got wrong upstream; arrays whose errors are
independent of each other (noise, arrays saved from different runs) do not.
``refmeta.cases.stages`` makes its forward and backward claims only when they do.
"""

import numpy as np

from refmeta.cases.case_facts import conventions
from refmeta.cases.comparison import passes


def hang_together(document, case_arrays, theirs):
    """True when each of theirs' ``updated/<p>`` is the case's update rule applied to their own
    gradient (or adapted parameters), within its tolerance; False when one is not; None when
    it cannot be told (no ``updated``, a missing or misshapen array, an update rule not known)."""
    outputs = document["outputs"]
    names = [n for n in outputs if n.startswith("updated/")]
    if not names:
        return None
    for name in names:
        p = name.split("/", 1)[1]
        expected = _expected_update(document, case_arrays, theirs, p)
        if expected is None or name not in theirs or np.shape(theirs[name]) != expected.shape:
            return None
        if not passes(expected, np.asarray(theirs[name], np.float64), outputs[name]["rtol"],
                      outputs[name]["atol"]):
            return False
    return True


def _expected_update(document, case_arrays, theirs, p):
    """The case's update of parameter ``p`` from theirs' own arrays, or None."""
    hyper = document.get("hyperparameters")
    hyper = hyper if isinstance(hyper, dict) else {}
    number = lambda key: hyper.get(key) if isinstance(hyper.get(key), (int, float)) else None
    params = case_arrays.get("inputs/params/" + p)
    if params is None:
        return None

    def mine(name, task_axis=False):
        """theirs[name] as float64 if it has p's shape (with a task axis first), else None."""
        given = np.asarray(theirs[name]) if name in theirs else None
        array = given.astype(np.float64) if given is not None and given.dtype.kind == "f" else None
        ok = array is not None and array.shape[int(task_axis):] == params.shape
        return array if ok and array.ndim == params.ndim + int(task_axis) else None
    g = mine("meta_gradient/" + p)
    if g is not None and hyper.get("meta_optimizer") == "adam" and number("meta_lr") is not None \
            and number("adam_eps") is not None and str(hyper.get("adam_state", "")).startswith("fresh"):
        return params - number("meta_lr") * g / (np.abs(g) + number("adam_eps"))  # Adam's step 1
    g = mine("gradient/" + p)
    if g is not None and number("lr") is not None and "plain" in str(hyper.get("optimizer", "")):
        return params - number("lr") * g
    steps, size = number("inner_steps"), number("meta_step_size")
    last = mine(f"adapted_step{steps}/{p}", task_axis=True) if steps else None
    if last is None or size is None:
        return None
    start = mine("task_start/" + p, task_axis=True)
    if start is not None and start.shape == last.shape:          # serial: φ_T from φ_{T−1}
        return start[-1] + size * (last[-1] - start[-1])
    reduction = conventions(document).get("task_reduction")
    step = np.sum(last - params, axis=0) if reduction == "sum" else np.mean(last - params, axis=0)
    return params + size * step

