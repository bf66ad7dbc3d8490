"""MAML on sinusoid regression (Finn et al. 2017, Section 5.1) against a pretrained network.

Setup (the paper's Section 5.1 and Appendix C; ``tasks.SinusoidFamily`` defaults)
    tasks      y = A·sin(x − φ),  A ~ U[0.1, 5],  φ ~ U[0, π],  x ~ U[−5, 5]
    model      MLP 1-40-40-1, ReLU, MSE; PyTorch's default init (``models.mlp_init``)
    MAML       K = 10 support + 10 query points per task, one inner step, α = 0.01,
               second order, Adam at β = 1e-3, meta-batch 25, task_reduction "mean"
    pretrained the same MLP trained by Adam (1e-3) on ordinary regression over the
               same batches (25 tasks × 20 points, every task mixed in), the paper's baseline:
               ``maml.step`` with no inner step and every point as the query set, since (2)
               at k = 0 is that regression loss

Test protocol (600 tasks from their own seed, never seen in training): every task has
K = 10 support points, whose first 5 are its K = 5 support set, and 100 fresh query
points.  Both networks take 1, 5 and 10 plain gradient steps of α = 0.01 on the
support mean-squared error; we report the query MSE's mean, 95% CI (1.96·std/√n, the
sample std) and median.  A task whose MSE is not finite or exceeds 1e3 counts as *diverged*: the
statistics are over the other tasks and the count is reported beside them.

The paper fine-tunes its baseline with "an automatically tuned step size": we also report
the baseline at the α of BASELINE_LR_GRID that scores best on the validation tasks.

Checkpoint.  Past ~50k iterations a few K = 5 tasks diverge under repeated steps of
0.01 (seen in an independent PyTorch reproduction), so every ``--validate-every``
iterations both networks are scored on validation tasks (separate from the test tasks)
and the best is kept (``train.train``'s select); MAML's last parameters are tested too.  Criterion: the K = 5 validation MSE averaged over 1, 5 and 10
steps (the three numbers the paper reports); any diverged validation task makes it +inf.
"""

import os
import platform
import time
from dataclasses import replace

import autograd.numpy as anp
import numpy as np

from refmeta import maml
from refmeta.data import tasks
from refmeta.device import backend
from refmeta.nn import models, trees
from refmeta.demos import files, options, train

LAYER_SIZES = (1, 40, 40, 1)
TEST_SHOTS = (5, 10)
TEST_STEPS = (1, 5, 10)
REPORTED_STEPS = (0,) + TEST_STEPS  # 0: before adaptation
VALIDATION_SHOTS = 5
DIVERGED_MSE = 1e3
BASELINE_LR_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CRITERION = "mean K=5 validation MSE averaged over 1, 5 and 10 steps (+inf if any task diverges)"
CHECKPOINT = ("validation", "min")      # train.train's select: the CRITERION, smallest first
PAPER = {"maml": {"K=5": {"1": 0.67, "5": 0.38, "10": 0.35}},
         "pretrained": {"K=5": {"1": 2.41, "5": 2.23, "10": 2.19}}}
FULL = {"iterations": 50000, "pretrain_iterations": 50000, "test_tasks": 600,
        "validation_tasks": 600, "validate_every": 1000}
FAST = {"iterations": 600, "pretrain_iterations": 600, "test_tasks": 100,
        "validation_tasks": 50, "validate_every": 200}

