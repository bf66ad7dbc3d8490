"""Reptile on sine-wave regression (Nichol, Achiam & Schulman 2018, Figure 1) against joint training.

Setup (the paper's sine-wave demonstration, with the settings of the authors' published script)
    tasks      y = A·sin(x + b),  A ~ U[0.1, 5],  b ~ U[0, 2π]
               (``tasks.SinusoidFamily(phase_sign=+1, phase_range=(0, 2π))``); a task's inputs
               are the 50 equally spaced points of [−5, 5] and its loss is the MSE over them
    model      MLP 1-64-64-1, tanh (the script's choice; its comment says the paper's figure
               used ReLU: ``--activation relu``), MSE, PyTorch's default init, computed by
               ``fused_mlp.FusedMLP`` (the same function and gradient as ``models.mlp_apply``)
    Reptile    serial (Algorithm 1), one task per iteration: one epoch of plain SGD, α = 0.02,
               over the 50 points in 5 shuffled mini-batches of 10
               (``inner_batches.sample_inner_batches``),
               then φ ← φ + ε_i (φ̃ − φ) with ε annealed linearly to 0 over N = 30 000 iterations:
                   ε_i = ε_0 + (ε_final − ε_0) · i / N,   i = 0 … N − 1,   ε_0 = 0.1, ε_final = 0
    joint      the same loop with k = 1 inner step on all 50 points.  By the identity of Section 5
    training   (φ̃ − φ = −α ∇L for one SGD step) this is SGD on the mixture of tasks with step
               ε_i·α: the baseline that Reptile reduces to when k = 1.

Test protocol (600 tasks from ``--eval-seed``, never trained on): each task's K = 10 support points
are drawn without replacement from its 50 (the script draws its figure's 10 with replacement);
both networks take 32 full-batch SGD steps of α = 0.02 on the support MSE, as the script's figure
does, and we report the MSE over all 50 points after 0, 1 and 32 steps: mean, 95% CI
(``options.mean_and_ci95``) and median.  A task whose MSE is not finite or exceeds 1e3 counts as
diverged (``maml_sinusoid.summarise``).  The final parameters are tested (ε has reached 0; no
checkpoint is selected); every ``--validate-every`` iterations both networks are scored on
validation tasks for the learning curves only.

Figures: ``figure1.png`` (one test task: its 10 points and each network's curve before
adaptation and after 8, 16, 24 and 32 steps, as the script draws them) and
``learning_curves.png``.  ``results.json`` holds the configuration, the ε schedule, seeds,
timings, curves and every number.
"""

import math
import os
import platform
import time
from dataclasses import replace

import numpy as np

from refmeta import checks, reptile
from refmeta.data import inner_batches, tasks
from refmeta.device import backend
from refmeta.fast import fused_mlp
from refmeta.nn import models, trees
from refmeta.demos import files, maml_sinusoid, options, train

LAYER_SIZES = (1, 64, 64, 1)
GRID = np.linspace(-5.0, 5.0, 50)[:, None]          # (50, 1): every task's inputs
FAMILY = tasks.SinusoidFamily(phase_range=(0.0, 2 * math.pi), phase_sign=+1)
FIGURE_STEPS = (0, 8, 16, 24, 32)
FULL = {"iterations": 30000, "test_tasks": 600, "validation_tasks": 100, "validate_every": 1000}
FAST = {"iterations": 300, "test_tasks": 50, "validation_tasks": 20, "validate_every": 100}
SCHEDULE = "ε_i = ε_0 + (ε_final − ε_0) · i / N for i = 0 … N − 1 (the authors' linear schedule)"
NAMES = {"reptile": "Reptile", "joint": "joint training (k = 1)"}


