"""Check a PyTorch (torch.func) implementation of MAML and Reptile against refmeta's reference cases.

The worked example of docs/reference-cases.md.  The network, the data and the loss of each case
come from ``refmeta.cases.torch`` (the case's layer entries built as torch modules, its inputs
as float64 tensors); everything algorithmic below is torch code that reads only the case's
``conventions`` and ``hyperparameters`` and follows its ``procedure``: ``torch.func.grad``
for every gradient (nested for second-order MAML) and ``vmap`` over the tasks of a
meta-batch.  Nothing of refmeta's NumPy code computes an output.  The outputs go to
``<out>/<id>.theirs.npz`` (``refmeta.cases.torch.save_outputs``, which puts them back in the
case's layout) and ``refmeta verify`` compares them with the case.

    python demos/check_with_torch.py                 export every MAML/Reptile case, check them
    python demos/check_with_torch.py --cases DIR     check the cases already in DIR
    python demos/check_with_torch.py --fast          the two one-step sinusoid cases only

PyTorch is optional for refmeta (``pip install 'refmeta[torch]'``); without it this demo says
so and exits with status 2.
"""

import argparse
import glob
import os
import sys

import numpy as np

from refmeta.demos import files

FAST_CASES = ("maml-sinusoid-k1-second-order", "maml-sinusoid-k1-first-order")


def add_arguments(parser):
    parser.add_argument("--cases", metavar="DIR",
                        help="check the cases in DIR (default: export refmeta's cases to OUT/cases)")
    parser.add_argument("--case", action="append", metavar="ID",
                        help="check only this case id (repeatable; default every MAML and Reptile case)")
    parser.add_argument("--fast", action="store_true",
                        help=f"check only {' and '.join(FAST_CASES)} (seconds)")
    parser.add_argument("--no-plots", action="store_true", help="skip the figure")
    parser.add_argument("--out", default=os.path.join("runs", "check-with-torch"),
                        help="where THEIRS files and results.json go (default runs/check-with-torch)")


def run(args):
    """Compute every selected case with torch, verify it; returns {"cases": {id: result}, ...}."""
    from refmeta import cases
    from refmeta.cases import verify
    from refmeta.demos import options
    from refmeta.progress import progress
    torch, fixtures = _import_torch()
    options.check_out_folder(args.out, ("results.json", "tolerance_used.png"))
    wanted = list(args.case or (FAST_CASES if args.fast else []))
    case_dir = args.cases
    if case_dir is None:
        case_dir = os.path.join(args.out, "cases")
        cases.export(case_dir, wanted or [c for c in cases.CASES if c.startswith(("maml", "reptile"))])
    paths = sorted(glob.glob(os.path.join(case_dir, "*.json")))
    if wanted:
        paths = [p for p in paths if os.path.basename(p)[:-5] in wanted]
        missing = set(wanted) - {os.path.basename(p)[:-5] for p in paths}
        if missing:
            raise SystemExit(f"check_with_torch: no case file for {sorted(missing)} in {case_dir}")
    results = {}
    for path in progress(paths, total=len(paths), desc="cases"):
        document, arrays = verify.load_case(path)
        if document["algorithm"] not in ALGORITHMS:
            results[document["id"]] = {"skipped": f"no torch implementation of {document['algorithm']}"}
            continue
        fixture = fixtures.load(path)
        outputs = ALGORITHMS[document["algorithm"]](torch, fixture)
        if set(outputs) != set(document["outputs"]):
            raise RuntimeError(f"torch computed {sorted(set(outputs) ^ set(document['outputs']))} wrongly")
        theirs_path = fixtures.save_outputs(fixture, outputs, os.path.join(args.out, document["id"]
                                                                           + ".theirs.npz"))
        theirs = fixtures.to_case_layout(fixture, outputs)
        status = verify.main(path, theirs_path)
        used = tolerance_used(document, arrays, theirs)
        results[document["id"]] = {
            "exit_status": status, "max_err_over_allowed": max(used.values()),
            "max_abs_err": max(float(np.max(np.abs(theirs[n] - arrays["outputs/" + n])))
                               for n in theirs), "err_over_allowed": used}
    report = {"torch_version": torch.__version__, "case_dir": case_dir, "cases": results,
              "all_pass": all(r.get("exit_status", 0) == 0 for r in results.values())}
    files.write_json_atomically(os.path.join(args.out, "results.json"), report)
    if not args.no_plots:
        report["figure"] = save_figure(args.out, results)
    print("all checked cases pass" if report["all_pass"] else "SOME CASES FAIL")
    return report