def add_arguments(parser):
    """The demo's options; sizes left at None take FULL's values, or FAST's with --fast."""
    add, count, positive = parser.add_argument, options.integer_at_least(0), options.integer_at_least(1)
    add("--seed", type=options.seed, default=0, help="training seed: init, batches, validation tasks")
    add("--eval-seed", type=options.seed, default=2017, help="seed of the test tasks (default 2017)")
    add("--iterations", type=count, help=f"MAML meta-iterations (default {FULL['iterations']})")
    add("--pretrain-iterations", type=count,
        help=f"Adam steps for the pretrained baseline (default {FULL['pretrain_iterations']})")
    add("--meta-batch-size", type=positive, default=25, help="tasks per meta-batch (default 25)")
    add("--n-support", type=positive, default=10, help="K at meta-training (default 10)")
    add("--n-query", type=positive, default=10, help="query points per training task (default 10)")
    add("--inner-lr", type=options.nonnegative_float, default=0.01,
        help="α, at training and test (default 0.01)")
    add("--meta-lr", type=options.nonnegative_float, default=1e-3,
        help="Adam step size β, both networks (default 1e-3)")
    add("--first-order", action="store_true", help="first-order MAML instead of second order")
    add("--test-tasks", type=positive, help=f"test tasks (default {FULL['test_tasks']})")
    add("--test-query-points", type=positive, default=100,
        help="query points per test task (default 100)")
    add("--validation-tasks", type=positive,
        help=f"validation tasks for the checkpoint (default {FULL['validation_tasks']})")
    add("--validate-every", type=positive,
        help=f"validate every this many iterations (default {FULL['validate_every']})")
    options.add_size_switches(parser, FAST, "the figures")
    add("--out", default=os.path.join("runs", "maml-sinusoid"),
        help="results directory (default runs/maml-sinusoid)")


def run(args):
    """Meta-train, train the baseline, test both, print the table, save JSON and figures."""
    start, sizes = time.perf_counter(), options.sizes(args, FULL, FAST)
    options.check_out_folder(args.out, ("results.json", "figure2.png", "learning_curves.png"))
    options.check_memory(*memory_needs(args, sizes))
    config = maml.MAMLConfig(inner_lr=args.inner_lr, inner_steps=1,
                             test_inner_steps=max(TEST_STEPS), first_order=args.first_order,
                             task_reduction="mean", meta_lr=args.meta_lr)
    family = tasks.SinusoidFamily()
    data = make_data(args, sizes, family)
    runs = train_both(args, sizes, config, data)
    tuning = tune_inner_lr(runs["pretrained"].best.params, data["validation"], config)
    results = evaluate_all(runs, data, config, tuning[0])
    report = build_report(args, sizes, config, family, runs, tuning, results)
    report["table"] = format_table(report)
    print(report["table"])
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plots:
        report["figures"] = save_figures(args.out, runs, data, family, config)
    files.save_results(args.out, report, start)
    return report


def train_both(args, sizes, config, data):
    """{"maml", "pretrained": train.Trained}, each keeping its best validation checkpoint; the
    baseline is ``maml.step`` with no inner step on every point of its batches, and trains
    nothing once MAML's training was stopped by a signal."""
    check = lambda params, state: {"validation": validation_criterion(params, data["validation"], config)}
    plan = train.Plan(sizes["iterations"], sizes["validate_every"], what="MAML",
                      lower=train.lower(("--inner-lr", args.inner_lr), ("--meta-lr", args.meta_lr)))
    runs = {"maml": train.train(
        lambda params, state: maml.step(params, state, data["maml_batches"](), config),
        data["init"], maml.init_state(data["init"], config), plan, check, select=CHECKPOINT)}
    pretrain = replace(config, inner_steps=0)
    plan = plan._replace(iterations=sizes["pretrain_iterations"], what="pretrained",
                         lower=train.lower(("--meta-lr", args.meta_lr)))
    runs["pretrained"] = train.train(
        lambda params, state: maml.step(params, state, every_point(data["pretrain_batches"]()), pretrain),
        data["init"], maml.init_state(data["init"], pretrain), train.unless_stopped(plan, runs["maml"]),
        check, select=CHECKPOINT)
    return runs


