"""Reference cases: refmeta's numbers on fixed inputs, written down for other implementations.

A case is a pair of files, ``<id>.json`` (what to compute) and ``<id>.npz`` (the numbers);
docs/reference-cases.md is the full description of the format.  ``refmeta cases export DIR``
writes them, ``refmeta verify CASE.json THEIRS.npz`` (``refmeta.cases.verify``) checks another
implementation's outputs against them.

The registry.  ``CASES`` maps a case id to a *builder*: a function of no arguments
(bind settings with ``functools.partial``) that returns a ``Recipe(header, inputs, outputs)``
(``parts.Recipe``), the case split in two, what is drawn and what is computed from it:

    header           {key: JSON-able} with exactly these keys:
      algorithm        str, e.g. "MAML"
      description      str, one paragraph
      seed             int: every random draw comes from numpy.random.default_rng(seed)
      model            JSON-able description complete enough to rebuild the network
                       (``models.mlp_describe`` / ``models.conv4_describe``)
      loss             JSON-able: the per-example loss and what its labels/targets are
      conventions      JSON-able: every convention in REQUIRED_CONVENTIONS; the ones that do not
                       apply say "not applicable: <why>" rather than being left out
      hyperparameters  JSON-able: step sizes, step counts, sizes
      procedure        list of str: the computation, step by step, in terms of the array names
    and optionally
      computation_order  list of str: the outputs' templates in the order they are computed,
                       one entry per step, for a case whose procedure names an output before
                       or after the step that computes it (``refmeta.cases.order``)
    inputs           {name: Array(value, meaning)}: params, data and the random draws made
    outputs          a function of the input values {name: array}, host or device, and of nothing
                     else, returning {name: Array(value, meaning, rtol=None, atol=None,
                     zero_because=None)} on the host: what to reproduce; ``zero_because`` says
                     why an output is 0 in exact arithmetic (recorded as "structurally_zero");
                     every other output must carry signal at its tolerance (tests/test_cases.py
                     perturbs each one)

``build`` computes the outputs, watching every kink they pass (``refmeta.nn.kinks``: a case
whose smallest margin is below ``wellposed.MIN_KINK_MARGIN`` is refused), then recomputes them
from inputs moved by a relative 1e-13 (``wellposed``) and records each output's spread.

Array names use "/" to group (``params/conv0.w``, ``meta_gradient/conv0.w``).  The model's
layer entries carry ``torch_layout`` and ``haiku_layout`` (``parts.with_layouts``).  Values are host
numpy arrays; integer arrays (labels, indices) are stored as float64 holding exact integers
and marked ``integer_valued``.  Tolerances left at None get ``default_tolerance``.  A builder
must be deterministic: two calls give the same bits (tests/test_cases.py checks every case).
Adding a case is one more entry in ``CASES``.

Where the builders live: ``optimization`` (MAML, Reptile), ``metric`` (Prototypical and
Matching Networks), ``meta_networks`` and ``model_based`` (SNAIL); ``parts`` holds what they share
(``Recipe``, ``Array``, ``default_tolerance``, the loss descriptions, the synthetic episode),
``wellposed`` the perturbation and the kink margins.  This module holds the registry and turns
a built case into its two files.
"""

import functools
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np

import refmeta
from refmeta import disk
from refmeta.cases.metric import matching_case, protonet_case
from refmeta.cases.meta_networks import metanet_case
from refmeta.cases.model_based import snail_case
from refmeta.cases.optimization import maml_conv4_case, maml_sinusoid_case, reptile_sinusoid_case
from refmeta.cases import wellposed
from refmeta.cases.parts import NOT_APPLICABLE, Array, Recipe, tolerances
from refmeta.nn import kinks

FORMAT = "refmeta.case/1"
HEADER_KEYS = ("algorithm", "description", "seed", "model", "loss", "conventions",
               "hyperparameters", "procedure")
OPTIONAL_HEADER_KEYS = ("computation_order",)
BUILDER_KEYS = HEADER_KEYS + ("inputs", "outputs")
# The choices where papers and implementations disagree (docs/reference-cases.md, Conventions):
# every case records each of them, with a value or "not applicable: why"
REQUIRED_CONVENTIONS = ("task_reduction", "inner_reduction", "query_reduction", "inner_steps",
                        "test_inner_steps", "first_order", "batch_norm", "adapt_bn", "sinusoid",
                        "rotations", "distance", "inner_optimizer_state")

