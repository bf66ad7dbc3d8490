"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, Science 350:1332), read from the published zips.

Pipeline, every step a pure function:

    load_characters(zip)  -> Characters          one zip, cached as NPZ keyed by the zip's SHA-256
    merge_characters(a, b) -> Characters         union, de-duplicated by (alphabet, character)
    split_characters(c, rng, fractions)          disjoint by character, seeded
    with_rotations(c, (0, 90, 180, 270))         rotated copies as new classes, *after* splitting
    sample_episode(rng, c.images, n_way, k_shot, n_query) -> tasks.Episode

Zip layout (images_background.zip, images_evaluation.zip, images_background_small{1,2}.zip):
``<set>/<Alphabet>/<characterNN>/<id>_<drawer>.png``, 105×105 PNGs, pixel 1 = background,
0 = ink.  Every character must have the same number of drawings (20 in the published sets);
a drawing of another size is an error naming it, never resized to fit.

The cache is checked whole when it is read, and rebuilt (atomically) unless it holds exactly
what the zip gives: the zip's SHA-256 and ``PREPROCESS_VERSION``, the zip's classes by name,
images float32 (n_classes, n_drawings, s, s) by the header (before the data is read), and
every value finite in [0, 1].  An empty, truncated or foreign file is rebuilt too.

Preprocessing (``PREPROCESS_VERSION``; a change of it, or of ``image_size``, is a new cache key):

    ink = 1 − pixel                  ink = 1, background = 0
    x   = A · ink · Aᵀ               Pillow's BOX resize of the float ("F") ink image to s × s
    A[i, j] = 1/|P_i| if j ∈ P_i     P_i = {j : i·r < j + ½ ≤ (i+1)·r},  r = H / s  (H = 105)

that is, each output pixel averages the source pixels whose centres fall inside it: an
antialiased (box-filtered) image in [0, 1].  LANCZOS, MAML's choice, rings outside [0, 1].
Pillow computes in float32; the cache stores float32 and every function returns float64.
Lake's one-shot runs and their protocol are in ``refmeta.data.lake_runs``.

``Characters(images, names, rotations)``:
    images     (n_classes, n_drawings, s, s) float64, ink = 1
    names      ((alphabet, character), ...), one per class
    rotations  (degrees, ...), one per class: 0 as loaded, 90/180/270 from ``with_rotations``,
               which rotates counter-clockwise (``numpy.rot90``)

Episodes (N = n_way, K = k_shot, Q = n_query) are class-major, labels 0..N−1 in the order the
classes were drawn:
    support_x (N·K, 1, s, s), support_y (N·K,) = [0]*K + [1]*K + ...
    query_x   (N·Q, 1, s, s), query_y   (N·Q,)
with a leading task axis T from ``sample_episodes``.
"""

import hashlib
import io
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from refmeta import checks, disk
from refmeta.device import backend
from refmeta.data.tasks import Episode

PREPROCESS_VERSION = 1
ROTATIONS = (0, 90, 180, 270)
DRAWING_SIZE = (105, 105)  # (H, W) of every Omniglot drawing, and of Lake's runs
EXPECTED_ZIP = "an Omniglot images zip (<set>/<Alphabet>/<character>/<id>_<drawer>.png)"
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


class Characters(NamedTuple):
    images: np.ndarray  # (n_classes, n_drawings, s, s) float64, ink = 1
    names: tuple        # ((alphabet, character), ...)
    rotations: tuple    # (degrees, ...)


# ----- reading -----
def _pillow_image():
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("reading Omniglot PNGs needs Pillow: pip install 'refmeta[omniglot]'") from error
    return Image


def ink_image(png_bytes):
    """One PNG -> (H, W) float64 with ink = 1, background = 0 (the files store ink as 0)."""
    image = _pillow_image().open(io.BytesIO(png_bytes)).convert("L")
    return 1.0 - np.asarray(image, dtype=np.float64) / 255.0


def resize_ink(ink, image_size):
    """(H, W) ink image -> (image_size, image_size) float32 by Pillow's BOX filter (A · ink · Aᵀ)."""
    image = _pillow_image().fromarray(np.asarray(ink, dtype=np.float32))
    return np.asarray(image.resize((image_size, image_size), _pillow_image().BOX), dtype=np.float32)


def open_zip(path, expected):
    """Read every member of a zip into a dict name -> bytes, or raise naming ``path`` and ``expected``."""
    return _with_zip(path, expected, lambda archive: {
        info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()})


