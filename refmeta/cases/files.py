"""Reading a reference case and an outputs file, trusting nothing in them before it is checked.

A case is the pair ``<id>.json`` + ``<id>.npz`` in one folder.  ``load_case`` checks it whole:
the JSON's format version and keys, every array's name, shape and dtype, and the NPZ's sha256
against the one the JSON names.  ``load_outputs`` reads THEIRS.npz, one array per output name
(``numpy.savez(path, **{name: array})``); a case's own NPZ, with ``outputs/<name>`` keys beside
``inputs/<name>``, is read as its outputs.

The files may come from anywhere, so: each is opened without waiting and read only if it is a
regular file (a pipe or a FIFO is named as such, never waited on); the JSON is read up to
``MAX_JSON_BYTES`` and its nesting capped (``MAX_JSON_DEPTH``) before it is parsed, and every
number in it must fit a float64; the case NPZ may be no larger than its JSON's arrays need
(``npz_size_bound``), and is hashed in chunks; THEIRS.npz, read for a case, may be no larger
than twice that; every NPZ member must be a ``<name>.npy`` array whose header declares as many
bytes as the member holds, checked before any array is allocated; object arrays come back as a
0-d placeholder, reported later by their dtype and never unpickled.  Anything unreadable is a
``VerifyError`` whose message says what was expected and what was found.

``refmeta.cases.verify`` reads its files through this module; it imports nothing from there.
"""

import hashlib
import itertools
import json
import math
import os
import re
import sys
import zipfile
import zlib

import numpy as np

from refmeta import cases, disk

MAX_JSON_DEPTH = 64  # a case nests 6 deep; Python's parser recurses once per level
MAX_JSON_BYTES = 16 << 20  # the largest case's JSON is 58 KB
NPZ_MEMBER_SLACK = 4096  # bytes beside each array's data: its .npy header and zip records, generously
HASH_CHUNK_BYTES = 1 << 20
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
REQUIRED = ("format", "id", "algorithm", "description", "refmeta_version", "model", "conventions",
            "hyperparameters", "inputs", "outputs")


class VerifyError(ValueError):
    """Input that cannot be verified at all (exit status 2); the message says why."""


def load_case(json_path):
    """(document, {"inputs/<name>": array, "outputs/<name>": array}) of a case, checked whole."""
    document = _read_json(json_path)
    _check_document(document, json_path)
    npz_path = os.path.splitext(json_path)[0] + ".npz"
    if not os.path.lexists(npz_path):
        raise VerifyError(f"case {json_path} has no NPZ: expected {npz_path} beside it "
                          "(a case is the pair <id>.json + <id>.npz; export it again)")
    with _open_npz(npz_path, "case NPZ", npz_size_bound(document),
                   "the arrays its JSON lists need") as file:
        _check_sha256(file, document, npz_path, json_path)
        arrays = _npz_arrays(file, npz_path, "case NPZ", npz_size_bound(document))
    _check_case_arrays(arrays, document, npz_path)
    return document, arrays


def load_outputs(npz_path, max_bytes=None):
    """{output name: array} from THEIRS.npz (or from a case NPZ's ``outputs/`` entries).
    ``max_bytes``: refuse a larger file, unread (``outputs_size_bound`` of the case)."""
    with _open_npz(npz_path, "outputs file", max_bytes, "twice the whole case") as file:
        arrays = _npz_arrays(file, npz_path, "outputs file", max_bytes)
    if any(key.startswith("outputs/") for key in arrays) and all(
            key.startswith(("outputs/", "inputs/")) for key in arrays):
        return {key[len("outputs/"):]: a for key, a in arrays.items() if key.startswith("outputs/")}
    return arrays


def npz_size_bound(document):
    """The most bytes a checked case's NPZ may hold: its arrays' float64 data, and
    ``NPZ_MEMBER_SLACK`` per array and once more for the zip's directory."""
    entries = [entry for kind in ("inputs", "outputs") for entry in document[kind].values()]
    return sum(8 * math.prod(entry["shape"]) + NPZ_MEMBER_SLACK for entry in entries) + NPZ_MEMBER_SLACK


def outputs_size_bound(document):
    """The most bytes THEIRS.npz may hold for this (checked) case: twice its whole NPZ."""
    return 2 * npz_size_bound(document)


