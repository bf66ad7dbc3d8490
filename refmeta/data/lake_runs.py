"""Lake et al.'s 20 official 20-way one-shot runs, scored by the authors' protocol.

Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through probabilistic
program induction", Science 350:1332.  ``all_runs.zip`` and the protocol come from the authors'
repository brendenlake/omniglot (``demo_classification.m`` / ``.py``).

all_runs.zip holds runNN/training/classMM.png (one drawing per class), runNN/test/itemMM.png,
and runNN/class_labels.txt, whose lines "runNN/test/itemMM.png runNN/training/classKK.png" name
each test item's true class.  Twenty runs, each 20 classes from one evaluation alphabet.

Protocol, per run r, with training and test images in sorted file order:
    C      (n_test, n_train) matrix of costs (small = similar) or scores (large = similar)
    ŷ_i    argmin_j C_ij for costs, argmax_j for scores (the first index on ties, as the demo)
    err_r  100 · #{i : ŷ_i ≠ y_i} / n_test            % error, a multiple of 5 for 20 items
           (``percent_error``; ŷ and y are integer class indices in 0..n_train−1)
    error  mean_r err_r                                a multiple of 0.25 over 20 runs

Modified Hausdorff distance (Dubuisson & Jain 1994), as in the demo: on the (row, column)
coordinates of the ink pixels of the *original* 105×105 images, each set centred on its mean,
    d(a, B)   = min_{b ∈ B} ‖a − b‖₂
    MHD(A, B) = max( mean_{a ∈ A} d(a, B), mean_{b ∈ B} d(b, A) )
``modified_hausdorff_distance`` is the definition on scipy's cdist; ``mhd_matrix`` finds the same
nearest-point distances with k-d trees, several times faster (the tests check they agree).

Measured with this protocol: MHD 38.75% error (the README's 38.8%), nearest neighbour on raw
pixels (Euclidean) 81.0%.  With 400 test items an error rate is good to about ±3%.
"""

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from refmeta import checks
from refmeta.device import backend
from refmeta.data.omniglot import member_image, open_zip

METRICS = ("sqeuclidean", "euclidean", "cosine", "cityblock", "chebyshev", "correlation",
           "braycurtis", "canberra")   # scipy cdist's metrics for real vectors, with no parameter
EXPECTED = "Lake's all_runs.zip: runNN/class_labels.txt, runNN/training/*.png, runNN/test/*.png"


class LakeRun(NamedTuple):
    name: str                 # "run01"
    train_images: np.ndarray  # (n_train, H, W) float64, ink = 1, sorted file order
    test_images: np.ndarray   # (n_test, H, W)
    labels: np.ndarray        # (n_test,) int: index into train_images of each test item's class


class RunErrors(NamedTuple):
    per_run: np.ndarray  # (n_runs,) % error of each run
    mean: float          # % error, the mean over runs


def _load_run(members, label_file, path, image_size):
    run = label_file.split("/")[0]
    train = sorted(n for n in members if n.startswith(f"{run}/training/") and n.endswith(".png"))
    test = sorted(n for n in members if n.startswith(f"{run}/test/") and n.endswith(".png"))
    pairs = [line.split() for line in members[label_file].decode("utf-8", "replace").splitlines()
             if line.strip()]
    answers = dict(pair for pair in pairs if len(pair) == 2)
    if len(answers) != len(pairs) or sorted(answers) != test or not set(answers.values()) <= set(train) \
            or not train:
        raise ValueError(f"{path}: {label_file} must map each of the {len(test)} test images of {run} "
                         f"to one of its {len(train)} training images, one 'test train' pair a line")
    train_images, test_images = (np.stack([member_image(members, n, path, image_size) for n in names])
                                 for names in (train, test))
    return LakeRun(run, train_images, test_images, np.array([train.index(answers[n]) for n in test]))


def load_lake_runs(zip_path, image_size=None):
    """Every run in all_runs.zip, in run order.

    Args:
        image_size: None for the original 105×105 binary images (what MHD and the demo use);
            an int for the BOX resize of ``refmeta.data.omniglot`` (what a model trained on it needs).
    Returns:
        tuple of LakeRun; images float64 with ink = 1.
    """
    if image_size is not None:
        checks.integer("image_size", image_size, minimum=1)
    members = open_zip(zip_path, EXPECTED)
    label_files = sorted(n for n in members if n.count("/") == 1 and n.endswith("/class_labels.txt"))
    if not label_files:
        raise ValueError(f"{zip_path}: no runNN/class_labels.txt found; expected {EXPECTED}")
    return tuple(_load_run(members, f, zip_path, image_size) for f in label_files)