def add_arguments(parser):
    """The demo's options; sizes left at None take FULL's values, or FAST's with --fast."""
    add, positive = parser.add_argument, options.integer_at_least(1)
    add("--seed", type=options.seed, default=0, help="training seed: init, tasks, validation tasks")
    add("--eval-seed", type=options.seed, default=2018, help="seed of the test tasks (default 2018)")
    add("--iterations", type=positive,
        help=f"N, outer iterations, one task each (default {FULL['iterations']})")
    add("--meta-step-size", type=options.nonnegative_float, default=0.1,
        help="ε_0, the outer step size at iteration 0 (default 0.1)")
    add("--meta-step-size-final", type=options.nonnegative_float, default=0.0,
        help="ε_final, where the linear schedule ends (default 0)")
    add("--inner-lr", type=options.nonnegative_float, default=0.02,
        help="α, plain SGD, at training and test (default 0.02)")
    add("--inner-steps", type=positive, default=5,
        help="k, inner SGD steps per task (default 5: one epoch of 50 points)")
    add("--inner-batch-size", type=positive, default=10, help="points per inner mini-batch (default 10)")
    add("--activation", choices=("tanh", "relu"), default="tanh", help="hidden units (default tanh)")
    add("--test-shots", type=positive, default=10, help="K, support points of a test task (default 10)")
    add("--test-steps", type=positive, default=32, help="SGD steps at test (default 32)")
    add("--test-tasks", type=positive, help=f"default {FULL['test_tasks']}")
    add("--validation-tasks", type=positive, help=f"default {FULL['validation_tasks']}")
    add("--validate-every", type=positive, help=f"default {FULL['validate_every']}")
    options.add_size_switches(parser, FAST, "the figures")
    add("--out", default=os.path.join("runs", "reptile-sinusoid"),
        help="results directory (default runs/reptile-sinusoid)")


def run(args):
    """Train Reptile and joint training, test both, print the table, save JSON and figures."""
    start, sizes = time.perf_counter(), options.sizes(args, FULL, FAST)
    for name, value in (("--inner-batch-size", args.inner_batch_size), ("--test-shots", args.test_shots)):
        if value > len(GRID):
            raise options.UsageError(f"{name} {value}: a task has only {len(GRID)} points")
    options.check_out_folder(args.out, ("results.json", "figure1.png", "learning_curves.png"))
    network = fused_mlp.FusedMLP(LAYER_SIZES, args.activation)
    config = reptile.ReptileConfig(model=network.model(), inner_lr=args.inner_lr,
                                   inner_steps=args.inner_steps, test_inner_steps=args.test_steps,
                                   inner_optimizer="sgd", meta_step_size=args.meta_step_size,
                                   task_reduction="mean", variant="serial")
    configs = {"reptile": config, "joint": replace(config, inner_steps=1)}
    data = make_data(args, sizes, network)
    runs = {}
    for name, rng in zip(configs, data["train_rngs"]):
        runs[name] = train_network(configs[name], data, sizes, args, rng, name, runs.get("reptile"))
    steps = sorted({0, 1, args.test_steps})
    results = {name: {str(s): maml_sinusoid.summarise(mse) for s, mse in
                      task_mse_by_steps(r.params, data["test"], config, steps).items()}
               for name, r in runs.items()}
    report = build_report(args, sizes, configs, runs, results, steps)
    report["table"] = format_table(report)
    print(report["table"])
    if not args.no_plots:
        report["figures"] = save_figures(args.out, runs, data, config, args.test_steps)
    files.save_results(args.out, report, start)
    return report


def make_data(args, sizes, network):
    """The init, the training streams, the validation and the test tasks.

    default_rng(seed).spawn(4) gives the init, Reptile's tasks and mini-batches, joint
    training's tasks and the validation tasks; default_rng(eval_seed) alone gives the test tasks.
    """
    init_rng, reptile_rng, joint_rng, validation_rng = np.random.default_rng(args.seed).spawn(4)
    init = {name: backend.asarray(w) for name, w in network.model().init(init_rng).items()}
    test_tasks_drawn, test = draw_tasks(np.random.default_rng(args.eval_seed), sizes["test_tasks"],
                                        args.test_shots)
    return {"init": init, "train_rngs": (reptile_rng, joint_rng),
            "validation": draw_tasks(validation_rng, sizes["validation_tasks"], args.test_shots)[1],
            "test_tasks": test_tasks_drawn, "test": test}