# ----- the case: its JSON, and the NPZ beside it -----
def _check_sha256(file, document, npz_path, json_path):
    """VerifyError unless the open case NPZ has the sha256 its JSON names (read in chunks)."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: file.read(HASH_CHUNK_BYTES), b""):
        digest.update(chunk)
    file.seek(0)
    if "npz_sha256" in document and digest.hexdigest() != document["npz_sha256"]:
        raise VerifyError(f"{npz_path} does not belong to {json_path}: its sha256 is "
                          f"{digest.hexdigest()}, the JSON names {document['npz_sha256']} "
                          "(export the case again)")


def _check_case_arrays(arrays, document, npz_path):
    """VerifyError unless the case NPZ holds exactly the JSON's arrays, float64, of its shapes."""
    expected = {f"{kind}/{name}": entry for kind in ("inputs", "outputs")
                for name, entry in document[kind].items()}
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise VerifyError(f"case NPZ {npz_path} does not match its JSON: missing {missing}, "
                          f"extra {extra}")
    for key, entry in expected.items():
        if arrays[key].dtype != np.float64 or list(arrays[key].shape) != entry["shape"]:
            raise VerifyError(f"case NPZ {npz_path}: {key} is {arrays[key].dtype} "
                              f"{arrays[key].shape}; the JSON says float64 {tuple(entry['shape'])}")


