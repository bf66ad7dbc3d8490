"""The Omniglot pipeline (refmeta.data.omniglot) and Lake's one-shot runs (refmeta.data.lake_runs).

The real zips are read from ``shared/data/omniglot`` beside the repository; tests that need them
skip, with the path shown by ``-ra``, where they are absent.  Error cases use tiny zips built here.
"""

import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import omniglot_folder
from refmeta.data import lake_runs, omniglot
from refmeta.data.omniglot import Characters



def data_file(name):
    return omniglot_folder() / name


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def small1(cache_dir):
    return omniglot.load_characters(data_file("images_background_small1.zip"), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def small2(cache_dir):
    return omniglot.load_characters(data_file("images_background_small2.zip"), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def runs():
    return lake_runs.load_lake_runs(data_file("all_runs.zip"))


def png(ink):
    """A bool ink array -> PNG bytes in Omniglot's convention (mode "1", 0 = ink)."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(~np.asarray(ink, dtype=bool)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def tiny_members(seed=0, n_drawings=4, side=105):
    rng = np.random.default_rng(seed)
    names = [f"images_tiny/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"
             for alphabet in ("Alpha", "Beta") for c in (1, 2, 3) for d in range(1, n_drawings + 1)]
    return {name: png(rng.random((side, side)) < 0.2) for name in names}


def area_matrix(n_in, n_out):
    """The docstring's A: A[i, j] = 1/|P_i| for source pixels j whose centre lies in output pixel i."""
    ratio, centres = n_in / n_out, np.arange(n_in) + 0.5
    rows = np.arange(n_out)[:, None]
    inside = (centres > rows * ratio) & (centres <= (rows + 1) * ratio)
    return inside / inside.sum(axis=1, keepdims=True)


# ----- reading -----
def test_images_have_the_documented_shape_range_and_ink_convention(small1):
    assert small1.images.shape == (136, 20, 28, 28) and small1.images.dtype == np.float64
    assert small1.images.min() == 0.0 and small1.images.max() == 1.0
    assert small1.images.mean() < 0.2  # ink = 1 is the minority; the files store it as 0
    assert small1.names[0] == ("Balinese", "character01") and list(small1.names) == sorted(small1.names)
    assert set(small1.rotations) == {0}
    with zipfile.ZipFile(data_file("images_background_small1.zip")) as archive:
        raw = archive.read("images_background_small1/Balinese/character01/0108_01.png")
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(raw)))  # (105, 105) bool, False = ink
    np.testing.assert_array_equal(omniglot.ink_image(raw), 1.0 - pixels)


@pytest.mark.parametrize("image_size", [28, 32, 20, 7])
def test_box_resize_is_the_documented_average(image_size):
    ink = np.random.default_rng(image_size).random((105, 105))
    a = area_matrix(105, image_size)
    np.testing.assert_allclose(omniglot.resize_ink(ink, image_size), a @ ink @ a.T, atol=1e-6)  # float32


def test_cache_hit_is_identical_and_decodes_nothing(small1, cache_dir, monkeypatch):
    monkeypatch.setattr(omniglot, "ink_image", lambda data: pytest.fail("cache hit decoded a PNG"))
    again = omniglot.load_characters(data_file("images_background_small1.zip"), cache_dir=cache_dir)
    np.testing.assert_array_equal(again.images, small1.images)
    assert again.images.dtype == np.float64 and again.names == small1.names


def test_cache_is_keyed_by_zip_content_and_image_size(tmp_path):
    path, cache = write_zip(tmp_path / "tiny.zip", tiny_members(seed=0)), tmp_path / "cache"
    first = omniglot.load_characters(path, image_size=7, cache_dir=cache)
    omniglot.load_characters(path, image_size=3, cache_dir=cache)
    assert len(os.listdir(cache)) == 2
    write_zip(path, tiny_members(seed=1))
    changed = omniglot.load_characters(path, image_size=7, cache_dir=cache)
    assert len(os.listdir(cache)) == 3 and not np.array_equal(changed.images, first.images)
    np.testing.assert_array_equal(changed.images, omniglot.load_characters(path, image_size=7).images)