def tolerance_used(document, arrays, theirs):
    """{output: max over elements of |theirs − reference| / (atol + rtol·|reference|)}: the
    fraction of its tolerance each output uses (< 1 passes; NaN counts as inf)."""
    used = {}
    for name, entry in document["outputs"].items():
        reference = arrays["outputs/" + name]
        with np.errstate(invalid="ignore"):
            ratio = np.abs(theirs[name] - reference) / (entry["atol"] + entry["rtol"] * np.abs(reference))
        used[name] = float(np.nan_to_num(ratio, nan=np.inf).max()) if ratio.size else 0.0
    return used


def save_figure(out, results):
    """A strip per case of log10(error / allowed error), one dot per output; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    checked = {k: r for k, r in results.items() if "err_over_allowed" in r}
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(checked)))
    for row, (case_id, result) in enumerate(checked.items()):
        values = np.log10(np.maximum(list(result["err_over_allowed"].values()), 1e-12))
        ax.scatter(values, np.full(len(values), row), s=12, alpha=0.6)
    ax.axvline(0.0, color="red", linestyle="--", label="the tolerance")
    ax.set_yticks(range(len(checked)), list(checked))
    ax.set_xlabel("log10(max |torch − refmeta| / (atol + rtol·|refmeta|)) per output; exact: −12")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = os.path.join(out, "tolerance_used.png")
    files.save_figure_atomically(path, fig)
    plt.close(fig)
    return path


def _import_torch():
    """(torch, refmeta.cases.torch), the default dtype float64; exit status 2 without torch."""
    try:
        import torch
    except ImportError:
        print("check_with_torch needs PyTorch: pip install 'refmeta[torch]' (a CPU build will do)",
              file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_default_dtype(torch.float64)
    from refmeta.cases import torch as fixtures
    return torch, fixtures


# ----- the torch implementation: the network from the fixture, the algorithms here -----
def maml_outputs(torch, fixture):
    """Every MAML output of the case, following its "procedure", with torch.func."""
    from torch.func import grad, vmap
    conventions, hp, data = fixture.conventions, fixture.hyperparameters, fixture.inputs
    params = fixture.params
    loss = lambda theta, x, y, reduction: fixture.loss(fixture.forward(theta, x), y, reduction)
    adapts = lambda name: conventions["adapt_bn"] or not name.startswith("bn")

    def one_task(params, support_x, support_y, query_x, query_y):
        trajectory, support_losses = [params], []
        for _ in range(conventions["inner_steps"]):
            theta = trajectory[-1]
            support_losses.append(loss(theta, support_x, support_y, conventions["inner_reduction"]))
            g = grad(loss)(theta, support_x, support_y, conventions["inner_reduction"])
            if conventions["first_order"]:
                g = {k: t.detach() for k, t in g.items()}
            trajectory.append({k: theta[k] - conventions["inner_lr"] * g[k] if adapts(k) else theta[k]
                               for k in theta})
        query = loss(trajectory[-1], query_x, query_y, conventions["query_reduction"])
        return query, (torch.stack(support_losses), trajectory[1:])

    tasks = [data[n] for n in ("support_x", "support_y", "query_x", "query_y")]

    def meta_loss(params):
        query, aux = vmap(one_task, in_dims=(None, 0, 0, 0, 0))(params, *tasks)
        total = query.mean() if conventions["task_reduction"] == "mean" else query.sum()
        return total, (query, aux)

    meta_gradient, (query, (support, trajectory)) = grad(meta_loss, has_aux=True)(params)
    zeros = {k: torch.zeros_like(p) for k, p in params.items()}
    updated, _ = _adam(torch, params, meta_gradient, (0, zeros, zeros), hp["meta_lr"],
                       hp["adam_b1"], hp["adam_b2"], hp["adam_eps"])
    reduce = torch.mean if conventions["task_reduction"] == "mean" else torch.sum
    outputs = {"support_loss": support, "query_loss": query, "meta_loss": reduce(query)}
    for j, theta in enumerate(trajectory, start=1):
        outputs.update({f"adapted_step{j}/{k}": t for k, t in theta.items()})
    outputs.update({f"meta_gradient/{k}": t for k, t in meta_gradient.items()})
    outputs.update({f"updated/{k}": t for k, t in updated.items()})
    return outputs


def reptile_outputs(torch, fixture):
    """Every Reptile output of the case: a Python loop over tasks, torch.func.grad inside."""
    from torch.func import grad
    conventions, hp, data = fixture.conventions, fixture.hyperparameters, fixture.inputs
    params = fixture.params
    loss = lambda theta, x, y, reduction: fixture.loss(fixture.forward(theta, x), y, reduction)
    x, y, batches = data["support_x"], data["support_y"], data["batch_indices"]
    outputs, phi, adapted_all = {}, params, []
    serial = conventions["reptile_mode"] == "serial"
    for t in range(x.shape[0]):
        theta = phi if serial else params
        outputs.update({f"task_start/{k}[{t}]": v for k, v in theta.items()} if serial else {})
        zeros = {k: torch.zeros_like(v) for k, v in theta.items()}
        state = (0, zeros, zeros)
        for j in range(hp["inner_steps"]):
            batch = (x[t, batches[t, j]], y[t, batches[t, j]], conventions["inner_reduction"])
            outputs[f"inner_loss[{t},{j}]"] = loss(theta, *batch)
            g = grad(loss)(theta, *batch)
            if conventions["inner_optimizer"] == "sgd":
                theta = {k: theta[k] - hp["inner_lr"] * g[k] for k in theta}
            else:
                theta, state = _adam(torch, theta, g, state, hp["inner_lr"], conventions["adam_b1"],
                                     conventions["adam_b2"], conventions["adam_eps"])
            outputs.update({f"adapted_step{j + 1}/{k}[{t}]": v for k, v in theta.items()})
        adapted_all.append(theta)
        phi = {k: phi[k] + hp["meta_step_size"] * (theta[k] - phi[k]) for k in phi}
    if not serial:
        reduce = torch.mean if conventions["task_reduction"] == "mean" else torch.sum
        phi = {k: params[k] + hp["meta_step_size"] * reduce(torch.stack(
            [a[k] - params[k] for a in adapted_all]), dim=0) for k in params}
    outputs.update({f"updated/{k}": v for k, v in phi.items()})
    return _stack_indexed(torch, outputs)


def _adam(torch, params, grads, state, lr, b1, b2, eps):
    step, m, v = state
    step += 1
    m = {k: b1 * m[k] + (1 - b1) * grads[k] for k in params}
    v = {k: b2 * v[k] + (1 - b2) * grads[k] ** 2 for k in params}
    new = {k: params[k] - lr * (m[k] / (1 - b1 ** step)) / (torch.sqrt(v[k] / (1 - b2 ** step)) + eps)
           for k in params}
    return new, (step, m, v)


def _stack_indexed(torch, outputs):
    """Gather "name[t]" / "name[t,j]" entries into one tensor per name."""
    stacked, pieces = {}, {}
    for key, value in outputs.items():
        if key.endswith("]"):
            name, index = key[:-1].split("[")
            pieces.setdefault(name, {})[tuple(int(i) for i in index.split(","))] = value
        else:
            stacked[key] = value
    for name, parts in pieces.items():
        shape = tuple(max(i[d] for i in parts) + 1 for d in range(len(next(iter(parts)))))
        flat = torch.stack([parts[i] for i in np.ndindex(*shape)])
        stacked[name] = flat.reshape(shape + flat.shape[1:])
    return stacked


ALGORITHMS = {"MAML": maml_outputs, "Reptile": reptile_outputs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    from refmeta.demos import options
    try:
        report = run(parser.parse_args(argv))
    except options.UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        raise SystemExit(options.EXIT_USAGE) from None
    raise SystemExit(0 if report["all_pass"] else 1)


if __name__ == "__main__":
    main()