def memory_needs(args, sizes):
    """Lower bounds on the bytes the sizes ask for at once, for ``options.check_memory``: a
    meta-batch's per-task params (θ_i′ and its gradient) and hidden activations; the test and
    validation tasks' query points (x and y), and one hidden layer over the larger set."""
    n_params = sum((a + 1) * b for a, b in zip(LAYER_SIZES, LAYER_SIZES[1:]))
    width, tasks_ = max(LAYER_SIZES), (sizes["test_tasks"], sizes["validation_tasks"])
    per_task = 2 * (n_params + width * (args.n_support + args.n_query))         # numbers
    return [(f"--meta-batch-size {args.meta_batch_size}", "a meta-batch's per-task params and "
             "activations", 8 * args.meta_batch_size * per_task),
            (f"--test-query-points {args.test_query_points} ({tasks_[0]} test and {tasks_[1]} "
             f"validation tasks)", "their points and activations",
             8 * args.test_query_points * (2 * sum(tasks_) + width * max(tasks_)))]


def make_data(args, sizes, family):
    """The init, the two batch streams, the validation tasks (K=5) and the test tasks.

    default_rng(seed).spawn(4) gives the init, MAML's batches, the baseline's batches and
    the validation tasks; default_rng(eval_seed) alone gives the test tasks.
    """
    init_rng, maml_rng, pretrain_rng, validation_rng = np.random.default_rng(args.seed).spawn(4)
    _, validation = sinusoid_test_set(validation_rng, family, sizes["validation_tasks"],
                                      args.test_query_points)
    test_tasks, test_set = sinusoid_test_set(np.random.default_rng(args.eval_seed), family,
                                             sizes["test_tasks"], args.test_query_points)
    init = {name: backend.asarray(w) for name, w in models.mlp_init(init_rng, LAYER_SIZES).items()}
    return {"init": init, "maml_batches": _batch_stream(maml_rng, family, args),
            "pretrain_batches": _batch_stream(pretrain_rng, family, args),
            "validation": validation[VALIDATION_SHOTS], "test_tasks": test_tasks,
            "test_set": test_set}


def _batch_stream(rng, family, args):
    """A function that draws the next meta-batch: an Episode with x (meta_batch_size, n, 1)."""
    return lambda: tasks.sample_sinusoid_episode(rng, family, args.meta_batch_size,
                                                 args.n_support, args.n_query)


def evaluate_all(runs, data, config, tuned_lr):
    """Test results of MAML (selected and last checkpoints) and the baseline (α and tuned α)."""
    pretrained = runs["pretrained"].best.params
    return {"maml": evaluate(runs["maml"].best.params, data["test_set"], config),
            "maml_final": evaluate(runs["maml"].params, data["test_set"], config),
            "pretrained": evaluate(pretrained, data["test_set"], config),
            "pretrained_tuned_lr": evaluate(pretrained, data["test_set"],
                                            replace(config, inner_lr=tuned_lr))}


def every_point(episode):
    """The batch with all its points, support and query, as the query set: what the pretrained
    network regresses on (``maml.step`` with inner_steps 0 descends the query loss at θ)."""
    return episode._replace(query_x=anp.concatenate([episode.support_x, episode.query_x], axis=1),
                            query_y=anp.concatenate([episode.support_y, episode.query_y], axis=1))


def validation_criterion(params, validation, config):
    """CRITERION: mean K=5 validation MSE, averaged over TEST_STEPS; +inf if any task diverges."""
    mse = task_mse_by_steps(params, validation, config, TEST_STEPS)
    means = [np.inf if np.any(_diverged(mse[s])) else np.mean(mse[s]) for s in TEST_STEPS]
    return float(np.mean(means))


def tune_inner_lr(params, validation, config):
    """The paper's baseline fine-tunes with "an automatically tuned step size": the value of
    BASELINE_LR_GRID with the best validation criterion.  Returns (best, {lr: criterion})."""
    scores = {lr: validation_criterion(params, validation, replace(config, inner_lr=lr))
              for lr in BASELINE_LR_GRID}
    return min(scores, key=scores.get), scores


