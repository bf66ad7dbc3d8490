"""Third-party meta-learning code against the reference cases: the measurements of
docs/conformance.md and docs/verify.md, re-run in one command.

    python benchmarks/conformance.py                  every library importable here
    python benchmarks/conformance.py --cases DIR      cases already exported to DIR
    python benchmarks/conformance.py --json FILE      the results as JSON too

Two parts, each for every library that imports (the others are listed as skipped):

1. **The table.**  Each library runs every MAML and Reptile case with the conventions the case
   records; a cell is the worst element of any output as a fraction of its allowed error,
   max |theirs − reference| / (atol + rtol·|reference|) (under 1 passes).
2. **Their defaults.**  One convention of a library's own example kept, or one usual porting
   mistake made, per run, on a case where everything else is set as the case says (each run's
   control is the table's cell); what ``refmeta verify`` then says: its "likely cause" lines.

The runs: higher 0.2.1 through tests/test_third_party.py's ``maml_with_higher`` (its inner
loop and torch's optimizers); PyTorch through demos/check_with_torch.py's independent
torch.func implementation (also as learn2learn's MAML.adapt and its Reptile example compute:
every parameter adapted; Adam's state carried from task to task, the batched update), both on
``refmeta.cases.torch``'s fixture of the case, and a mistake in the network or the conventions
their code reads made by giving it the case so changed (tests/helpers.py, ``write_case``); and
jax-meta 1.0.3 with a haiku network (this file; needs jax, dm-haiku and jax-meta, best in an
environment of their own: ``pip install jax-meta==1.0.3 jax dm-haiku optax``).  torchmeta and
learn2learn themselves are not run here (their installs, docs/conformance.md).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# conformance_jax beside this file; tests/ for the runs shared with the test suite (helpers.py,
# test_third_party.py, which imports helpers as the suite does)
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.join(ROOT, "tests")]
import helpers  # noqa: E402

MAML_CASES = ["maml-sinusoid-k1-second-order", "maml-sinusoid-k1-first-order",
              "maml-sinusoid-k3-second-order", "maml-sinusoid-k3-first-order",
              "maml-conv4-bn-5way1shot-second-order", "maml-conv4-bn-5way1shot-first-order"]
REPTILE_CASES = ["reptile-sinusoid-serial", "reptile-sinusoid-batched"]
CONV_2ND, CONV_1ST = MAML_CASES[4], MAML_CASES[5]


def load_file(name, path):
    """The module at ``path`` (a test or demo of this repository), imported by file."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worst_fraction(document, arrays, theirs, signal=False):
    """max over the outputs present of max |theirs − reference| / allowed error; ``signal``:
    leaving out the rounding noise (outputs zero by construction and their Adam updates)."""
    from refmeta.cases.case_facts import CaseFacts
    noise = CaseFacts(document).noise if signal else set()
    worst = 0.0
    for name, entry in document["outputs"].items():
        if name in theirs and name not in noise:
            reference = arrays["outputs/" + name]
            error = np.abs(np.asarray(theirs[name], np.float64) - reference)
            worst = max(worst, float(np.max(error / (entry["atol"] + entry["rtol"] * np.abs(reference)),
                                            initial=0.0)))
    return worst


# ----- PyTorch: torch.func (demos/check_with_torch.py) and higher (tests/test_third_party.py) -----
# Both run on refmeta.cases.torch's fixture of the case; a mistake in what their code reads (a
# network, a convention) is the fixture of the case so changed (tests/helpers.py, write_case).
def torch_runner():
    if importlib.util.find_spec("torch") is None:                       # skipped: see available()
        raise ImportError("No module named 'torch'")
    demo = load_file("check_with_torch", os.path.join("demos", "check_with_torch.py"))

    def run(path, change=None, float32=False, compute=None):
        compute = compute or (lambda torch, fixture: demo.ALGORITHMS[fixture.case["algorithm"]](torch, fixture))
        return helpers.torch_outputs(path, compute, change, float32)
    return run


