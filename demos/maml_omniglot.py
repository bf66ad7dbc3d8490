"""MAML on Omniglot (Finn, Abbeel & Levine 2017, Section 5.2): held-out characters and Lake's runs.

Trains MAML's Omniglot network on the two small background sets, split by character, and reports
N-way 1-shot and 5-shot accuracy on held-out characters (600 episodes, 95% CI) for the N it was
trained for (default 5); a 20-way model (``--train-way 20``) is also scored on Lake's 20 official
one-shot runs next to MHD's 38.8% and people's 4.5%.

Model and algorithm (the paper's Section 5.2 and the authors' code)
    network    conv4 with stride-2 3×3 convolutions, 64 filters, batch norm with a learned offset
               only (ε = 1e-3) in transductive mode (each forward pass normalises by its own
               batch: the support set in the inner loop, the query set after it), ReLU, mean
               over the 2×2 map, linear to N (``models.conv4_init(variant="stride",
               bn_affine="offset")``); the offsets are meta-learned, not adapted (adapt_bn False)
    inner loop 1 step of α = 0.4 on the support loss N × mean cross-entropy
               (``inner_reduction="n_way_times_mean"``, the authors' code), 3 steps at test
               (the paper; the authors' code tests with 10: ``--test-inner-steps 10``)
    outer      Adam, β = 3e-3, on the mean query cross-entropy over a meta-batch of 8 tasks,
               5-way 1-shot with 1 query per class; all tasks go through one vectorised call
               (``maml.step``).  Two departures from the authors' code (β = 1e-3, 32 tasks),
               chosen for the 12-minute budget by 5-minute runs of each setting (the docs'
               "Choosing the defaults"): a smaller meta-batch takes more Adam steps in the
               same time: after 5 minutes, 71.2% 5-way 1-shot with the authors' values and
               93.2% with these (100 test episodes); ``--meta-batch-size 32 --meta-lr 0.001`` gives the
               authors' values, and the JSON lists the departures ("departures_from_authors").
               First order by default (FOMAML, Section 5.2): second order costs about twice
               as much per iteration here; ``--second-order`` gives exact MAML.
               The 20-way setting of the paper: ``--train-way 20 --inner-lr 0.1 --inner-steps 5
               --test-inner-steps 5 --meta-batch-size 16 --meta-lr 0.001``.

The protocol this demo shares with ``reptile_omniglot`` (functions below):
    data       images_background_small1 + small2 (242 characters), split by character 80/20
               (``fewshot_omniglot.load_data``: the metric demos' split, seed ``--seed``); the
               training characters with their 90/180/270° rotations as classes
    training   the algorithm's ``step`` through ``train.train``; float32 (``--dtype``); at most
               ``--iterations`` or ``--max-train-minutes``; at iteration 0, every
               ``--curve-every`` iterations and at the end the held-out N-way 1-shot accuracy on
               a fixed set of ``--curve-episodes`` episodes (transductive) for the learning curve
    test       ``--eval-episodes`` (600) N-way K-shot episodes of held-out characters, K = 1
               and 5, ``--eval-query`` queries per class (default 1, the authors' 1-shot
               protocol), from ``--eval-seed``; the final parameters; accuracy: mean over
               episodes ± 1.96·std/√n (``options.mean_and_ci95``)
    Lake       with N = 20: each of the 20 runs is one 20-way 1-shot episode, its 20
               training drawings the support set, its 20 test drawings the queries; the error
               is ``lake_runs.evaluate_runs``'s (argmax of the logits)

    refmeta demo maml-omniglot --data OMNIGLOT_DIR
"""

import functools
import os
import platform
import time

import numpy as np
from scipy.special import log_softmax

from refmeta import checks, contract, maml
from refmeta.data import lake_runs, omniglot
from refmeta.device import backend
from refmeta.nn import losses, models
from refmeta.demos import files, fewshot_omniglot, options, train