def sinusoid_test_set(rng, family, n_tasks, n_query):
    """((amplitudes, phases), {K: Episode}) for K in TEST_SHOTS; the K = 5 support set is the
    first 5 points of the K = 10 one, and every K shares the query points (T, n_query, 1)."""
    amplitudes, phases = tasks.sample_sinusoid_tasks(rng, family, n_tasks)
    full = tasks.sinusoid_episode(rng, family, amplitudes, phases, max(TEST_SHOTS), n_query)
    return (amplitudes, phases), {k: tasks.Episode(full.support_x[:, :k], full.support_y[:, :k],
                                                   full.query_x, full.query_y) for k in TEST_SHOTS}


def task_mse_by_steps(params, episode, config, steps=REPORTED_STEPS):
    """{s: host (T,) query MSE of every task after s steps of α on its support set}."""
    task_params = trees.broadcast_tasks(params, anp.shape(episode.support_x)[0])
    with np.errstate(over="ignore", invalid="ignore"):  # diverging tasks are counted, not fatal
        trajectory = maml.adapt_trajectory(task_params, episode.support_x, episode.support_y,
                                           config, steps=max(steps))
        return {s: np.asarray(backend.to_host(config.model.loss(trajectory[s], episode.query_x,
                                                                episode.query_y, "mean")))
                for s in steps}


def evaluate(params, test_set, config):
    """{"K=k": {"s": summary}} over the test tasks for every K in TEST_SHOTS and reported step."""
    return {f"K={k}": {str(s): summarise(mse)
                       for s, mse in task_mse_by_steps(params, episode, config).items()}
            for k, episode in test_set.items()}


def summarise(mse):
    """Mean, 95% CI half-width (``options.mean_and_ci95``) and median over the non-diverged
    tasks of mse (T,), and how many diverged."""
    kept = mse[~_diverged(mse)]
    n = len(kept)
    mean, ci95 = options.mean_and_ci95(kept) if n else (None, None)
    return {"n_tasks": int(len(mse)), "n_diverged": int(len(mse) - n), "mean": mean,
            "ci95": ci95, "median": float(np.median(kept)) if n else None}


def _diverged(mse):
    return ~np.isfinite(mse) | (mse > DIVERGED_MSE)


def build_report(args, sizes, config, family, runs, tuning, results):
    """Everything needed to rerun and check the numbers, as a JSON-able dict."""
    timing = {f"{name}_{key}": value for name, r in runs.items() for key, value in (
        ("train_seconds", r.seconds), ("validation_seconds", r.check_seconds),
        ("seconds_per_iteration", (r.seconds - r.check_seconds) / max(r.iterations, 1)),
        ("iterations_done", r.iterations), ("stopped", r.stopped))}
    return {
        "demo": "maml-sinusoid",
        "paper": {"citation": "Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for Fast "
                              "Adaptation of Deep Networks, Section 5.1 and Appendix C",
                  "test_mse": PAPER},
        "config": {"maml": config.conventions(), "model": models.mlp_describe(LAYER_SIZES),
                   "tasks": family.describe(), "meta_batch_size": args.meta_batch_size,
                   "n_support": args.n_support, "n_query": args.n_query, **sizes,
                   "pretrain": "Adam(meta_lr) on the mean MSE over all support and query points "
                               "of each batch, tasks mixed; same init as MAML",
                   "test_query_points": args.test_query_points, "test_shots": list(TEST_SHOTS),
                   "test_steps": list(TEST_STEPS), "test_inner_lr": config.inner_lr,
                   "test_support": "the K=5 support set is the first 5 points of the K=10 one",
                   "diverged": f"query MSE not finite or > {DIVERGED_MSE:g}; statistics exclude "
                               "diverged tasks and count them",
                   "ci95": "1.96 * std(ddof=1) / sqrt(n) over the non-diverged tasks",
                   "checkpoint_criterion": CRITERION, "fast": args.fast},
        "seeds": {"seed": args.seed, "eval_seed": args.eval_seed,
                  "streams": "default_rng(seed).spawn(4): init, MAML batches, pretrain batches, "
                             "validation tasks; default_rng(eval_seed): test tasks"},
        "checkpoints": {name: {"selected_iteration": r.best.iteration,
                               "selected_validation_criterion": r.best.value}
                        for name, r in runs.items()},
        "pretrained_tuned_inner_lr": {"selected": tuning[0], "validation_criterion_by_lr": {
            str(lr): v for lr, v in tuning[1].items()}},
        "timing": timing,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "backend": backend.current()},
        "results": results,
        "learning_curves": {name: r.curve for name, r in runs.items()},
    }