CASES = {
    "maml-sinusoid-k1-second-order": functools.partial(maml_sinusoid_case, 1, False),
    "maml-sinusoid-k1-first-order": functools.partial(maml_sinusoid_case, 1, True),
    "maml-sinusoid-k3-second-order": functools.partial(maml_sinusoid_case, 3, False),
    "maml-sinusoid-k3-first-order": functools.partial(maml_sinusoid_case, 3, True),
    "maml-conv4-bn-5way1shot-second-order": functools.partial(maml_conv4_case, False),
    "maml-conv4-bn-5way1shot-first-order": functools.partial(maml_conv4_case, True),
    "reptile-sinusoid-serial": functools.partial(reptile_sinusoid_case, "serial"),
    "reptile-sinusoid-batched": functools.partial(reptile_sinusoid_case, "batched"),
    "protonet-conv4-3way2shot": protonet_case,
    "matching-conv4-3way2shot": functools.partial(matching_case, False),
    "matching-conv4-3way2shot-fce": functools.partial(matching_case, True),
    "metanet-3way1shot-first-order": functools.partial(metanet_case, False),
    "metanet-3way1shot-second-order": functools.partial(metanet_case, True),
    "metanet-4way1shot-chunks2-first-order": functools.partial(metanet_case, False, seed=45, n_way=4,
                                                               chunks=2),
    "snail-3way1shot": snail_case,
}


# ----- building, encoding and exporting -----
class CaseError(ValueError):
    """A case that cannot be built, read or written; the message says what and where."""


def recipe(case_id):
    """The builder's ``Recipe`` of ``case_id``, its header and inputs checked."""
    if case_id not in CASES:
        raise CaseError(f"unknown case {case_id!r}; known: {', '.join(CASES)}")
    found = CASES[case_id]()
    keys = set(found.header) if isinstance(found, Recipe) else set()
    if not isinstance(found, Recipe) or not set(HEADER_KEYS) <= keys <= set(HEADER_KEYS + OPTIONAL_HEADER_KEYS):
        got = sorted(found.header) if isinstance(found, Recipe) else type(found).__name__
        raise CaseError(f"builder of {case_id!r} must return a Recipe whose header has the keys "
                        f"{list(HEADER_KEYS)} (and may have {list(OPTIONAL_HEADER_KEYS)}); got {got}")
    missing = [key for key in REQUIRED_CONVENTIONS if key not in found.header["conventions"]]
    if missing:
        raise CaseError(f"{case_id}: conventions must record {missing} (a value, or "
                        f"\"{NOT_APPLICABLE}<why>\")")
    _check_arrays(case_id, "inputs", found.inputs)
    return found


def build(case_id):
    """Compute the case ``case_id`` and check it; returns a dict with the header's keys,
    "inputs", "outputs", "kinks" (``wellposed.kink_summary``) and "spreads" ({output name:
    ``wellposed.spreads``' entry}).  Raises CaseError if a kink's margin is too small."""
    found = recipe(case_id)
    values = {name: array.value for name, array in found.inputs.items()}
    with kinks.recording() as passed:
        outputs = found.outputs(values)
    _check_arrays(case_id, "outputs", outputs)
    summary = wellposed.kink_summary(passed)
    kind, margin, _ = min(passed, key=lambda record: record[1], default=(None, float("inf"), 0))
    if margin < wellposed.MIN_KINK_MARGIN:
        raise CaseError(f"{case_id}: a {kind} input lies {margin:.2g} of its array's scale from the "
                        f"kink; a case needs at least {wellposed.MIN_KINK_MARGIN:g}, or rounding decides "
                        "which side it takes")
    recomputed = [found.outputs(wellposed.perturbed(found.inputs, seed)) for seed in wellposed.SEEDS]
    spreads = wellposed.spreads(outputs, recomputed, tolerances(outputs))
    return {**found.header, "inputs": found.inputs, "outputs": outputs, "kinks": summary,
            "spreads": spreads}


def _check_arrays(case_id, kind, arrays):
    for name, array in arrays.items():
        if not isinstance(array, Array) or not np.all(np.isfinite(array.value)):
            raise CaseError(f"{case_id}: {kind} {name!r} must be an Array of finite numbers")


def _entry(array, tolerance=None, spread=None):
    """The JSON entry of an input (tolerance None) or of an output."""
    value = np.asarray(array.value)
    entry = {"shape": list(value.shape), "dtype": "float64", "meaning": array.meaning}
    if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
        entry["integer_valued"] = True
    if tolerance is not None:
        entry["rtol"], entry["atol"] = tolerance
    if array.zero_because is not None:
        entry["structurally_zero"] = array.zero_because
    if spread is not None:
        entry["perturbation_spread"] = spread
    return entry


def encode(case_id, case):
    """(json_text, npz_bytes) of a built case; the same case gives the same bytes.  A case built
    by hand may leave out "kinks" and "spreads"."""
    arrays = {f"{kind}/{name}": np.asarray(array.value, dtype=np.float64)
              for kind in ("inputs", "outputs") for name, array in case[kind].items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)          # zip entries carry a fixed 1980 timestamp: reproducible
    npz = buffer.getvalue()
    found, spreads = tolerances(case["outputs"]), case.get("spreads", {})
    document = {"format": FORMAT, "id": case_id, "algorithm": case["algorithm"],
                "description": case["description"], "refmeta_version": refmeta.__version__,
                "seed": case["seed"], "npz_sha256": hashlib.sha256(npz).hexdigest(),
                **{key: case[key] for key in ("model", "loss", "conventions", "hyperparameters",
                                              "procedure") + OPTIONAL_HEADER_KEYS if key in case},
                "inputs": {name: _entry(a) for name, a in case["inputs"].items()},
                "outputs": {name: _entry(a, found[name], spreads.get(name))
                            for name, a in case["outputs"].items()}}
    if "kinks" in case:
        document["well_posed"] = _well_posed(case, found)
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n", npz