def _member_names(path, expected):
    """The names of a zip's members (no directories), without reading them."""
    return _with_zip(path, expected, lambda archive: [
        info.filename for info in archive.infolist() if not info.is_dir()])


def _with_zip(path, expected, read):
    """``read(archive)`` of the zip at ``path``; FileNotFoundError or ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        problem = "not a file" if path.exists() else "no such file"
        raise FileNotFoundError(f"{path}: {problem}; expected {expected}")
    try:
        with zipfile.ZipFile(path) as archive:
            return read(archive)
    except ZIP_ERRORS as error:  # (encrypted members: RuntimeError; unknown compression: NotImplementedError)
        raise ValueError(f"{path}: not a readable zip ({error}); expected {expected}") from error


def _is_metadata(name):
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _drawings_by_character(members, path):
    """{(alphabet, character): sorted member names}, checking the layout."""
    groups = {}
    for name in sorted(members):
        if _is_metadata(name):
            continue
        parts = name.split("/")
        if len(parts) != 4 or not all(parts) or not parts[3].lower().endswith(".png"):
            raise ValueError(f"{path}: expected members <set>/<Alphabet>/<character>/<id>_<drawer>.png; "
                             f"got {name!r}")
        groups.setdefault((parts[1], parts[2]), []).append(name)
    if not groups:
        raise ValueError(f"{path}: expected <set>/<Alphabet>/<character>/<id>_<drawer>.png members; "
                         f"the zip holds none")
    counts = sorted({len(drawings) for drawings in groups.values()})
    if len(counts) > 1:
        raise ValueError(f"{path}: every character needs the same number of drawings; got counts {counts}")
    return dict(sorted(groups.items()))


def member_image(members, name, path, image_size=None):
    """Zip member ``name`` -> (105, 105) ink image, or (s, s) BOX-resized when image_size is given.

    A drawing that is not 105×105 is a ValueError naming the member and both sizes."""
    try:
        ink = ink_image(members[name])
    except (OSError, ValueError, SyntaxError) as error:  # what Pillow raises on a bad PNG
        raise ValueError(f"{path}: member {name!r} is not a readable PNG ({error})") from error
    if ink.shape != DRAWING_SIZE:
        raise ValueError(f"{path}: member {name!r} is {ink.shape[1]}×{ink.shape[0]} pixels; Omniglot "
                         f"drawings are {DRAWING_SIZE[1]}×{DRAWING_SIZE[0]} (refusing to resize it)")
    return ink if image_size is None else resize_ink(ink, image_size).astype(np.float64)


def _read_characters(path, image_size):
    """Decode and resize every drawing: (images (n, n_drawings, s, s) float32, names)."""
    members = open_zip(path, EXPECTED_ZIP)
    groups = _drawings_by_character(members, path)
    images = np.empty((len(groups), len(next(iter(groups.values()))), image_size, image_size), np.float32)
    for c, drawings in enumerate(groups.values()):
        for d, name in enumerate(drawings):
            images[c, d] = member_image(members, name, path, image_size)
    return images, tuple(groups)


# ----- caching -----
def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(cache_dir, zip_sha256, image_size):
    """Where the NPZ for one zip and preprocessing lives."""
    return Path(cache_dir) / f"omniglot-{zip_sha256[:24]}-v{PREPROCESS_VERSION}-{image_size}px.npz"


def _read_cache(file, zip_sha256, names, shape):
    """(images, names) from a cache file if it holds what the zip gives, else None (rebuild it).

    ``names`` and ``shape`` (n_classes, n_drawings, s, s) come from the zip's layout; the
    module docstring lists the checks.
    """
    try:
        with disk.open_regular(file) as f:  # a FIFO or a folder there is refused, not waited on
            if f.read(4) != b"PK\x03\x04":  # not a zip: an empty file, a .npy, anything else
                return None
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                if (str(data["zip_sha256"]) != zip_sha256 or int(data["version"]) != PREPROCESS_VERSION
                        or _cached_header(data, "images.npy") != (shape, np.dtype(np.float32))
                        or tuple(zip(data["alphabets"].tolist(), data["characters"].tolist())) != names):
                    return None
                images = data["images"]
    except (ValueError, TypeError, KeyError, *ZIP_ERRORS):
        return None
    if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
        return None
    return images, names


def _cached_header(data, member):
    """(shape, dtype) that ``member`` of an open NPZ declares in its .npy header."""
    with data.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
    return shape, dtype


def _write_cache_atomically(file, images, names, zip_sha256):
    """Write beside ``file``, then rename, SIGTERM held (``refmeta.disk``): never a partial file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    disk.replace_atomically(file, lambda out: np.savez(
        out, images=images, alphabets=np.array([a for a, _ in names]),
        characters=np.array([c for _, c in names]), zip_sha256=np.array(zip_sha256),
        version=np.array(PREPROCESS_VERSION)))