def learn2learn_reptile(serial):
    """learn2learn's Reptile example, written out in torch on the case's fixture: a copy of φ per
    task, Adam(β1 = 0) whose state (moments and step count) is carried from one task to the
    next, and the batched meta-update φ + ε · mean_t (φ̃_t − φ); ``serial`` updates φ after
    each task."""
    def run(torch, fixture):
        from torch.func import grad
        demo = load_file("check_with_torch", os.path.join("demos", "check_with_torch.py"))
        hp, conventions, inputs = fixture.hyperparameters, fixture.conventions, fixture.inputs
        loss = lambda theta, x, y, reduction: fixture.loss(fixture.forward(theta, x), y, reduction)
        params, x, y, batches = fixture.params, inputs["support_x"], inputs["support_y"], inputs["batch_indices"]
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        state, phi, out = (0, zeros, zeros), params, {}
        for t in range(x.shape[0]):
            theta = phi if serial else params
            out.update({f"task_start/{k}[{t}]": v for k, v in theta.items()})
            for j in range(hp["inner_steps"]):
                batch = (x[t, batches[t, j]], y[t, batches[t, j]], conventions["inner_reduction"])
                out[f"inner_loss[{t},{j}]"] = loss(theta, *batch)
                theta, state = demo._adam(torch, theta, grad(loss)(theta, *batch), state, hp["inner_lr"],
                                          conventions["adam_b1"], conventions["adam_b2"],
                                          conventions["adam_eps"])
                out.update({f"adapted_step{j + 1}/{k}[{t}]": v for k, v in theta.items()})
            out.update({f"last/{k}[{t}]": v for k, v in theta.items()})
            if serial:
                phi = {k: phi[k] + hp["meta_step_size"] * (theta[k] - phi[k]) for k in phi}
        stacked = demo._stack_indexed(torch, out)
        if not serial:
            phi = {k: params[k] + hp["meta_step_size"] * (stacked["last/" + k] - params[k]).mean(0)
                   for k in params}
        stacked.update({f"updated/{k}": v for k, v in phi.items()})
        return stacked
    return run


def higher_runner():
    for needed in ("torch", "higher"):
        if importlib.util.find_spec(needed) is None:
            raise ImportError(f"No module named {needed!r}")
    third_party = load_file("test_third_party", os.path.join("tests", "test_third_party.py"))

    def run(path, change=None, **mistake):
        if change is None:
            return third_party.maml_with_higher(path, **mistake)
        with tempfile.TemporaryDirectory() as folder:
            return third_party.maml_with_higher(helpers.write_case(folder, case_id(path), change),
                                                **mistake)
    return run


def case_id(path):
    return os.path.splitext(os.path.basename(path))[0]