def format_table(report):
    """Markdown: test MSE, ours against the paper's, then our medians and the α tuning."""
    config, tuning = report["config"], report["pretrained_tuned_inner_lr"]
    alpha, tuned = config["maml"]["inner_lr"], tuning["selected"]
    head = ["| | network | K | before | 1 step | 5 steps | 10 steps | diverged (0/1/5/10) |",
            "|---|---|---|---|---|---|---|---|"]
    rows = [("ours", f"MAML (iteration {report['checkpoints']['maml']['selected_iteration']}, "
                     f"α={alpha})", "maml"),
            ("paper", "MAML", "maml"),
            ("ours", f"pretrained, α={alpha}", "pretrained"),
            ("ours", f"pretrained, tuned α={tuned}", "pretrained_tuned_lr"),
            ("paper", "pretrained, tuned step", "pretrained"),
            ("ours", f"MAML (last, iteration {report['timing']['maml_iterations_done']})", "maml_final")]
    if tuned == alpha:  # the tuned row would repeat the one above it
        rows = [row for row in rows if row[2] != "pretrained_tuned_lr"]
    ours = [row for row in rows if row[0] == "ours"]
    lines = [f"Test MSE on {config['test_tasks']} tasks, mean ± 95% CI ({config['ci95']})", ""]
    lines += head + _table_rows(report, rows, _mean_cells)
    lines += ["", "Medians (ours)", ""] + head + _table_rows(report, ours, _median_cells)
    scores = ", ".join(f"{lr}: {_number(v)}"
                       for lr, v in tuning["validation_criterion_by_lr"].items())
    lines += ["", f"Checkpoints chosen by the {CRITERION}: " + ", ".join(
        f"{name} iteration {c['selected_iteration']} ({_number(c['selected_validation_criterion'])})"
        for name, c in report["checkpoints"].items())]
    lines += [f"Baseline step size tuned on the validation tasks (criterion by α): {scores} "
              f"-> α={tuned}"]
    return "\n".join(lines)


def _table_rows(report, rows, cells):
    """Markdown rows for every K; the paper's numbers are K=5 only."""
    lines = []
    for k in TEST_SHOTS:
        for source, label, key in rows:
            if source == "paper" and k != 5:
                continue
            summary = report["results"][key][f"K={k}"]
            row = _paper_cells(key) if source == "paper" else cells(summary)
            lines.append(f"| {source} | {label} | {k} | " + " | ".join(row) + " |")
    return lines


def _mean_cells(summary):
    by_step = [summary[str(s)] for s in REPORTED_STEPS]
    cells = [f"{_number(x['mean'])} ± {_number(x['ci95'])}" for x in by_step]
    return cells + [_diverged_counts(summary)]


def _median_cells(summary):
    cells = [_number(summary[str(s)]["median"]) for s in REPORTED_STEPS]
    return cells + [_diverged_counts(summary)]


def _paper_cells(key):
    return [""] + [f"{PAPER[key]['K=5'][str(s)]:.2f}" for s in TEST_STEPS] + [""]


def _diverged_counts(summary):
    return "/".join(str(summary[str(s)]["n_diverged"]) for s in REPORTED_STEPS)


def _number(value):
    if value is None:  # every task diverged
        return "n/a"
    return f"{value:.2f}" if np.isfinite(value) else str(value)