def load_characters(zip_path, image_size=28, cache_dir=None):
    """Every character of one Omniglot zip, preprocessed as in the module docstring.

    Args:
        zip_path: e.g. ``images_background.zip``; read directly, never extracted.
        image_size: side s of the square output images.
        cache_dir: None for no cache; else a directory for ``cache_path(...)`` NPZ files, keyed
            by the zip's SHA-256, ``PREPROCESS_VERSION`` and ``image_size``.
    Returns:
        Characters with images (n_characters, n_drawings, s, s) float64, sorted by
        (alphabet, character); rotations all 0.
    """
    image_size = checks.integer("image_size", image_size, minimum=1)
    loaded = None
    if cache_dir is not None:
        layout = _drawings_by_character(_member_names(zip_path, EXPECTED_ZIP), zip_path)
        shape = (len(layout), len(next(iter(layout.values()))), image_size, image_size)
        zip_sha256 = _sha256(zip_path)
        file = cache_path(cache_dir, zip_sha256, image_size)
        loaded = _read_cache(file, zip_sha256, tuple(layout), shape)
    if loaded is None:
        loaded = _read_characters(zip_path, image_size)
        if cache_dir is not None:
            _write_cache_atomically(file, *loaded, zip_sha256)
    images, names = loaded
    return Characters(images.astype(np.float64), names, (0,) * len(names))


# ----- combining, splitting, rotating -----
def check_characters(characters):
    """Raise ValueError unless images are (n_classes, n_drawings, H, W), finite, one name per class."""
    images, names, rotations = characters
    if not isinstance(images, np.ndarray) or images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be a float array (n_classes, n_drawings, H, W); got "
                         f"{type(images).__name__} {getattr(images, 'shape', '')}")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    if not len(names) == len(rotations) == len(images):
        raise ValueError(f"one name and one rotation per class needed: {len(images)} classes, "
                         f"{len(names)} names, {len(rotations)} rotations")
    return characters


def _subset(characters, index):
    return Characters(characters.images[index], tuple(characters.names[i] for i in index),
                      tuple(characters.rotations[i] for i in index))


def merge_characters(*character_sets):
    """The union of several Characters, one class per (alphabet, character, rotation), sorted.

    A name found in several sets must have identical drawings there (Greek and Latin are in both
    small background sets); otherwise ValueError.
    """
    merged = {}
    for number, characters in enumerate(character_sets):
        check_characters(characters)
        for images, name, rotation in zip(*characters):
            key = (*name, rotation)
            if key in merged and not np.array_equal(merged[key], images):
                raise ValueError(f"character {key} appears in set {number} with different drawings "
                                 f"(or a different shape) than before; refusing to merge")
            merged.setdefault(key, images)
    shapes = {images.shape for images in merged.values()}
    if len(shapes) > 1:
        raise ValueError(f"all sets need the same (n_drawings, H, W); got {sorted(shapes)}")
    keys = sorted(merged)
    return Characters(np.stack([merged[k] for k in keys]), tuple(k[:2] for k in keys),
                      tuple(k[2] for k in keys))


