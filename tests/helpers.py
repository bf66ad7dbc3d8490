"""Small shared pieces for the tests: tiny models and data on a chosen backend."""

import copy
import functools
import importlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from autograd import grad

from refmeta import checks, contract, gradcheck
from refmeta.data import tasks
from refmeta.nn import losses, models, trees


def tiny_mlp(rng, d_in=1, hidden=4, d_out=1, depth=2):
    """Host params of a d_in-hidden-...-d_out MLP with O(1) weights (so curvature is visible)."""
    sizes = (d_in,) + (hidden,) * depth + (d_out,)
    return models.mlp_init(rng, sizes, weight_std=0.7)


def tiny_mlp_model(d_in=1, hidden=4, d_out=1, depth=2, activation="tanh"):
    """``tiny_mlp``'s network as a ``contract.Model`` with the MSE loss: MAML's and Reptile's
    ``config.model``; its init makes the same shapes as ``tiny_mlp`` with these sizes."""
    return contract.supervised(lambda rng: tiny_mlp(rng, d_in, hidden, d_out, depth),
                               lambda p, x: models.mlp_apply(p, x, activation=activation),
                               functools.partial(losses.mse, check=False),
                               f"mlp {d_in}-{'-'.join([str(hidden)] * depth)}-{d_out} {activation}, mse")


def mlp_loss(activation):
    return losses.model_loss(lambda p, x: models.mlp_apply(p, x, activation=activation), losses.mse)


def regression_episode(dev, rng, n_tasks, n_support, n_query, d_in=1, d_out=1):
    arrays = [rng.uniform(-2, 2, size=(n_tasks, n, d)) for n in (n_support, n_query)
              for d in (d_in, d_out)]
    return checks.episode(tasks.Episode(*(dev.asarray(a) for a in arrays)))


def classification_episode(dev, rng, n_tasks, n_way, n_shot, n_query, image_shape):
    """Random images with labels 0..n_way-1 (each class n_shot times in support)."""
    support_y = np.tile(np.repeat(np.arange(n_way), n_shot), (n_tasks, 1))
    query_y = np.tile(np.repeat(np.arange(n_way), n_query), (n_tasks, 1))
    support_x = rng.standard_normal((n_tasks, n_way * n_shot) + image_shape)
    query_x = rng.standard_normal((n_tasks, n_way * n_query) + image_shape)
    return checks.episode(tasks.Episode(dev.asarray(support_x), dev.asarray(support_y),
                                        dev.asarray(query_x), dev.asarray(query_y)), n_way=n_way)


def max_abs_diff(a, b, dev):
    """max |a - b| over every leaf of two trees (or arrays), as a float."""
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k], dev) for k in a)
    return float(np.max(np.abs(dev.to_host(a) - dev.to_host(b))))


def check_grad_away_from_kinks(f, x, rng, n_directions=3, rtol=1e-5, grad_fn=None):
    """Check ⟨grad_fn(x), u⟩ (default autograd's ∇f) against central differences along random
    directions, skipping any direction where the differences at ε = 1e-5 and 1e-6 disagree (a
    ReLU, max-pool or clip kink lies within reach). Returns how many directions were checked;
    the caller requires at least one."""
    gradient = (grad_fn or grad(f))(x)
    checked = 0
    for _ in range(n_directions):
        u = {k: np.asarray(rng.standard_normal(np.shape(v)), like=v) for k, v in x.items()}
        coarse, fine = (gradcheck.directional_derivative(f, x, u, eps) for eps in (1e-5, 1e-6))
        if abs(coarse - fine) > 1e-6 * max(abs(fine), 1.0):
            continue
        analytic = float(trees.vdot(gradient, u))
        assert abs(analytic - fine) <= 1e-8 + rtol * max(abs(analytic), abs(fine)), (analytic, fine)
        checked += 1
    return checked


# ----- where the tests find the Omniglot zips: the one place -----
OMNIGLOT_FILES = ("images_background_small1.zip", "images_background_small2.zip", "all_runs.zip")


def omniglot_folder():
    """The folder of the Omniglot zips: $REFMETA_OMNIGLOT_DIR, else shared/data/omniglot beside
    the repository (where CI lays it).  Missing zips fail the test under CI (CI=true), where the
    data is always there, and skip it elsewhere with the path shown by ``-ra``."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
    folder = Path(os.environ.get("REFMETA_OMNIGLOT_DIR") or default)
    missing = [name for name in OMNIGLOT_FILES if not (folder / name).is_file()]
    if missing:
        message = (f"Omniglot zips {missing} not found in {folder}: set REFMETA_OMNIGLOT_DIR or "
                   f"put them in shared/data/omniglot beside the repository")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


# ----- optional frameworks: installed by CI (.ci/run), optional elsewhere -----
def import_or_skip(module, install):
    """The imported ``module``; without it the test fails under CI (CI=true), which installs it
    (.ci/run), and is skipped elsewhere with ``install`` shown by ``-ra``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        message = f"{module} is not installed ({error}): {install}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI installs it (.ci/run), so this is a failure: {message}")
        pytest.skip(message, allow_module_level=True)


# ----- a port's mistakes made for real: the case as their code reads it -----
def write_case(folder, case_id, change, name=None):
    """<folder>/<name>.json + .npz (name: the case id): the case ``case_id`` as refmeta builds it,
    with ``change(case)`` applied to a copy of the built dict first (its header's keys, and its
    ``cases.Array`` inputs and outputs): the case a port that differs so reads."""
    from refmeta import cases
    case = copy.deepcopy(cases.build(case_id))
    change(case)
    text, npz = cases.encode(case_id, case)
    path = Path(folder) / f"{name or case_id}.json"
    path.with_suffix(".npz").write_bytes(npz)
    path.write_text(text, encoding="utf-8")
    return path


def torch_outputs(case_path, compute, change=None, float32=False):
    """{output name: array in the case's layout}: ``compute(torch, fixture)`` (an algorithm of
    demos/check_with_torch.py, or any torch code on a ``refmeta.cases.torch`` fixture) run on
    the fixture of the case at ``case_path`` as ``change`` leaves it (``write_case``: their
    network, conventions or step sizes; None: the case itself), in float32 when asked (their
    tensors and modules cast, the outputs cast back to save them).  Only the case's output names
    are kept, as a user saves them."""
    import torch
    torch.set_default_dtype(torch.float64)                   # the fixtures load in float64
    from refmeta.cases import torch as fixtures
    case_path = Path(case_path)
    with tempfile.TemporaryDirectory() as folder:
        fixture = fixtures.load(write_case(folder, case_path.stem, change) if change else case_path)
    if float32:
        fixture.params = {k: v.float() for k, v in fixture.params.items()}
        fixture.inputs = {k: v.float() if v.is_floating_point() else v for k, v in fixture.inputs.items()}
        for module in fixture.networks.values():
            module.float()
    names = json.loads(case_path.read_text(encoding="utf-8"))["outputs"]
    outputs = compute(torch, fixture)
    return fixtures.to_case_layout(fixture, {k: v.double() for k, v in outputs.items() if k in names})