def evaluate_runs(runs, score, kind="cost"):
    """Lake's protocol: every test item predicts its most similar training image.

    Args:
        score: ``score(test_images (n_test, H, W), train_images (n_train, H, W))`` ->
            (n_test, n_train) matrix, on the host or the current backend.
        kind: "cost" (argmin, distances) or "score" (argmax, similarities).
    Returns:
        RunErrors(per_run (n_runs,) % error, mean % error).
    """
    if kind not in ("cost", "score"):
        raise ValueError(f"kind must be 'cost' (argmin) or 'score' (argmax); got {kind!r}")
    if len(runs) == 0:
        raise ValueError("runs is empty; load them with load_lake_runs")
    errors = []
    for run in runs:
        expected = (len(run.test_images), len(run.train_images))
        checks.labels(f"{run.name} labels", run.labels, expected[1], shape=expected[:1])
        matrix = np.asarray(backend.to_host(score(run.test_images, run.train_images)), dtype=np.float64)
        if matrix.shape != expected:
            raise ValueError(f"{run.name}: score must return (n_test, n_train) = {expected}; "
                             f"got {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{run.name}: score returned NaN or inf")
        predictions = matrix.argmin(axis=1) if kind == "cost" else matrix.argmax(axis=1)
        errors.append(percent_error(predictions, run.labels, expected[1]))
    per_run = np.array(errors)
    return RunErrors(per_run, float(per_run.mean()))


def percent_error(predicted, labels, n_train):
    """err = 100 · #{i : ŷ_i ≠ y_i} / n_test for predicted ŷ (n_test,) and true y (n_test,),
    both integer class indices in 0..n_train−1."""
    predicted = checks.labels("predicted", predicted, n_train)
    labels = checks.labels("labels", labels, n_train, shape=np.shape(predicted))
    if predicted.ndim != 1 or predicted.size == 0:
        raise ValueError(f"predicted must be (n_test,) with n_test >= 1; got shape {predicted.shape}")
    return 100.0 * np.count_nonzero(predicted != labels) / predicted.size


def ink_points(image):
    """(H, W) ink image -> (n_ink, 2) (row, column) coordinates of pixels with ink > ½, centred."""
    points = np.argwhere(np.asarray(image) > 0.5).astype(np.float64)
    if len(points) == 0:
        raise ValueError(f"image {np.shape(image)} has no ink pixels (ink > 0.5); MHD needs at least one")
    return points - points.mean(axis=0)


def modified_hausdorff_distance(points_a, points_b):
    """MHD(A, B) of two point sets (n_a, 2) and (n_b, 2), n_a, n_b >= 1, by the definition."""
    for name, points in (("points_a", points_a), ("points_b", points_b)):
        checks.finite(name, points)
        if np.ndim(points) != 2 or np.shape(points)[1] != 2 or len(points) == 0:
            raise ValueError(f"{name} must be a set of (row, column) points, shape (n, 2) with "
                             f"n >= 1; got {np.shape(points)}")
    distances = cdist(points_a, points_b)  # (n_a, n_b)
    return max(distances.min(axis=1).mean(), distances.min(axis=0).mean())


def _mean_nearest(tree, point_sets):
    """For each point set: the mean over its points of the distance to the nearest point of ``tree``."""
    distances = tree.query(np.concatenate(point_sets))[0]
    return [part.mean() for part in np.split(distances, np.cumsum([len(p) for p in point_sets])[:-1])]


def mhd_matrix(test_images, train_images):
    """(n_test, n_train) MHD between the ink points of every test and training image (a cost)."""
    test = [ink_points(image) for image in test_images]
    train = [ink_points(image) for image in train_images]
    test_to_train = np.array([_mean_nearest(cKDTree(b), test) for b in train]).T  # mean_a d(a, B)
    train_to_test = np.array([_mean_nearest(cKDTree(a), train) for a in test])    # mean_b d(b, A)
    return np.maximum(test_to_train, train_to_test)


def pixel_distance_matrix(test_images, train_images):
    """(n_test, n_train) Euclidean distance between raw pixel vectors (a cost)."""
    return cdist(np.reshape(test_images, (len(test_images), -1)),
                 np.reshape(train_images, (len(train_images), -1)))


def embedding_distance(embed, metric="sqeuclidean"):
    """A cost for ``evaluate_runs`` from an embedding: ``cdist(embed(test), embed(train), metric)``.

    Args:
        embed: images (n, 1, H, W) on the current backend -> features (n, d).  Lake's images
            are 105×105: load the runs with the ``image_size`` the embedding was trained on.
        metric: "sqeuclidean" (Prototypical Networks), "cosine", or another of ``METRICS``.
    """
    checks.function("embed", embed)
    checks.choice("metric", metric, METRICS)

    def cost(test_images, train_images):
        test, train = (backend.to_host(embed(backend.asarray(images[:, None])))
                       for images in (test_images, train_images))
        return cdist(np.asarray(test, dtype=np.float64), np.asarray(train, dtype=np.float64), metric)
    return cost