def split_characters(characters, rng, fractions=(0.8, 0.1, 0.1)):
    """Split by character into disjoint parts of the given fractions (train/val/test, say).

    Part sizes are ``round(cumsum(fractions) · n)`` differences; each part keeps the input's
    order.  Split before ``with_rotations``, so a held-out character's rotations stay held out.
    Returns:
        a tuple of Characters, one per fraction.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    check_characters(characters)
    if any(rotation != 0 for rotation in characters.rotations):
        raise ValueError("split characters before adding rotations (with_rotations), so rotated copies "
                         "of a held-out character never reach training; got rotated classes")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or not (fractions >= 0).all() or abs(fractions.sum() - 1) > 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to 1; got {fractions.tolist()}")
    n = len(characters.names)
    bounds = np.rint(np.cumsum(fractions) * n).astype(int)[:-1]
    parts = np.split(rng.permutation(n), bounds)
    return tuple(_subset(characters, np.sort(part)) for part in parts)


def with_rotations(characters, rotations=ROTATIONS):
    """Each rotation of each class as a class of its own (MAML's Omniglot setup).

    Class r·n + c is class c rotated counter-clockwise by ``rotations[r]`` degrees:
    images (len(rotations)·n, n_drawings, s, s), exact ``numpy.rot90`` copies.
    """
    check_characters(characters)
    if any(rotation != 0 for rotation in characters.rotations):
        raise ValueError("with_rotations takes unrotated characters; got classes already rotated")
    if not rotations or len(set(rotations)) != len(rotations) or not set(rotations) <= set(ROTATIONS):
        raise ValueError(f"rotations must be distinct degrees from {ROTATIONS}; got {rotations!r}")
    images = np.concatenate([np.rot90(characters.images, k=degrees // 90, axes=(2, 3))
                             for degrees in rotations])
    return Characters(images, characters.names * len(rotations),
                      tuple(int(degrees) for degrees in rotations for _ in characters.names))


# ----- episodes -----
def _check_episode_request(rng, images, n_way, k_shot, n_query):
    checks.generator(rng)
    checks.integer("n_way", n_way, minimum=2)
    checks.integer("k_shot", k_shot, minimum=1)
    checks.integer("n_query", n_query, minimum=1)
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images must be (n_classes, n_examples, H, W); "
                         f"got shape {getattr(images, 'shape', None)}")
    n_classes, n_examples = images.shape[:2]
    if n_way > n_classes:
        raise ValueError(f"a {n_way}-way episode needs {n_way} classes; the images hold {n_classes}")
    if k_shot + n_query > n_examples:
        raise ValueError(f"a {n_way}-way {k_shot}-shot {n_query}-query episode needs {k_shot + n_query} "
                         f"examples per class; the classes have {n_examples} < {k_shot + n_query}")


def _draw_episode(rng, images, n_way, k_shot, n_query):
    """One episode on the host: (support_x, support_y, query_x, query_y)."""
    n_classes, n_examples, height, width = images.shape
    classes = rng.choice(n_classes, size=n_way, replace=False)  # (N,)
    examples = rng.permuted(np.tile(np.arange(n_examples), (n_way, 1)), axis=1)[:, :k_shot + n_query]
    x = images[classes[:, None], examples][:, :, None]  # (N, K+Q, 1, H, W)
    labels = np.arange(n_way)
    return (x[:, :k_shot].reshape(n_way * k_shot, 1, height, width), np.repeat(labels, k_shot),
            x[:, k_shot:].reshape(n_way * n_query, 1, height, width), np.repeat(labels, n_query))


def _to_episode(host_arrays, n_way, dtype):
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    support_x, support_y, query_x, query_y = host_arrays
    return checks.episode(Episode(backend.asarray(support_x, dtype), backend.asarray(support_y, dtype=None),
                                  backend.asarray(query_x, dtype), backend.asarray(query_y, dtype=None)),
                          n_way=n_way)


def sample_episode(rng, images, n_way, k_shot, n_query, dtype=np.float64):
    """An N-way K-shot Q-query Episode: N distinct classes, K+Q distinct examples of each.

    Args:
        rng: numpy.random.Generator, the only source of randomness.
        images: (n_classes, n_examples, H, W) float, e.g. ``Characters.images``.
    Returns:
        Episode on the current backend: support_x (N·K, 1, H, W) of ``dtype`` (float64 by
        default, or float32), support_y (N·K,) int,
        query_x (N·Q, 1, H, W), query_y (N·Q,); labels 0..N−1 in the order classes were drawn.
    """
    _check_episode_request(rng, images, n_way, k_shot, n_query)
    return _to_episode(_draw_episode(rng, images, n_way, k_shot, n_query), n_way, dtype)


def sample_episodes(rng, images, n_tasks, n_way, k_shot, n_query, dtype=np.float64):
    """T = n_tasks independent episodes stacked on a leading task axis: support_x (T, N·K, 1, H, W)."""
    checks.integer("n_tasks", n_tasks, minimum=1)
    _check_episode_request(rng, images, n_way, k_shot, n_query)
    episodes = [_draw_episode(rng, images, n_way, k_shot, n_query) for _ in range(n_tasks)]
    return _to_episode([np.stack(field) for field in zip(*episodes)], n_way, dtype)