BN_EPS = 1e-3
SHOTS = (1, 5)
EXTRA_TITLES = {"meta_step_size": "outer step size ε"}
PAPER = {"citation": "Finn, Abbeel & Levine 2017, Table 1 (Omniglot, full background set)",
         "second order": {"5-way 1-shot": 98.7, "5-way 5-shot": 99.9, "20-way 1-shot": 95.8,
                          "20-way 5-shot": 98.9},
         "first order": {"5-way 1-shot": 98.3, "5-way 5-shot": 99.2, "20-way 1-shot": 89.4,
                         "20-way 5-shot": 97.9}}
FULL = {"iterations": 40000, "max_train_minutes": 12.0, "meta_batch_size": 8, "hidden": 64,
        "eval_episodes": 600, "curve_every": 500, "curve_episodes": 100}
AUTHORS = {"meta_batch_size": 32, "meta_lr": 1e-3}   # the authors' code, 5-way 1-shot Omniglot
FAST = {"iterations": 8, "max_train_minutes": 1.0, "meta_batch_size": 2, "hidden": 8,
        "eval_episodes": 20, "curve_every": 4, "curve_episodes": 10}


# ----- the protocol shared with reptile_omniglot -----
def add_common_arguments(parser, name, full, fast):
    """The options of both optimization-based Omniglot demos; sizes default to None (FULL/FAST)."""
    add, positive = parser.add_argument, options.integer_at_least(1)
    options.add_omniglot_folders(parser, name)
    add("--seed", type=options.seed, default=0, help="init, split and training episodes (default 0)")
    add("--eval-seed", type=options.seed, default=2016, help="test episodes (default 2016)")
    add("--iterations", type=positive, help=f"meta-iterations at most (default {full['iterations']})")
    add("--max-train-minutes", type=options.positive_float,
        help=f"stop training after this long (default {full['max_train_minutes']})")
    add("--train-way", type=options.integer_at_least(2), default=5,
        help="N at training and test (default 5; 20 also scores Lake's runs)")
    add("--meta-batch-size", type=positive,
        help=f"tasks per meta-iteration (default {full['meta_batch_size']})")
    add("--hidden", type=positive, help=f"conv filters (default {full['hidden']})")
    add("--dtype", choices=("float32", "float64"), default="float32",
        help="training and evaluation precision (default float32)")
    add("--test-fraction", type=options.finite_float, default=0.2, help="characters held out (default 0.2)")
    add("--eval-episodes", type=options.integer_at_least(2),
        help=f"test episodes per setting (default {full['eval_episodes']})")
    add("--eval-query", type=positive, default=1, help="queries per class at test (default 1)")
    add("--curve-every", type=positive,
        help=f"held-out check every this many iterations (default {full['curve_every']})")
    add("--curve-episodes", type=positive,
        help=f"episodes per held-out check (default {full['curve_episodes']})")
    options.add_size_switches(parser, fast)


def network(n_way, hidden, bn_affine):
    """The stride-2 conv4 of MAML's Omniglot experiments as a ``contract.Model`` (cross-entropy)."""
    return contract.supervised(
        functools.partial(models.conv4_init, in_channels=1, n_out=n_way, hidden=hidden,
                          variant="stride", bn_affine=bn_affine, image_size=28),
        functools.partial(models.conv4_apply, variant="stride", bn_mode="transductive", bn_eps=BN_EPS),
        functools.partial(losses.cross_entropy, check=False),
        f"conv4 stride-2, {hidden} filters, transductive batch norm ({bn_affine}, eps {BN_EPS}), "
        f"{n_way}-way linear head, cross-entropy")


def describe_network(n_way, hidden, bn_affine):
    return models.conv4_describe(1, n_way, hidden, "stride", bn_affine, "transductive", BN_EPS, 28)