def _read_json(path):
    """The parsed JSON of a case file, or VerifyError: unreadable, not a regular file, too large,
    an NPZ, not JSON, too deep."""
    try:
        with disk.open_regular(path) as f:
            raw = disk.read_at_most(f, MAX_JSON_BYTES, f"case {path}")
    except disk.PathError as error:
        raise VerifyError(f"case {error}; a refmeta case's JSON is a regular file well under "
                          "1 MB (refmeta cases export writes it)") from None
    except OSError as error:
        raise VerifyError(f"cannot read case {path}: {error.strerror or error}") from None
    if raw.startswith((ZIP_MAGIC, NPY_MAGIC)):
        raise VerifyError(f"case {path} is an NPZ or .npy file, not a case's JSON: the arguments "
                          "are CASE.json THEIRS.npz, in that order")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise VerifyError(f"case {path} is not valid JSON: {error}") from None
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise VerifyError(f"case {path} nests arrays and objects more than {MAX_JSON_DEPTH} deep; "
                          "a refmeta case nests 6 deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError: also a number of > 4300 digits
        raise VerifyError(f"case {path} is not valid JSON: {str(error).split(';')[0]}") from None


def _nesting_depth(text):
    """The deepest nesting of [ and { in JSON text, strings skipped (no parsing, no recursion)."""
    skeleton = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = (1 if c in "[{" else -1 for c in skeleton if c in "[]{}")
    return max(itertools.accumulate(steps), default=0)


def _check_document(document, path):
    """VerifyError unless ``document`` is a case of this format with every key and array entry."""
    if not isinstance(document, dict) or "format" not in document:
        raise VerifyError(f"{path} is not a refmeta case: no \"format\" key at the top level")
    if document["format"] != cases.FORMAT:
        raise VerifyError(f"{path} has format {document['format']!r}; this refmeta reads "
                          f"{cases.FORMAT!r} only")
    missing = [key for key in REQUIRED if key not in document]
    if missing:
        raise VerifyError(f"malformed case {path}: missing key(s) {', '.join(missing)}")
    where = _oversized_integer(document)
    if where:
        raise VerifyError(f"malformed case {path}: {where} is an integer beyond any float64 "
                          "(its numbers must fit one)")
    for kind in ("inputs", "outputs"):
        if not isinstance(document[kind], dict) or not document[kind]:
            raise VerifyError(f"malformed case {path}: {kind!r} must be a non-empty object")
        for name, entry in document[kind].items():
            problem = _entry_problem(entry, kind == "outputs")
            if problem:
                raise VerifyError(f"malformed case {path}: {kind}[{name!r}] {problem}")


def _oversized_integer(value, where=""):
    """The place (``outputs['y'].rtol``) of the first integer too large for a float64, or None."""
    if isinstance(value, dict):
        places = ((f"{where}[{key!r}]" if where else key, item) for key, item in value.items())
    elif isinstance(value, list):
        places = ((f"{where}[{i}]", item) for i, item in enumerate(value))
    else:
        return where if type(value) is int and abs(value) > sys.float_info.max else None
    return next((found for place, item in places if (found := _oversized_integer(item, place))), None)


def _entry_problem(entry, is_output):
    """What is wrong with one input or output entry of the JSON, or None."""
    if not isinstance(entry, dict):
        return f"must be an object; got {type(entry).__name__}"
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"needs \"shape\": a list of integers >= 0; got {shape!r}"
    if entry.get("dtype") != "float64":
        return f"needs \"dtype\": \"float64\"; got {entry.get('dtype')!r}"
    if is_output:
        for key in ("rtol", "atol"):
            value = entry.get(key)
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                return f"needs \"{key}\": a finite number >= 0; got {value!r}"
    return None


# ----- NPZ files: every member checked before it is loaded -----
def _open_npz(path, what, max_bytes=None, bound_meaning=""):
    """``path`` open for reading once it is known to be a regular file of at most ``max_bytes``
    (``bound_meaning`` says what that bound is) that does not start as a single .npy does."""
    try:
        file = disk.open_regular(path)
    except disk.PathError as error:
        raise VerifyError(f"{what} {error}: verify reads an NPZ file (numpy.savez(path, "
                          "**{name: array})) by its path") from None
    except OSError as error:
        raise VerifyError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        size = os.fstat(file.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise VerifyError(f"{what} {path} is {size:,} bytes, more than {bound_meaning} "
                              f"({max_bytes:,} bytes); it was not read")
        if file.read(len(NPY_MAGIC)) == NPY_MAGIC:
            raise VerifyError(f"{what} {path} is a single .npy array, not an NPZ "
                              "(write it with numpy.savez(path, **{name: array}))")
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return file


def _npz_arrays(file, path, what, max_bytes=None):
    """{key: array} of an open NPZ, each member checked before it is loaded (module docstring);
    ``max_bytes`` bounds the members' sizes added up, as a compressed NPZ unpacks them."""
    try:
        with zipfile.ZipFile(file) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            unpacked = sum(info.file_size for info in members)
            if max_bytes is not None and unpacked > max_bytes:
                raise VerifyError(f"{what} {path} unpacks to {unpacked:,} bytes, more than "
                                  f"{max_bytes:,}; it was not read")
            names = [info.filename for info in members]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise VerifyError(f"{what} {path} holds more than one member named {repeated}")
            return {info.filename[:-len(".npy")]: _read_member(archive, info, f"{what} {path}")
                    for info in members}
    except VerifyError:
        raise
    except OSError as error:
        raise VerifyError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError,
            RuntimeError) as error:
        raise VerifyError(f"{what} {path} is not an NPZ file (numpy.savez): {error}") from None


def _read_member(archive, info, where):
    """One member's array; an object array comes back as a 0-d placeholder, never unpickled."""
    name = info.filename
    if not name.endswith(".npy"):
        raise VerifyError(f"{where}: member {name!r} is not a .npy array (numpy.savez writes "
                          "<name>.npy members only)")
    with archive.open(info) as member:
        if member.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise VerifyError(f"{where}: member {name!r} is not a NumPy array (no .npy header)")
    with archive.open(info) as member:
        shape, dtype, header_size = _npy_header(member, name, where)
        if dtype.hasobject:
            return np.array(None, dtype=object)     # reported as non-float; nothing unpickled
        declared = math.prod(shape) * dtype.itemsize
        held = info.file_size - header_size
        if declared != held:
            raise VerifyError(f"{where}: member {name!r} declares a {dtype} array of shape "
                              f"{shape} ({declared} bytes) but holds {held} bytes of data")
    with archive.open(info) as member:
        try:
            return np.lib.format.read_array(member, allow_pickle=False)
        except (ValueError, EOFError, zlib.error, zipfile.BadZipFile) as error:
            raise VerifyError(f"{where}: member {name!r} cannot be read: {error}") from None


def _npy_header(member, name, where):
    """(shape, dtype, header size in bytes) from a .npy header, reading nothing else."""
    try:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]} (1.0 or 2.0 hold "
                             "any plain array)")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(member)
    except (ValueError, TypeError, SyntaxError, EOFError) as error:
        raise VerifyError(f"{where}: member {name!r} has no readable .npy header "
                          f"({error})") from None
    return shape, dtype, member.tell()