def test_an_interrupted_cache_write_leaves_no_file(tmp_path, monkeypatch):
    path, cache = write_zip(tmp_path / "tiny.zip", tiny_members()), tmp_path / "cache"

    def savez_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half an npz")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", savez_then_fail)
        with pytest.raises(KeyboardInterrupt):
            omniglot.load_characters(path, image_size=7, cache_dir=cache)
    assert os.listdir(cache) == []
    omniglot.load_characters(path, image_size=7, cache_dir=cache)
    assert [p.suffix for p in cache.iterdir()] == [".npz"]


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _absurd_images_header(arrays):
    """The cache NPZ with images.npy replaced by a header declaring 10⁶×10⁶×7×7 float32, and 8 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (10**6, 10**6, 7, 7)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            if name != "images":
                archive.writestr(name + ".npy", _npy_bytes(array))
        archive.writestr("images.npy", header.getvalue() + bytes(8))
    return buffer.getvalue()


def _edited(arrays, **changes):
    return _npz_bytes({**arrays, **changes})


# Each builds wrong cache bytes from the right cache's arrays; every one keeps the zip's SHA-256
# and the version, so only the checks of the contents can catch it.
WRONG_CACHES = {
    "empty file": lambda a, raw: b"",
    "truncated file": lambda a, raw: raw[: len(raw) // 2],
    "garbage": lambda a, raw: b"garbage",
    "a .npy, not an NPZ": lambda a, raw: _npy_bytes(a["images"]),
    "float64 images": lambda a, raw: _edited(a, images=a["images"].astype(np.float64)),
    "images of another size": lambda a, raw: _edited(a, images=a["images"][..., :6, :6]),
    "a drawing missing": lambda a, raw: _edited(a, images=a["images"][:, 1:]),
    "a class missing": lambda a, raw: _edited(a, images=a["images"][1:], alphabets=a["alphabets"][1:],
                                              characters=a["characters"][1:]),
    "another class's name": lambda a, raw: _edited(a, characters=np.array(["x"] * len(a["characters"]))),
    "values above 1": lambda a, raw: _edited(a, images=a["images"] * 2 + 0.5),
    "negative values": lambda a, raw: _edited(a, images=a["images"] - 0.5),
    "NaN": lambda a, raw: _edited(a, images=np.where(a["images"] > 0, np.float32(np.nan), a["images"])),
    "an absurd images header": lambda a, raw: _absurd_images_header(a),
}


@pytest.mark.parametrize("wrong", list(WRONG_CACHES))
def test_a_wrong_cache_is_rebuilt_not_trusted_for_its_sha(tmp_path, wrong):
    path, cache = write_zip(tmp_path / "tiny.zip", tiny_members()), tmp_path / "cache"
    expected = omniglot.load_characters(path, image_size=7, cache_dir=cache)
    (cache_file,) = cache.iterdir()
    raw = cache_file.read_bytes()
    with np.load(cache_file) as data:
        arrays = {key: data[key] for key in data.files}
    cache_file.write_bytes(WRONG_CACHES[wrong](arrays, raw))
    again = omniglot.load_characters(path, image_size=7, cache_dir=cache)
    np.testing.assert_array_equal(again.images, expected.images)
    assert again.names == expected.names
    assert cache_file.read_bytes() == raw and os.listdir(cache) == [cache_file.name]  # rebuilt whole


def _truncated(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize("case, error, message", [
    ("missing", FileNotFoundError, "no such file"),
    ("not a zip", ValueError, "not a readable zip"),
    ("truncated", ValueError, "not a readable zip"),
    ("flat layout", ValueError, "<set>/<Alphabet>/<character>"),
    ("empty zip", ValueError, "holds none"),
    ("ragged drawings", ValueError, "same number of drawings"),
    ("bad png", ValueError, "not a readable PNG"),
    ("drawing of another size", ValueError,
     r"member 'images_tiny/Alpha/character01/0001_01.png' is 21×21 pixels; Omniglot drawings are 105×105"),
])
def test_bad_zips_raise_naming_the_path_and_leave_no_cache(tmp_path, case, error, message):
    path, cache, members = tmp_path / "bad.zip", tmp_path / "cache", tiny_members()
    if case == "not a zip":
        path.write_text("hello")
    elif case == "truncated":
        path.write_bytes(_truncated(members))
    elif case == "flat layout":
        write_zip(path, {f"Alpha/{Path(name).name}": data for name, data in members.items()})
    elif case == "empty zip":
        write_zip(path, {})
    elif case == "ragged drawings":
        write_zip(path, dict(list(members.items())[:-1]))
    elif case == "bad png":
        write_zip(path, {**members, "images_tiny/Alpha/character01/0001_01.png": b"not a png"})
    elif case == "drawing of another size":
        small = png(np.eye(21, dtype=bool))
        write_zip(path, {**members, "images_tiny/Alpha/character01/0001_01.png": small})
    with pytest.raises(error, match=message) as raised:
        omniglot.load_characters(path, image_size=7, cache_dir=cache)
    assert str(path) in str(raised.value)
    assert not cache.exists() or os.listdir(cache) == []


def test_a_missing_pillow_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'refmeta\[omniglot\]'"):
        omniglot.ink_image(b"")


# ----- merging, splitting, rotating -----
def _png_hashes(zip_name, alphabets):
    """{(alphabet, character): sha256 over its drawings' PNG bytes}, straight from the zip."""
    hashes = {}
    with zipfile.ZipFile(data_file(zip_name)) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if name.endswith(".png") and parts[1] in alphabets:
                hashes.setdefault((parts[1], parts[2]), hashlib.sha256()).update(archive.read(name))
    return {key: digest.hexdigest() for key, digest in hashes.items()}


def test_the_small_sets_share_greek_and_latin_and_merge_deduplicates(small1, small2):
    assert (len(small1.names), len(small2.names)) == (136, 156)
    shared = set(small1.names) & set(small2.names)
    assert {alphabet for alphabet, _ in shared} == {"Greek", "Latin"} and len(shared) == 24 + 26
    hashes = [_png_hashes(z, {"Greek", "Latin"}) for z in ("images_background_small1.zip",
                                                            "images_background_small2.zip")]
    assert hashes[0] == hashes[1] and set(hashes[0]) == shared  # same drawings, byte for byte
    merged = omniglot.merge_characters(small1, small2)
    assert len(merged.names) == 136 + 156 - 50 == len(set(merged.names))
    np.testing.assert_array_equal(merged.images[merged.names.index(("Greek", "character01"))],
                                  small2.images[small2.names.index(("Greek", "character01"))])


def test_merge_refuses_a_name_with_different_drawings():
    images = np.zeros((1, 2, 3, 3))
    first = Characters(images, (("A", "c1"),), (0,))
    itself = omniglot.merge_characters(first, first)
    assert itself.names == first.names and np.array_equal(itself.images, first.images)
    with pytest.raises(ValueError, match="different drawings"):
        omniglot.merge_characters(first, Characters(images + 1, (("A", "c1"),), (0,)))


def test_split_is_deterministic_disjoint_and_sized_by_character(small1):
    parts = omniglot.split_characters(small1, np.random.default_rng(3), (0.6, 0.2, 0.2))
    again = omniglot.split_characters(small1, np.random.default_rng(3), (0.6, 0.2, 0.2))
    other = omniglot.split_characters(small1, np.random.default_rng(4), (0.6, 0.2, 0.2))
    assert [p.names for p in parts] == [p.names for p in again] != [p.names for p in other]
    assert [len(p.names) for p in parts] == [82, 27, 27]  # round(0.6·136)=82, round(0.8·136)=109
    names = [set(p.names) for p in parts]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert names[0] | names[1] | names[2] == set(small1.names)
    for part in parts:
        for name, images in zip(part.names, part.images):
            np.testing.assert_array_equal(images, small1.images[small1.names.index(name)])


@pytest.mark.parametrize("fractions", [(0.5, 0.4), (1.2, -0.2), (np.nan, 1.0)])
def test_split_refuses_fractions_that_do_not_sum_to_one(small1, fractions):
    with pytest.raises(ValueError, match="sum to 1"):
        omniglot.split_characters(small1, np.random.default_rng(0), fractions)


def test_rotations_are_new_classes_made_after_the_split(small1):
    train, test = omniglot.split_characters(small1, np.random.default_rng(0), (0.8, 0.2))
    rotated = omniglot.with_rotations(train)
    n = len(train.names)
    assert rotated.images.shape == (4 * n, 20, 28, 28) and rotated.rotations[n] == 90
    for r, degrees in enumerate(omniglot.ROTATIONS):
        for c in (0, n - 1):
            expected = np.rot90(train.images[c], degrees // 90, axes=(1, 2))
            np.testing.assert_array_equal(rotated.images[r * n + c], expected)
            assert rotated.names[r * n + c] == train.names[c] and rotated.rotations[r * n + c] == degrees
    assert not set(rotated.names) & set(test.names)
    with pytest.raises(ValueError, match="before adding rotations"):
        omniglot.split_characters(rotated, np.random.default_rng(0))
    for bad in [(), (0, 0), (45,)]:
        with pytest.raises(ValueError, match="rotations must be distinct degrees"):
            omniglot.with_rotations(train, bad)
    assert len(omniglot.with_rotations(train, (0, 180)).names) == 2 * n


def test_user_arrays_with_nan_are_refused():
    images = np.zeros((4, 3, 2, 2))
    images[1, 2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        omniglot.split_characters(Characters(images, (("A", "c"),) * 4, (0,) * 4),
                                  np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        omniglot.sample_episode(np.random.default_rng(0), np.full((2, 3, 2, 2), np.nan), 2, 1, 1)


# ----- episodes -----
def coded_images(n_classes=7, n_examples=6):
    """images[c, e] filled with c + e/100, so every sampled image says where it came from."""
    codes = np.arange(n_classes)[:, None] + np.arange(n_examples)[None, :] / 100
    return np.broadcast_to(codes[:, :, None, None], (n_classes, n_examples, 3, 3)).copy()


def _sources(x):
    code = x[..., 0, 0, 0]  # (n,)
    return np.rint(np.floor(code)).astype(int), np.rint(100 * (code - np.floor(code))).astype(int)


def test_episode_shapes_labels_and_distinct_examples():
    episode = omniglot.sample_episode(np.random.default_rng(0), coded_images(), 5, 2, 3)
    assert episode.support_x.shape == (10, 1, 3, 3) and episode.query_x.shape == (15, 1, 3, 3)
    np.testing.assert_array_equal(episode.support_y, np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(episode.query_y, np.repeat(np.arange(5), 3))
    s_class, s_example = _sources(episode.support_x)
    q_class, q_example = _sources(episode.query_x)
    classes = s_class[::2]
    assert len(set(classes)) == 5
    for label in range(5):
        support, query = episode.support_y == label, episode.query_y == label
        assert set(s_class[support]) == set(q_class[query]) == {classes[label]}
        assert len(set(s_example[support]) | set(q_example[query])) == 5  # K + Q distinct drawings


def test_episodes_are_determined_by_the_generator():
    images = coded_images()
    first, again, other = (omniglot.sample_episode(np.random.default_rng(seed), images, 4, 1, 2)
                           for seed in (1, 1, 2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first.support_x, other.support_x)


def test_a_batch_of_episodes_has_a_leading_task_axis():
    batch = omniglot.sample_episodes(np.random.default_rng(0), coded_images(), 6, 3, 2, 1)
    assert batch.support_x.shape == (6, 6, 1, 3, 3) and batch.support_y.shape == (6, 6)
    assert batch.query_x.shape == (6, 3, 1, 3, 3) and batch.query_y.shape == (6, 3)
    np.testing.assert_array_equal(batch.support_y, np.tile(np.repeat(np.arange(3), 2), (6, 1)))
    assert len({tuple(_sources(task)[0]) for task in batch.support_x}) > 1  # tasks differ


def test_episodes_come_in_float64_or_float32_and_nothing_else():
    images = coded_images()
    wide, narrow = (omniglot.sample_episode(np.random.default_rng(3), images, 3, 1, 2, dtype=d)
                    for d in (np.float64, "float32"))
    assert wide.support_x.dtype == np.float64 and narrow.query_x.dtype == np.float32
    assert narrow.support_y.dtype == wide.support_y.dtype and np.issubdtype(narrow.query_y.dtype, np.integer)
    np.testing.assert_array_equal(narrow.support_x, wide.support_x.astype(np.float32))
    batch = omniglot.sample_episodes(np.random.default_rng(3), images, 2, 3, 1, 1, dtype=np.float32)
    assert batch.support_x.dtype == np.float32
    with pytest.raises(ValueError, match="dtype must be float32 or float64; got 'float16'"):
        omniglot.sample_episode(np.random.default_rng(3), images, 3, 1, 2, dtype="float16")


def test_zero_queries_are_refused_as_an_empty_query_set():
    with pytest.raises(ValueError, match="n_query must be an integer >= 1; got 0"):
        omniglot.sample_episode(np.random.default_rng(0), coded_images(), 3, 2, 0)


@pytest.mark.parametrize("n_way, k_shot, n_query, message", [
    (8, 1, 1, "a 8-way episode needs 8 classes; the images hold 7"),
    (5, 5, 2, "a 5-way 5-shot 2-query episode needs 7 examples per class; the classes have 6 < 7"),
    (1, 1, 1, "n_way must be an integer >= 2; got 1"),
    (3, 0, 1, "k_shot must be an integer >= 1; got 0"),
    (3, 1, -1, "n_query must be an integer >= 1; got -1"),
    (3.0, 1, 1, "n_way must be an integer"),
])
def test_impossible_episodes_are_refused(n_way, k_shot, n_query, message):
    with pytest.raises((ValueError, TypeError), match=message):  # TypeError: 3.0 is no integer
        omniglot.sample_episode(np.random.default_rng(0), coded_images(), n_way, k_shot, n_query)


def test_episode_arguments_are_checked_for_batches_too():
    with pytest.raises(ValueError, match="n_tasks must be an integer >= 1; got 0"):
        omniglot.sample_episodes(np.random.default_rng(0), coded_images(), 0, 2, 1, 1)
    with pytest.raises(ValueError, match=r"images must be \(n_classes, n_examples, H, W\)"):
        omniglot.sample_episode(np.random.default_rng(0), np.zeros((7, 6, 9)), 2, 1, 1)


def test_a_20_way_5_shot_15_query_episode_of_real_characters(small1):
    episode = omniglot.sample_episode(np.random.default_rng(0), small1.images, 20, 5, 15)
    assert episode.support_x.shape == (100, 1, 28, 28) and episode.query_x.shape == (300, 1, 28, 28)
    with pytest.raises(ValueError, match="needs 21 examples per class; the classes have 20 < 21"):
        omniglot.sample_episode(np.random.default_rng(0), small1.images, 20, 5, 16)


# ----- Lake's one-shot runs -----
def test_the_runs_are_twenty_runs_of_twenty_binary_images(runs):
    assert [run.name for run in runs] == [f"run{r:02d}" for r in range(1, 21)]
    with zipfile.ZipFile(data_file("all_runs.zip")) as archive:
        for run in runs:
            assert run.train_images.shape == run.test_images.shape == (20, 105, 105)
            assert set(np.unique(run.train_images)) == set(np.unique(run.test_images)) == {0.0, 1.0}
            assert sorted(run.labels) == list(range(20))  # one test item per class
            lines = archive.read(f"{run.name}/class_labels.txt").decode().split("\n")
            truth = dict(line.split() for line in lines if line.strip())
            for i, label in enumerate(run.labels):
                answer = truth[f"{run.name}/test/item{i + 1:02d}.png"]
                assert answer == f"{run.name}/training/class{label + 1:02d}.png"


def test_modified_hausdorff_distance_by_hand():
    a, b = np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 3.0]])
    assert lake_runs.modified_hausdorff_distance(a, b) == 1.5  # max(0, (0 + 3) / 2)
    image = np.zeros((5, 5))
    image[1, 1] = image[1, 3] = 1
    np.testing.assert_array_equal(lake_runs.ink_points(image), [[0.0, -1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="no ink"):
        lake_runs.ink_points(np.zeros((5, 5)))


def test_the_fast_mhd_matrix_equals_the_definition(runs):
    run = runs[0]
    fast = lake_runs.mhd_matrix(run.test_images[:4], run.train_images)
    points = lake_runs.ink_points
    by_definition = [[lake_runs.modified_hausdorff_distance(points(a), points(b)) for b in run.train_images]
                     for a in run.test_images[:4]]
    np.testing.assert_allclose(fast, by_definition, rtol=1e-13, atol=0)


def test_mhd_reproduces_lakes_38_8_percent(runs):
    errors = lake_runs.evaluate_runs(runs, lake_runs.mhd_matrix)
    assert errors.mean == 38.75  # 155 of 400 wrong; the README rounds to 38.8
    np.testing.assert_array_equal(errors.per_run, [45, 35, 40, 25, 30, 15, 60, 35, 40, 55,
                                                   15, 70, 65, 35, 15, 25, 30, 40, 70, 30])


def test_raw_pixel_nearest_neighbour_reproduces_81_percent(runs):
    assert lake_runs.evaluate_runs(runs, lake_runs.pixel_distance_matrix).mean == 81.0
    negated = lambda test, train: -lake_runs.pixel_distance_matrix(test, train)
    assert lake_runs.evaluate_runs(runs, negated, kind="score").mean == 81.0


def test_the_protocol_scores_an_oracle_and_checks_its_inputs(runs):
    oracle = {id(run.test_images): np.eye(20)[run.labels] for run in runs}
    perfect = lake_runs.evaluate_runs(runs, lambda test, train: oracle[id(test)], kind="score")
    assert perfect.mean == 0.0 and perfect.per_run.shape == (20,)
    constant = lake_runs.evaluate_runs(runs[:2], lambda test, train: np.zeros((20, 20)))
    assert constant.per_run.tolist() == [95.0, 95.0]  # ties go to class 0: right once per run
    with pytest.raises(ValueError, match=r"\(n_test, n_train\) = \(20, 20\); got \(20, 19\)"):
        lake_runs.evaluate_runs(runs, lambda test, train: np.zeros((20, 19)))
    with pytest.raises(ValueError, match="NaN"):
        lake_runs.evaluate_runs(runs, lambda test, train: np.full((20, 20), np.nan))
    with pytest.raises(ValueError, match="kind must be"):
        lake_runs.evaluate_runs(runs, lake_runs.pixel_distance_matrix, kind="distance")


def test_an_identity_embedding_is_pixel_nearest_neighbour():
    runs28 = lake_runs.load_lake_runs(data_file("all_runs.zip"), image_size=28)
    assert runs28[0].test_images.shape == (20, 28, 28)
    identity = lake_runs.embedding_distance(lambda x: x.reshape(len(x), -1))
    by_embedding = lake_runs.evaluate_runs(runs28, identity)
    by_pixels = lake_runs.evaluate_runs(runs28, lake_runs.pixel_distance_matrix)
    np.testing.assert_array_equal(by_embedding.per_run, by_pixels.per_run)


@pytest.mark.parametrize("case", ["no labels", "label names a missing image", "not a zip", "missing",
                                  "empty file", "truncated", "a folder", "drawing of another size"])
def test_bad_runs_zips_raise_naming_the_path(tmp_path, case):
    path = tmp_path / "runs.zip"
    image = png(np.eye(105, dtype=bool))
    members = {"run01/training/class01.png": image, "run01/training/class02.png": image,
               "run01/test/item01.png": image,
               "run01/class_labels.txt": b"run01/test/item01.png run01/training/class02.png\n"}
    assert lake_runs.load_lake_runs(write_zip(path, members))[0].labels.tolist() == [1]
    if case == "no labels":
        write_zip(path, {k: v for k, v in members.items() if not k.endswith(".txt")})
    elif case == "label names a missing image":
        wrong = b"run01/test/item01.png run01/training/class09.png"
        write_zip(path, {**members, "run01/class_labels.txt": wrong})
    elif case == "not a zip":
        path.write_bytes(b"nope")
    elif case == "missing":
        path.unlink()
    elif case == "empty file":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "a folder":
        path.unlink()
        path.mkdir()
    else:
        write_zip(path, {**members, "run01/test/item01.png": png(np.eye(28, dtype=bool))})
    error, message = {"no labels": (ValueError, "no runNN/class_labels.txt found"),
                      "label names a missing image": (ValueError, "must map each of the 1 test images"),
                      "missing": (FileNotFoundError, "no such file; expected Lake's all_runs.zip"),
                      "a folder": (FileNotFoundError, "not a file; expected Lake's all_runs.zip"),
                      "drawing of another size": (ValueError, "'run01/test/item01.png' is 28×28 pixels"),
                      }.get(case, (ValueError, "not a readable zip"))
    with pytest.raises(error, match=message) as raised:
        lake_runs.load_lake_runs(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("predicted, labels, error, message", [
    (np.array([0, 2, 20]), np.array([0, 1, 2]), ValueError, r"predicted: labels must be in 0..19 .* to 20"),
    (np.array([0, -1, 2]), np.array([0, 1, 2]), ValueError, r"predicted: labels must be in 0..19"),
    (np.array([0, 1, 2]), np.array([0, 1, 25]), ValueError, r"labels: labels must be in 0..19"),
    (np.array([0.0, 1.0, 2.0]), np.array([0, 1, 2]), TypeError, "predicted: class labels must be integers"),
    (np.array([0, 1, 2]), np.array([0.5, 1, 2]), TypeError, "labels: class labels must be integers"),
    (np.array([0, 1, 2]), np.array([0, 1]), ValueError, r"labels must have shape \(3,\); got \(2,\)"),
    (np.zeros(0, int), np.zeros(0, int), ValueError, r"n_test >= 1; got shape \(0,\)"),
])
def test_percent_error_refuses_labels_out_of_range_or_not_integers(predicted, labels, error, message):
    assert lake_runs.percent_error(np.array([0, 1, 3, 3]), np.array([0, 1, 2, 3]), 20) == 25.0
    with pytest.raises(error, match=message):
        lake_runs.percent_error(predicted, labels, 20)


def test_the_protocol_refuses_runs_whose_true_labels_are_wrong():
    images = np.zeros((3, 4, 4))
    score = lambda test, train: np.zeros((len(test), len(train)))
    for labels, error, message in ((np.array([0, 1, 3]), ValueError, r"run01 labels: labels must be in 0..2"),
                                   (np.array([0.0, 1.0, 2.0]), TypeError, "run01 labels: class labels must be integers"),
                                   (np.array([0, 1]), ValueError, r"run01 labels must have shape \(3,\)")):
        with pytest.raises(error, match=message):
            lake_runs.evaluate_runs([lake_runs.LakeRun("run01", images, images, labels)], score)
    with pytest.raises(ValueError, match="runs is empty"):
        lake_runs.evaluate_runs((), score)