def save_figures(out_dir, runs, data, family, config):
    """Figure 2 of the paper (one K=5 test task) and the learning curves; [] without matplotlib."""
    adaptation = options.figure((10, 4))
    if adaptation is None:
        return []
    curves = options.figure((10, 4))
    paths = [os.path.join(out_dir, "figure2.png"), os.path.join(out_dir, "learning_curves.png")]
    _plot_adaptation(adaptation, runs, data["test_tasks"], data["test_set"][5], family, config, paths[0])
    _plot_learning_curves(curves, runs, paths[1])
    print("wrote " + ", ".join(paths))
    return paths


def _plot_adaptation(fig, runs, test_tasks, episode, family, config, path):
    """Test task 0: truth, its K=5 points, each network before and after 1 and 10 steps."""
    grid = np.linspace(*family.x_range, 200)  # (200,)
    grid_batch = backend.asarray(grid[None, :, None])  # (1 task, 200, 1)
    truth = tasks.sinusoid(grid, test_tasks[0][0], test_tasks[1][0], family.phase_sign)
    support_x, support_y = episode.support_x[:1], episode.support_y[:1]  # (1, 5, 1)
    last = max(TEST_STEPS)
    labels = {0: "before adaptation", 1: "after 1 step", last: f"after {last} steps"}
    for ax, name in zip(fig.subplots(1, 2, sharey=True), ("maml", "pretrained")):
        trajectory = maml.adapt_trajectory(trees.broadcast_tasks(runs[name].best.params, 1),
                                           support_x, support_y, config, last)
        ax.plot(grid, truth, color="red", label="ground truth")
        for (steps, label), style in zip(labels.items(), (":", "--", "-")):
            prediction = backend.to_host(config.model.apply(trajectory[steps], grid_batch))
            ax.plot(grid, np.ravel(prediction), style, color="green", label=label)
        ax.plot(np.ravel(backend.to_host(support_x)), np.ravel(backend.to_host(support_y)), "^",
                color="purple", label="K=5 points")
        ax.set(title=f"{'MAML' if name == 'maml' else 'pretrained'}, K=5, α={config.inner_lr}",
               xlabel="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize="small")
    fig.subplots_adjust(bottom=0.22)
    _save_atomically(fig, path)


def _plot_learning_curves(fig, runs, path):
    """Training loss (per validation window) and the validation criterion against iteration."""
    loss_ax, validation_ax = fig.subplots(1, 2)
    names = {"maml": "MAML meta-loss", "pretrained": "pretrained, regression loss"}
    for name, r in runs.items():
        curve = r.curve
        validation = [v if np.isfinite(v) else np.nan for v in curve["validation"]]
        line, = loss_ax.plot(curve["iteration"][1:], curve["train_loss"][1:], label=names[name])
        validation_ax.plot(curve["iteration"], validation, color=line.get_color(), label=name)
        diverged = [i for i, v in zip(curve["iteration"], validation) if np.isnan(v)]
        if diverged:  # the criterion is +inf there: mark it at the top
            validation_ax.plot(diverged, [np.nanmax(validation)] * len(diverged), "x",
                               color=line.get_color(), label=f"{name}: a task diverged")
        validation_ax.axvline(r.best.iteration, linestyle=":", color=line.get_color())
    loss_ax.set(yscale="log", xlabel="iteration", title="training loss, mean over each window")
    validation_ax.set(yscale="log", xlabel="iteration",
                      title="validation: K=5 MSE, mean of 1/5/10 steps\n(dotted: selected)")
    loss_ax.legend()
    validation_ax.legend()
    fig.tight_layout()
    _save_atomically(fig, path)


def _save_atomically(fig, path):
    files.save_figure_atomically(path, fig)


def main(argv=None):
    """``python demos/maml_sinusoid.py [options]``, the same as ``refmeta demo maml-sinusoid``."""
    options.main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