def prepare(args, full, fast, needs):
    """(sizes, training Characters with rotations, held-out Characters, Lake's runs) after
    checking the options and the data; ``needs`` adds (option text, drawings per class it needs)
    pairs.  Bad input is an options.UsageError before any training."""
    size = options.sizes(args, full, fast)
    if not 0 < args.test_fraction < 1:
        raise options.UsageError(f"--test-fraction must lie in (0, 1); got {args.test_fraction}")
    options.check_data_folder(args.data, fewshot_omniglot.ZIPS + ("all_runs.zip",))
    options.check_out_folder(args.out, ("results.json", "learning_curve.png"))
    train_chars, test_chars, runs = fewshot_omniglot.load_data(args, np.random.default_rng(args.seed))
    drawings = test_chars.images.shape[1]
    options.check_needs(
        (f"--train-way {args.train_way}", args.train_way, len(train_chars.names), "training classes"),
        (f"--train-way {args.train_way} at test", args.train_way, len(test_chars.names),
         "held-out characters"),
        (f"--eval-query {args.eval_query}: {max(SHOTS)}-shot episodes need {max(SHOTS)} + "
         f"{args.eval_query}", max(SHOTS) + args.eval_query, drawings, "drawings per class"),
        *((what, needed, drawings, "drawings per class") for what, needed in needs))
    side, itemsize = test_chars.images.shape[-1], np.dtype(args.dtype).itemsize
    per_task = args.train_way * max(needed for _, needed in needs) * side * side  # pixels
    options.check_memory((f"--meta-batch-size {size['meta_batch_size']}", "a meta-batch's images "
                          "(drawn in float64) and first conv layer's outputs",
                          size["meta_batch_size"] * per_task * (8 + size["hidden"] * itemsize)))
    return size, train_chars, test_chars, runs


def to_device(host_params, dtype):
    return {name: backend.asarray(value, dtype) for name, value in host_params.items()}


def plan(size, what, lower):
    """train.Plan of both demos: ``iterations`` at most, ``max_train_minutes``, a held-out check
    every ``curve_every`` iterations; ``lower``: the options to lower should training diverge."""
    return train.Plan(size["iterations"], size["curve_every"], 60 * size["max_train_minutes"], what,
                      lower, "iteration", "held-out check")


def episode_batch(images, classes, drawings, k_shot, dtype):
    """(Episode with a task axis, host query labels (T, N·Q)) from index arrays classes (T, N) and
    drawings (T, N, K+Q) (``fewshot_omniglot.draw_episodes``); labels 0..N−1 in draw order."""
    n_tasks, n_way = classes.shape
    picked = images[classes[..., None], drawings][:, :, :, None]            # (T, N, K+Q, 1, H, W)
    n_query = drawings.shape[2] - k_shot
    support_x = picked[:, :, :k_shot].reshape((n_tasks, n_way * k_shot) + picked.shape[3:])
    query_x = picked[:, :, k_shot:].reshape((n_tasks, n_way * n_query) + picked.shape[3:])
    support_y, query_y = (np.tile(np.repeat(np.arange(n_way), n), (n_tasks, 1)) for n in (k_shot, n_query))
    episode = checks.episode(contract.Episode(
        backend.asarray(support_x, dtype), backend.asarray(support_y, dtype=None),
        backend.asarray(query_x, dtype), backend.asarray(query_y, dtype=None)), n_way=n_way)
    return episode, query_y


def evaluate(predict, params, characters, rng, n_episodes, n_way, k_shot, n_query, dtype, chunk=50):
    """{mode: (accuracy, mean query cross-entropy)}, each (n_episodes,), of N-way K-shot episodes
    with N·n_query queries each.

    predict(params, episode, rng) -> {mode: logits (T, N·Q, N)}, e.g. {"transductive": …}.
    """
    classes, drawings = fewshot_omniglot.draw_episodes(rng, *characters.images.shape[:2], n_episodes,
                                                       n_way, k_shot, n_query)
    scores = {}
    for begin in range(0, n_episodes, chunk):
        part = slice(begin, begin + chunk)
        episode, query_y = episode_batch(characters.images, classes[part], drawings[part], k_shot, dtype)
        for mode, logits in predict(params, episode, rng).items():
            log_p = log_softmax(np.asarray(backend.to_host(logits), dtype=np.float64), axis=-1)
            correct = np.argmax(log_p, axis=-1) == query_y                   # (T, N·Q)
            loss = -np.take_along_axis(log_p, query_y[..., None], axis=-1)[..., 0]
            scores.setdefault(mode, []).append((np.mean(correct, -1), np.mean(loss, -1)))
    return {mode: tuple(np.concatenate(values) for values in zip(*parts)) for mode, parts in scores.items()}