def grid_episode(amplitudes, phases, support_rows=None):
    """An Episode of T tasks on the 50 grid points: query = all 50, support = ``support_rows``
    (T, K) of them (default all 50).  x (T, n, 1), y = A·sin(x + b)."""
    t = len(amplitudes)
    x = np.broadcast_to(GRID, (t,) + GRID.shape)                            # (T, 50, 1)
    y = tasks.sinusoid(x, np.reshape(amplitudes, (t, 1, 1)), np.reshape(phases, (t, 1, 1)),
                       FAMILY.phase_sign)
    rows = np.arange(t)[:, None]
    support_x, support_y = (x, y) if support_rows is None else (x[rows, support_rows], y[rows, support_rows])
    return checks.episode(tasks.Episode(*(backend.asarray(a) for a in (support_x, support_y, x, y))))


def draw_tasks(rng, n_tasks, shots):
    """((amplitudes, phases), Episode): T tasks, each with ``shots`` of its 50 points (drawn
    without replacement) as the support set and all 50 as the query set."""
    amplitudes, phases = tasks.sample_sinusoid_tasks(rng, FAMILY, n_tasks)
    rows = np.stack([rng.choice(len(GRID), shots, replace=False) for _ in range(n_tasks)])
    return (amplitudes, phases), grid_episode(amplitudes, phases, rows)


def train_network(config, data, sizes, args, rng, name, before=None):
    """``reptile.step`` once per task (``train.train``), ε annealed by SCHEDULE: train.Trained,
    the final params tested.  Reptile ("reptile") takes mini-batches of ``--inner-batch-size``,
    joint training every step on all 50 points.  The curve holds, per validation window, the mean
    training loss (the support loss at φ on the first inner batch), ε at the window's last
    iteration, and the validation MSE after 1 and ``test_inner_steps`` steps.  Nothing is trained
    once ``before``, the run before it, was stopped by a signal."""
    def step(params, state, meta_step_size):
        amplitude, phase = tasks.sample_sinusoid_tasks(rng, FAMILY, 1)
        batches = (inner_batches.sample_inner_batches(rng, 1, len(GRID), config.inner_steps,
                                                      args.inner_batch_size)
                   if name == "reptile" else None)
        return reptile.step(params, state, grid_episode(amplitude, phase),
                            replace(config, meta_step_size=meta_step_size), batch_indices=batches)

    def check(params, state):
        mse = task_mse_by_steps(params, data["validation"], config, (1, config.test_inner_steps))
        return dict(zip(("validation_1_step", "validation_test_steps"),
                        (float(np.mean(m)) for m in mse.values())))

    lower = train.lower(("--inner-lr", config.inner_lr), ("--meta-step-size", args.meta_step_size))
    plan = train.Plan(sizes["iterations"], sizes["validate_every"], what=NAMES[name], lower=lower)
    return train.train(step, data["init"], reptile.init_state(data["init"], config),
                       plan if before is None else train.unless_stopped(plan, before), check,
                       schedule=lambda progress: {"meta_step_size": train.linear(
                           args.meta_step_size, args.meta_step_size_final, progress)})


def task_mse_by_steps(params, episode, config, steps, chunk=100):
    """{s: host (T,) MSE on the query points of every task after s SGD steps of
    ``config.inner_lr`` on its whole support set}, ``chunk`` tasks at a time."""
    n_tasks, out = np.shape(episode.support_x)[0], {s: [] for s in steps}
    for begin in range(0, n_tasks, chunk):
        part = tasks.Episode(*(a[begin:begin + chunk] for a in episode))
        task_params = trees.broadcast_tasks(params, np.shape(part.support_x)[0])
        with np.errstate(over="ignore", invalid="ignore"):   # diverging tasks are counted, not fatal
            trajectory = reptile.adapt_trajectory(task_params, part.support_x, part.support_y,
                                                  config, steps=max(steps))
            for s in steps:
                out[s].append(backend.to_host(config.model.loss(trajectory[s], part.query_x,
                                                                part.query_y, "mean")))
    return {s: np.concatenate(parts) for s, parts in out.items()}