def read_document(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def transposed_dense(document, theirs):
    """theirs with every dense weight in torch's nn.Linear layout, (out, in), as saved from it."""
    dense = {layer["weight"] for layer in document["model"]["layers"] if layer["type"] == "dense"}
    return {name: np.swapaxes(value, -1, -2) if name.split("/", 1)[-1] in dense else value
            for name, value in theirs.items()}


def layers_of(kind, **fields):
    def change(case):
        for layer in case["model"]["layers"]:
            if layer["type"] == kind:
                layer.update(fields)
    return change


def conventions(**fields):
    return lambda case: case["conventions"].update(fields)


def bn_scale(case):
    """The batch-norm layers given a scale drawn U(0, 1), as learn2learn's OmniglotCNN has."""
    from refmeta.cases import Array
    rng = np.random.default_rng(0)
    for layer in case["model"]["layers"]:
        if layer["type"] == "batch_norm":
            layer["scale"] = layer["offset"].replace("offset", "scale")
            case["inputs"]["params/" + layer["scale"]] = Array(rng.uniform(0.0, 1.0, 8), "U(0, 1)")


# ----- jax-meta with a haiku network -----
def jax_meta_runner():
    from conformance_jax import jax_meta_outputs        # imports jax, haiku, jax_meta
    from refmeta.cases import verify
    return lambda path, **mistake: jax_meta_outputs(*verify.load_case(path), **mistake)


def scenarios(libraries):
    """[(library, what, case id, function of the case's path -> theirs)]: one mistake each."""
    found = []
    if "torch.func" in libraries:
        run = libraries["torch.func"]                  # each block's lambdas call their own run
        found += [
            ("torch.func", "float32 arithmetic", CONV_2ND, lambda p, run=run: run(p, float32=True)),
            ("torch.func", "every parameter adapted, as learn2learn's MAML.adapt", CONV_1ST,
             lambda p, run=run: run(p, conventions(adapt_bn=True))),
            ("torch.func", "nn.BatchNorm2d's ε 1e-5", CONV_2ND,
             lambda p, run=run: run(p, layers_of("batch_norm", eps=1e-5))),
            ("torch.func", "a batch-norm scale drawn U(0, 1), as learn2learn's OmniglotCNN", CONV_1ST,
             lambda p, run=run: run(p, bn_scale)),
            ("learn2learn's Reptile example (torch)", "Adam's state carried over, batched case",
             REPTILE_CASES[1], lambda p, run=run: run(p, compute=learn2learn_reptile(serial=False))),
            ("learn2learn's Reptile example (torch)", "Adam's state carried over, run serially",
             REPTILE_CASES[0], lambda p, run=run: run(p, compute=learn2learn_reptile(serial=True))),
            ("learn2learn's Reptile example (torch)", "batched, as the example is, on the serial case",
             REPTILE_CASES[0], lambda p, run=run: run(p, compute=learn2learn_reptile(serial=False))),
        ]
    if "higher" in libraries:
        run = libraries["higher"]
        found += [
            ("higher", "its example's sum over tasks", MAML_CASES[0],
             lambda p, run=run: run(p, sum_over_tasks=True)),
            ("higher", "its example's sum over tasks", CONV_2ND, lambda p, run=run: run(p, sum_over_tasks=True)),
            ("higher", "nn.Linear weights saved as they are, (out, in)", MAML_CASES[0],
             lambda p, run=run: transposed_dense(read_document(p), run(p))),
            ("higher", "the mean cross-entropy in the inner loop", CONV_1ST,
             lambda p, run=run: run(p, conventions(inner_reduction="mean"))),
            ("higher", "its inner SGD over every parameter", CONV_1ST,
             lambda p, run=run: run(p, adapt_every_parameter=True)),
            ("higher", "no first-order switch: the plain loop", MAML_CASES[3],
             lambda p, run=run: run(p, ignore_first_order=True)),
            ("higher", "copy_initial_weights=True, its default", MAML_CASES[0],
             lambda p, run=run: run(p, copy_initial_weights=True)),
        ]
    if "jax-meta" in libraries:
        run = libraries["jax-meta"]
        found += [
            ("jax-meta", "haiku's HWIO kernels saved as they are", CONV_2ND,
             lambda p, run=run: run(p, save_hwio=True)),
            ("jax-meta", "float32 (jax_enable_x64 off)", CONV_2ND, lambda p, run=run: run(p, x64=False)),
            ("jax-meta", "its own loss, the mean cross-entropy, in the inner loop", CONV_1ST,
             lambda p, run=run: run(p, inner_mean=True)),
            ("jax-meta", "its adapt unchanged: second order", MAML_CASES[5],
             lambda p, run=run: run(p, first_order_switch=False)),
            ("jax-meta", "haiku's 'SAME' padding", CONV_2ND, lambda p, run=run: run(p, padding="SAME")),
        ]
    return found


def available():
    """{library: runner} for the libraries that import here, and {library: why not}."""
    libraries, missing = {}, {}
    for name, make in (("torch.func", torch_runner), ("higher", higher_runner),
                       ("jax-meta", jax_meta_runner)):
        try:
            libraries[name] = make()
        except ImportError as error:
            missing[name] = str(error)
    return libraries, missing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", metavar="DIR", help="cases exported there (default: export now)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    from refmeta import cases
    from refmeta.cases import verify
    case_dir = args.cases or tempfile.mkdtemp(prefix="refmeta-conformance-")
    if not args.cases:
        cases.export(case_dir, MAML_CASES + REPTILE_CASES)
    path = lambda case_id: os.path.join(case_dir, case_id + ".json")
    load = lambda case_id: verify.load_case(path(case_id))
    libraries, missing = available()
    for name, why in missing.items():
        print(f"skipped {name}: {why}")
    table = {}
    for name, runner in libraries.items():
        for case_id in MAML_CASES + (REPTILE_CASES if name == "torch.func" else []):
            document, arrays = load(case_id)
            theirs = runner(path(case_id))
            table.setdefault(name, {})[case_id] = [worst_fraction(document, arrays, theirs),
                                                   worst_fraction(document, arrays, theirs, True)]
    print("| case | " + " | ".join(table) + " |\n|---|" + "---|" * len(table))
    cell = lambda worst, signal: f"{worst:.1e}" + (f"; signal {signal:.1e}" if signal < worst else "")
    for case_id in MAML_CASES + REPTILE_CASES:
        print(f"| {case_id} | " + " | ".join(cell(*table[n][case_id]) if case_id in table[n] else "—"
                                           for n in table) + " |")
    found = []
    for library, what, case_id, compute in scenarios(libraries):
        report = verify.check(path(case_id), compute(path(case_id)), partial=library == "jax-meta")
        lines = [line.strip() for line in report.text().splitlines()
                 if line.strip().startswith(("likely cause", "by task"))]
        found.append({"library": library, "what": what, "case": case_id, "status": report.status,
                      "causes": lines})
        print(f"\n{library}: {what} ({case_id}): exit {report.status}")
        for line in lines or ["(no likely cause)"]:
            print(f"    {line}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"table": table, "scenarios": found, "skipped": missing}, f, indent=1,
                      ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