def heldout_check(predict, characters, args, size):
    """check(params, state) for ``train.train``: the mean accuracy % and query cross-entropy of the
    first mode on the same ``curve_episodes`` N-way 1-shot episodes every time (seed eval_seed + 1)."""
    def check(params, state):
        scores = evaluate(predict, params, characters, np.random.default_rng(args.eval_seed + 1),
                          size["curve_episodes"], args.train_way, 1, args.eval_query, args.dtype)
        accuracy, loss = next(iter(scores.values()))
        return {"heldout_accuracy": 100 * float(np.mean(accuracy)), "heldout_loss": float(np.mean(loss))}
    return check


def test_and_lake(predict, params, characters, runs, args, size):
    """{mode: {"N-way K-shot": summary}} on held-out characters and, for N = 20, Lake's runs
    {mode: {"error", "per_run"}} (else the reason they were skipped), with seconds."""
    begin, rng = time.perf_counter(), np.random.default_rng(args.eval_seed)
    results = {}
    for k_shot in SHOTS:
        scores = evaluate(predict, params, characters, rng, size["eval_episodes"], args.train_way,
                          k_shot, args.eval_query, args.dtype)
        for mode, (accuracy, loss) in scores.items():
            results.setdefault(mode, {})[f"{args.train_way}-way {k_shot}-shot"] = dict(
                fewshot_omniglot.summarise(accuracy), query_loss=float(np.mean(loss)))
    test_seconds, begin = time.perf_counter() - begin, time.perf_counter()
    if args.train_way != 20:
        lake = {"skipped": f"Lake's runs are 20-way: they need a 20-way model (--train-way 20); "
                           f"this one is {args.train_way}-way"}
    else:
        lake = {}
        for mode in results:
            errors = lake_runs.evaluate_runs(runs, lake_score(predict, params, mode, args), kind="score")
            lake[mode] = {"error": errors.mean, "per_run": errors.per_run.tolist()}
    return results, lake, {"test_seconds": test_seconds, "lake_seconds": time.perf_counter() - begin}


def lake_score(predict, params, mode, args):
    """score(test_images (20, H, W), train_images (20, H, W)) -> logits (20, 20) for one run: its
    training drawings the support set (labels = their order), its test drawings the queries."""
    def score(test_images, train_images):
        n_way = len(train_images)
        episode = checks.episode(contract.Episode(
            backend.asarray(train_images[None, :, None], args.dtype),
            backend.asarray(np.arange(n_way)[None], dtype=None),
            backend.asarray(test_images[None, :, None], args.dtype),
            backend.asarray(np.zeros((1, len(test_images)), dtype=np.int64), dtype=None)),  # unused
            n_way=n_way)
        return predict(params, episode, np.random.default_rng(args.eval_seed))[mode][0]
    return score


def departures(ours, authors):
    """{name: {"ours": ..., "authors": ...}} for each of ``ours`` that differs from ``authors``:
    the JSON's departures_from_authors."""
    return {name: {"ours": value, "authors": authors[name]}
            for name, value in ours.items() if value != authors[name]}