def build_report(args, sizes, configs, runs, results, steps):
    """Everything needed to rerun and check the numbers, as a JSON-able dict."""
    return {
        "demo": "reptile-sinusoid",
        "paper": {"citation": "Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning "
                              "Algorithms: the sine-wave regression of Figure 1, and Section 5 "
                              "(k = 1 is joint training); settings of the authors' sine-wave script",
                  "test_mse": None},
        "config": {
            "reptile": configs["reptile"].conventions(), "joint_training": configs["joint"].conventions(),
            "model": models.mlp_describe(LAYER_SIZES, args.activation),
            "model_implementation": "refmeta.fast.fused_mlp.FusedMLP (flat params 'mlp.flat')",
            "tasks": FAMILY.describe(), "inputs": "the 50 points of numpy.linspace(-5, 5, 50)",
            "inner_batches": {"reptile": f"{args.inner_steps} steps on mini-batches of "
                                         f"{args.inner_batch_size} (refmeta.data.inner_batches."
                                         "sample_inner_batches)",
                              "joint_training": "1 step on all 50 points"},
            "meta_step_size_schedule": {"rule": SCHEDULE, "initial": args.meta_step_size,
                                        "final": args.meta_step_size_final,
                                        "iterations": sizes["iterations"]},
            "test": {"shots": args.test_shots, "support": "drawn without replacement from the 50 points",
                     "steps": steps, "inner_lr": args.inner_lr, "optimizer": "SGD, full support batch",
                     "query": "all 50 points", "ci95": "1.96 * std(ddof=1) / sqrt(n), non-diverged tasks",
                     "diverged": f"MSE not finite or > {maml_sinusoid.DIVERGED_MSE:g}"},
            "tested_params": "the final ones (no checkpoint selection)", **sizes, "fast": args.fast},
        "seeds": {"seed": args.seed, "eval_seed": args.eval_seed,
                  "streams": "default_rng(seed).spawn(4): init, Reptile tasks and batches, joint "
                             "training tasks, validation tasks; default_rng(eval_seed): test tasks"},
        "timing": {f"{name}_{key}": value for name, r in runs.items() for key, value in (
            ("train_seconds", r.seconds), ("validation_seconds", r.check_seconds),
            ("seconds_per_iteration", (r.seconds - r.check_seconds) / max(r.iterations, 1)),
            ("iterations_done", r.iterations), ("stopped", r.stopped))},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "loadavg": os.getloadavg()},
        "results": results,
        "learning_curves": {name: r.curve for name, r in runs.items()},
    }


def format_table(report):
    """Markdown: test MSE by steps for both networks, means then medians; a README row."""
    steps, test = report["config"]["test"]["steps"], report["config"]["test"]
    head = ["| network | " + " | ".join("before" if s == 0 else f"{s} step{'s' * (s > 1)}"
                                        for s in steps) + " | diverged |",
            "|---|" + "---|" * (len(steps) + 1)]
    schedule = report["config"]["meta_step_size_schedule"]
    label = {"reptile": f"Reptile ({schedule['iterations']} iterations, ε {schedule['initial']:g} → "
                        f"{schedule['final']:g})", "joint": "joint training (k = 1, same schedule)"}
    lines = [f"Test MSE on {report['config']['test_tasks']} tasks (K = {test['shots']} support points, "
             f"MSE over all 50), mean ± 95% CI", ""] + head
    for statistic in ("mean", "median"):
        if statistic == "median":
            lines += ["", "Medians", ""] + head
        for name, by_step in report["results"].items():
            cells = [(f"{_number(by_step[str(s)]['mean'])} ± {_number(by_step[str(s)]['ci95'])}"
                      if statistic == "mean" else _number(by_step[str(s)]["median"])) for s in steps]
            diverged = "/".join(str(by_step[str(s)]["n_diverged"]) for s in steps)
            lines.append(f"| {label[name]} | " + " | ".join(cells) + f" | {diverged} |")
    reptile_row, joint = report["results"]["reptile"], report["results"]["joint"]
    last = str(steps[-1])
    lines += ["", "README row:", "", f"| Reptile, sine waves (K = {test['shots']}) | "
              f"{_number(reptile_row['1']['mean'])} ± {_number(reptile_row['1']['ci95'])} | "
              f"{_number(reptile_row[last]['mean'])} ± {_number(reptile_row[last]['ci95'])} | "
              f"joint training: {_number(joint['1']['mean'])} / {_number(joint[last]['mean'])} |"]
    return "\n".join(lines)