def _well_posed(case, found):
    """The JSON's "well_posed" record: how the spreads were measured, and the kinks' margins."""
    fractions = [spread["fraction_of_allowed"] for spread in case["spreads"].values()]
    worst = max(fractions, default=0.0)
    return {"perturbation": f"every float input x ↦ x · (1 + {wellposed.RELATIVE_MOVE:g} · s), s = ±1 "
                            "per element drawn by numpy.random.default_rng(seed) in the order of the "
                            f"inputs, seeds {list(wellposed.SEEDS)}; each output's perturbation_spread "
                            "is its largest change: max_abs, and fraction_of_allowed = the largest "
                            "|change| / (atol + rtol·|reference|)",
            "relative_move": wellposed.RELATIVE_MOVE, "seeds": list(wellposed.SEEDS),
            "required_tolerance_over_spread": wellposed.SPREAD_FACTOR,
            "smallest_tolerance_over_spread": None if worst == 0 else wellposed.round_down(1 / worst),
            "kinks": case["kinks"]}


def describe_cases():
    """One line per case: its id, algorithm and description, for ``refmeta cases list``."""
    width = max(len(case_id) for case_id in CASES)
    lines = []
    for case_id in CASES:
        header = recipe(case_id).header                     # drawn, not computed
        lines.append(f"{case_id.ljust(width)}  {header['algorithm']}: {header['description']}")
    return "\n".join(lines)


def export(directory, case_ids=None, report=None):
    """Write ``<id>.json`` + ``<id>.npz`` for each case (default: all) into ``directory``.

    Every case is built first, in memory (3.5 MB for all of them).  Then, with SIGINT and
    SIGTERM held (``refmeta.disk.signals_held``), they are written into a staging folder
    inside ``directory`` (a signal arriving meanwhile stops the export there, the directory
    as it was), and per case any old JSON is removed, the NPZ moved in and the JSON moved in
    last (os.replace).  The JSON is the case's commit record, and it names its NPZ's sha256:
    a failed export leaves whole cases, old or new, and at most an NPZ without a JSON, which
    is no case.  ``report(case_id)`` is called as each case is built.
    Raises CaseError for an unknown id, an id given twice, a directory that cannot be written,
    or a case file's place taken by what is not a regular file (a folder, a FIFO, a link).
    Whatever stops it (an error, Ctrl-C, SIGTERM), the staging folder is removed.
    """
    case_ids = list(CASES) if case_ids is None else list(case_ids)
    unknown = [case_id for case_id in case_ids if case_id not in CASES]
    if unknown:
        raise CaseError(f"unknown case(s) {', '.join(map(repr, unknown))}; known: {', '.join(CASES)}")
    repeated = sorted({case_id for case_id in case_ids if case_ids.count(case_id) > 1})
    if repeated:
        raise CaseError(f"case(s) {', '.join(map(repr, repeated))} given more than once; name each "
                        "case once")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise CaseError(f"cannot write cases to {directory!r}: {error.strerror or error}") from None
    for path in (os.path.join(directory, case_id + ext) for case_id in case_ids
                 for ext in (".json", ".npz")):
        problem = disk.write_problem(path)
        if problem:
            raise CaseError(f"cannot write {path}: it {problem}")
    encoded = []
    for case_id in case_ids:
        if report is not None:
            report(case_id)
        encoded.append((case_id, *encode(case_id, build(case_id))))
    try:
        with disk.signals_held() as held:
            _write_cases(directory, encoded, held)
    except OSError as error:
        raise CaseError(f"cannot write cases to {directory!r}: {error}") from None
    return [os.path.join(directory, case_id + ".json") for case_id in case_ids]


def _write_cases(directory, encoded, held):
    """Write each (case_id, JSON text, NPZ bytes) into a staging folder inside ``directory``,
    then move each case in, its JSON last; the staging folder is removed.  Raises disk.Stopped,
    having moved nothing in, when a signal ``held`` waits once a case is staged."""
    staging = tempfile.mkdtemp(prefix=".refmeta-export-", dir=directory)
    try:
        for case_id, text, npz in encoded:
            _write(os.path.join(staging, case_id + ".npz"), npz)
            _write(os.path.join(staging, case_id + ".json"), text.encode("utf-8"))
            if held.stop_requested():
                raise disk.Stopped("the export was stopped by a signal; nothing was moved in")
        for case_id, _, _ in encoded:
            target = os.path.join(directory, case_id)
            if os.path.lexists(target + ".json"):
                os.remove(target + ".json")
            os.replace(os.path.join(staging, case_id + ".npz"), target + ".npz")
            os.replace(os.path.join(staging, case_id + ".json"), target + ".json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