def build_report(name, args, size, config, model, trained, results, lake, timing, paper, data):
    """Everything needed to rerun and check the numbers, as a JSON-able dict."""
    minutes = (trained.seconds - trained.check_seconds) / 60
    return {
        "demo": name, "paper": paper, "conventions": config.conventions(), "model": model,
        "config": {**vars(args), **size, "bn_eps": BN_EPS, "shots_at_test": list(SHOTS),
                   "tested_params": "the final ones (no checkpoint selection)",
                   "ci95": "1.96 * std(ddof=1) / sqrt(n) over episodes (options.mean_and_ci95)"},
        "data": data, "results": results, "lake_runs": lake, "lake_references": fewshot_omniglot.LAKE,
        "learning_curve": trained.curve,
        "timing": {"iterations_done": trained.iterations, "train_seconds": trained.seconds,
                   "heldout_check_seconds": trained.check_seconds, "stopped": trained.stopped,
                   "iterations_per_minute": trained.iterations / minutes if minutes > 0 else None, **timing},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "backend": backend.current(), "loadavg_end": os.getloadavg()},
    }


def format_table(report, label, paper_results):
    """Markdown: ours per mode against the paper; Lake's runs; README rows (its Omniglot table)."""
    modes = list(report["results"])
    lines = ["| setting | " + " | ".join(f"ours, {mode.replace('_', '-')}" for mode in modes)
             + " | paper (full background set) |", "|---|" + "---|" * (len(modes) + 1)]
    for setting in report["results"][modes[0]]:
        cells = [f"{r['mean']:.1f} ± {r['ci95']:.1f}%" for r in (report["results"][mode][setting]
                                                                 for mode in modes)]
        paper = paper_results.get(setting)
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {'' if paper is None else f'{paper}%'} |")
    lake = report["lake_runs"]
    lines += ["", "Lake's 20 runs: " + (lake["skipped"] if "skipped" in lake else ", ".join(
        f"{mode.replace('_', '-')} {lake[mode]['error']:.2f}% error" for mode in modes))
              + " (MHD 38.8%, people 4.5%)", "", "README rows:", ""]
    timing = report["timing"]
    training = (f"{timing['iterations_done']} iterations of {report['config']['meta_batch_size']} tasks, "
                f"{timing.get('total_seconds', timing['train_seconds']) / 60:.1f} min in all")
    paper_cell = " / ".join(str(paper_results.get(s, "")) for s in ("5-way 1-shot", "20-way 1-shot"))
    for mode in modes:
        cells = []
        for setting in ("5-way 1-shot", "5-way 5-shot", "20-way 1-shot"):
            r = report["results"][mode].get(setting)
            cells.append("" if r is None else f"{r['mean']:.1f} ± {r['ci95']:.1f}")
        error = "n/a (not 20-way)" if "skipped" in lake else f"{lake[mode]['error']:.2f}%"
        lines.append(f"| `{report['demo']}` ({label}, {mode.replace('_', '-')}) | " + " | ".join(cells)
                     + f" | {error} | {training} | {paper_cell} |")
    return "\n".join(lines)


def save_figure(out_dir, title, curve):
    """learning_curve.png: training loss, held-out accuracy (and ε when annealed) by iteration."""
    extra = [key for key in curve if key not in ("iteration", "train_loss", "heldout_accuracy",
                                                 "heldout_loss", "seconds")]
    fig = options.figure((4 * (3 + len(extra)), 3.6))
    if fig is None:
        return None
    panels = [("train_loss", "training loss (window mean)"),
              ("heldout_accuracy", "held-out 1-shot accuracy %"), ("heldout_loss", "held-out query loss"),
              *((key, EXTRA_TITLES.get(key, key.replace("_", " "))) for key in extra)]
    for ax, (key, panel_title) in zip(fig.subplots(1, len(panels)), panels):
        ax.plot(curve["iteration"], curve[key], marker=".")
        ax.set(title=panel_title, xlabel="meta-iteration")
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out_dir, "learning_curve.png")
    files.save_figure_atomically(path, fig)
    print(f"wrote {path}")
    return path