def _number(value):
    return "n/a" if value is None else f"{value:.3f}"


def save_figures(out_dir, runs, data, config, test_steps):
    """figure1.png (one test task, both networks) and learning_curves.png; [] without matplotlib."""
    adaptation = options.figure((10, 4))
    if adaptation is None:
        return []
    curves = options.figure((11, 4))
    paths = [os.path.join(out_dir, "figure1.png"), os.path.join(out_dir, "learning_curves.png")]
    plot_adaptation(adaptation, runs, data["test_tasks"], data["test"], config, test_steps)
    files.save_figure_atomically(paths[0], adaptation)
    plot_learning_curves(curves, runs)
    files.save_figure_atomically(paths[1], curves)
    print("wrote " + ", ".join(paths))
    return paths


def plot_adaptation(fig, runs, test_tasks_drawn, episode, config, test_steps):
    """Test task 0: the true curve, its support points and each network after 0, 8, … steps."""
    amplitudes, phases = test_tasks_drawn
    grid = np.linspace(-5, 5, 200)
    grid_batch = backend.asarray(grid[None, :, None])                       # (1 task, 200, 1)
    truth = tasks.sinusoid(grid, amplitudes[0], phases[0], FAMILY.phase_sign)
    support_x, support_y = episode.support_x[:1], episode.support_y[:1]     # (1, K, 1)
    steps = [s for s in FIGURE_STEPS if s <= test_steps] + ([test_steps] * (test_steps not in FIGURE_STEPS))
    for ax, (name, r) in zip(fig.subplots(1, 2, sharey=True), runs.items()):
        trajectory = reptile.adapt_trajectory(trees.broadcast_tasks(r.params, 1), support_x,
                                              support_y, config, steps=max(steps))
        ax.plot(grid, truth, color="black", linestyle=":", label="true")
        for s in steps:
            fraction = s / max(steps)
            prediction = backend.to_host(config.model.apply(trajectory[s], grid_batch))
            ax.plot(grid, np.ravel(prediction), color=(fraction, 0, 1 - fraction),
                    label="before adaptation" if s == 0 else f"after {s} step{'s' * (s != 1)}")
        ax.plot(np.ravel(backend.to_host(support_x)), np.ravel(backend.to_host(support_y)), "x",
                color="black", label=f"{np.shape(support_x)[1]} support points")
        ax.set(title=f"{NAMES[name]}, α = {config.inner_lr}", xlabel="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small")
    fig.suptitle("Reptile sine-wave regression: one test task")
    fig.subplots_adjust(bottom=0.25)


def plot_learning_curves(fig, runs):
    """Training loss per window, validation MSE after 1 and test steps, and the ε schedule."""
    loss_ax, validation_ax, schedule_ax = fig.subplots(1, 3)
    for name, r in runs.items():
        curve = r.curve
        line, = loss_ax.plot(curve["iteration"][1:], curve["train_loss"][1:], label=NAMES[name])
        for key, style in (("validation_1_step", "--"), ("validation_test_steps", "-")):
            steps = "1 step" if key.endswith("1_step") else "all test steps"
            validation_ax.plot(curve["iteration"], curve[key], style, color=line.get_color(),
                               label=f"{NAMES[name]}, {steps}")
        schedule_ax.plot(curve["iteration"], curve["meta_step_size"], color=line.get_color())
    loss_ax.set(yscale="log", xlabel="iteration", title="training loss at φ (window mean)")
    validation_ax.set(yscale="log", xlabel="iteration", title="validation MSE")
    schedule_ax.set(xlabel="iteration", title="outer step size ε")
    loss_ax.legend(fontsize="small")
    validation_ax.legend(fontsize="small")
    fig.suptitle("Reptile sine-wave regression: learning curves")
    fig.tight_layout()


def main(argv=None):
    """``python demos/reptile_sinusoid.py [options]``, the same as ``refmeta demo reptile-sinusoid``."""
    options.main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