def finish(report, args, start, label, paper_results, title):
    """Table, figure, timing and the JSON, written atomically; returns the report."""
    report["timing"]["total_seconds"] = time.perf_counter() - start
    report["table"] = format_table(report, label, paper_results)
    print(report["table"])
    if not args.no_plots:
        report["figure"] = save_figure(args.out, title, report["learning_curve"])
        report["figure_title"] = title
    files.save_results(args.out, report, start)
    return report


def data_summary(train_chars, test_chars, runs):
    return {"train_classes": len(train_chars.names), "train_characters": len(train_chars.names) // 4,
            "heldout_characters": len(test_chars.names), "lake_runs": len(runs)}


# ----- MAML -----
def add_arguments(parser):
    add_common_arguments(parser, "maml-omniglot", FULL, FAST)
    add = parser.add_argument
    add("--train-shot", type=options.integer_at_least(1), default=1, help="K at training (default 1)")
    add("--train-query", type=options.integer_at_least(1), default=1,
        help="query drawings per class at training (default 1, the authors' code)")
    add("--inner-lr", type=options.nonnegative_float, default=0.4, help="α (default 0.4)")
    add("--inner-steps", type=options.integer_at_least(0), default=1,
        help="inner steps at training (default 1)")
    add("--test-inner-steps", type=options.integer_at_least(0), default=3,
        help="inner steps at test (default 3)")
    add("--meta-lr", type=options.nonnegative_float, default=3e-3,
        help="Adam's β (default 3e-3; the authors' 1e-3)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--first-order", dest="first_order", action="store_true", default=True,
                       help="first-order MAML, FOMAML (the default)")
    order.add_argument("--second-order", dest="first_order", action="store_false",
                       help="exact MAML: differentiate through the inner steps")


def maml_predict(config):
    """predict(params, episode, rng) for ``evaluate``: transductive, as the authors' code."""
    return lambda params, episode, rng: {"transductive": maml.predict(params, episode, config)}


def run(args):
    """Meta-train, test, score Lake's runs (20-way), print the tables, write results.json."""
    start = time.perf_counter()
    size, train_chars, test_chars, runs = prepare(
        args, FULL, FAST, [(f"--train-shot {args.train_shot} + --train-query {args.train_query}",
                            args.train_shot + args.train_query)])
    config = maml.MAMLConfig(model=network(args.train_way, size["hidden"], "offset"), n_way=args.train_way,
                             inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                             test_inner_steps=args.test_inner_steps, first_order=args.first_order,
                             task_reduction="mean", inner_reduction="n_way_times_mean",
                             query_reduction="mean", adapt_bn=False, meta_lr=args.meta_lr)
    init_rng, train_rng = np.random.default_rng([args.seed, 1]).spawn(2)
    params = to_device(maml.init(init_rng, config), args.dtype)

    def step(params, state):
        episode = omniglot.sample_episodes(train_rng, train_chars.images, size["meta_batch_size"],
                                           args.train_way, args.train_shot, args.train_query,
                                           dtype=args.dtype)
        return maml.step(params, state, episode, config)

    predict = maml_predict(config)
    order = "first order" if args.first_order else "second order"
    trained = train.train(step, params, maml.init_state(params, config),
                          plan(size, f"MAML ({order})", train.lower(("--inner-lr", args.inner_lr),
                                                                    ("--meta-lr", args.meta_lr))),
                          heldout_check(predict, test_chars, args, size))
    results, lake, timing = test_and_lake(predict, trained.params, test_chars, runs, args, size)
    report = build_report("maml-omniglot", args, size, config,
                          describe_network(args.train_way, size["hidden"], "offset"), trained, results,
                          lake, timing, PAPER, data_summary(train_chars, test_chars, runs))
    report["order"] = order
    report["departures_from_authors"] = departures(
        {"meta_batch_size": size["meta_batch_size"], "meta_lr": args.meta_lr}, AUTHORS)
    return finish(report, args, start, order, PAPER[order], f"MAML on Omniglot ({order})")


def main(argv=None):
    """``python demos/maml_omniglot.py --data DIR``, the same as ``refmeta demo maml-omniglot``."""
    options.main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
