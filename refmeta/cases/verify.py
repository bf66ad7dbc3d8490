"""``refmeta verify CASE.json THEIRS.npz``: check another implementation against a reference case.

CASE.json and its NPZ (the same name with ``.npz``, in the same folder) are read and checked
whole: format version, keys, every array's name, shape and dtype, and the NPZ's sha256.
THEIRS.npz holds one array per output name (``numpy.savez(path, **{name: array})``); a case's
own NPZ, with ``outputs/<name>`` keys beside ``inputs/<name>``, is read as its outputs.

Each output is compared element by element, as ``numpy.isclose`` does:

    pass  ⇔  |theirs − reference| ≤ atol + rtol · |reference|   for every element

with the output's own rtol and atol from the JSON.  NaN fails unless the reference has NaN at
the same place; ±inf passes only against the same infinity.  The table shows, per output,

    max abs err = max |theirs − reference|
    max rel err = max |theirs − reference| / |reference|   (0/0 counts 0, x/0 counts inf)

Exit status: 0 every output passes; 1 verification failed (an output out of tolerance, or
THEIRS.npz has missing, extra, misshapen or non-float arrays); 2 nothing could be compared
(an unreadable or malformed case, a missing NPZ, THEIRS.npz not an NPZ).

Nothing in the files is trusted before it is checked: the JSON's nesting is capped
(``MAX_JSON_DEPTH``) before it is parsed; every NPZ member must be a ``<name>.npy`` array whose
header declares as many bytes as the member holds, checked before any array is allocated;
object arrays are reported by their dtype and never unpickled.
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

from refmeta import cases

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
MAX_JSON_DEPTH = 64  # a case nests 6 deep; Python's parser recurses once per level
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
REQUIRED = ("format", "id", "algorithm", "description", "refmeta_version", "model", "conventions",
            "hyperparameters", "inputs", "outputs")


class VerifyError(Exception):
    """Input that cannot be verified at all (exit status 2); the message says why."""


def load_case(json_path):
    """(document, {"inputs/<name>": array, "outputs/<name>": array}) of a case, checked whole."""
    document = _read_json(json_path)
    _check_document(document, json_path)
    npz_path = os.path.splitext(json_path)[0] + ".npz"
    if not os.path.isfile(npz_path):
        raise VerifyError(f"case {json_path} has no NPZ: expected {npz_path} beside it "
                          "(a case is the pair <id>.json + <id>.npz; export it again)")
    with open(npz_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if "npz_sha256" in document and digest != document["npz_sha256"]:
        raise VerifyError(f"{npz_path} does not belong to {json_path}: its sha256 is {digest}, "
                          f"the JSON names {document['npz_sha256']} (export the case again)")
    arrays = _read_npz(npz_path, "case NPZ")
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
    return document, arrays


def _read_json(path):
    """The parsed JSON of a case file, or VerifyError: unreadable, an NPZ, not JSON, too deep."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
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
    except (json.JSONDecodeError, RecursionError) as error:
        raise VerifyError(f"case {path} is not valid JSON: {error}") from None


def _nesting_depth(text):
    """The deepest nesting of [ and { in JSON text, strings skipped (no parsing, no recursion)."""
    skeleton = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = (1 if c in "[{" else -1 for c in skeleton if c in "[]{}")
    return max(itertools.accumulate(steps), default=0)


def _check_document(document, path):
    if not isinstance(document, dict) or "format" not in document:
        raise VerifyError(f"{path} is not a refmeta case: no \"format\" key at the top level")
    if document["format"] != cases.FORMAT:
        raise VerifyError(f"{path} has format {document['format']!r}; this refmeta reads "
                          f"{cases.FORMAT!r} only")
    missing = [key for key in REQUIRED if key not in document]
    if missing:
        raise VerifyError(f"malformed case {path}: missing key(s) {', '.join(missing)}")
    for kind in ("inputs", "outputs"):
        if not isinstance(document[kind], dict) or not document[kind]:
            raise VerifyError(f"malformed case {path}: {kind!r} must be a non-empty object")
        for name, entry in document[kind].items():
            problem = _entry_problem(entry, kind == "outputs")
            if problem:
                raise VerifyError(f"malformed case {path}: {kind}[{name!r}] {problem}")


def _entry_problem(entry, is_output):
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


def _read_npz(path, what):
    """{key: array} of an NPZ, every member checked before it is loaded (see the docstring)."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(NPY_MAGIC))
        if start == NPY_MAGIC:
            raise VerifyError(f"{what} {path} is a single .npy array, not an NPZ "
                              "(write it with numpy.savez(path, **{name: array}))")
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
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
        if declared != info.file_size - header_size:
            raise VerifyError(f"{where}: member {name!r} declares a {dtype} array of shape "
                              f"{shape} ({declared} bytes) but holds {info.file_size - header_size} "
                              "bytes of data")
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
        raise VerifyError(f"{where}: member {name!r} has no readable .npy header ({error})") from None
    return shape, dtype, member.tell()


def load_outputs(npz_path):
    """{output name: array} from THEIRS.npz (or from a case NPZ's ``outputs/`` entries)."""
    arrays = _read_npz(npz_path, "outputs file")
    if any(key.startswith("outputs/") for key in arrays) and all(
            key.startswith(("outputs/", "inputs/")) for key in arrays):
        return {key[len("outputs/"):]: a for key, a in arrays.items() if key.startswith("outputs/")}
    return arrays


def compare(reference, theirs, rtol, atol):
    """(max abs err, max rel err, passed, worst) of two same-shape arrays; see the docstring."""
    reference, theirs = np.asarray(reference, np.float64), np.asarray(theirs, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same = (np.isnan(reference) & np.isnan(theirs)) | (np.isinf(reference) & (theirs == reference))
        error = np.where(same, 0.0, np.abs(theirs - reference))         # NaN where one side is NaN
        allowed = np.where(np.isinf(reference), -1.0, atol + rtol * np.abs(reference))
        passed = same | (error <= allowed)
        relative = np.where(error == 0, 0.0, error / np.abs(reference))
    if error.size == 0:
        return 0.0, 0.0, True, None
    nan = np.isnan(error)
    max_abs = math.nan if nan.any() else float(error.max())
    max_rel = math.nan if nan.any() else float(relative.max())
    worst = None
    if not passed.all():
        with np.errstate(invalid="ignore"):
            badness = np.where(nan, np.inf, np.where(passed, -np.inf, error - allowed))
        index = np.unravel_index(int(np.argmax(badness)), error.shape)
        worst = (tuple(int(i) for i in index), float(theirs[index]), float(reference[index]),
                 float(allowed[index]), int(nan.sum()))
    return max_abs, max_rel, bool(passed.all()), worst


def verify(document, case_arrays, theirs):
    """(rows, problems): a row per comparable output, a message per structural problem."""
    outputs = document["outputs"]
    problems = [f"missing output {name!r}, shape {tuple(outputs[name]['shape'])}"
                for name in outputs if name not in theirs]
    problems += [f"extra array {name!r}: the case has no such output" for name in sorted(theirs)
                 if name not in outputs]
    rows = []
    for name, entry in outputs.items():
        if name not in theirs:
            continue
        array, shape = theirs[name], tuple(entry["shape"])
        if array.dtype.kind != "f":
            problems.append(f"output {name!r} must hold real floating-point numbers; got dtype "
                            f"{array.dtype}")
        elif array.shape != shape:
            problems.append(f"output {name!r} has shape {array.shape}; expected {shape}")
        else:
            rows.append((name, shape, entry["rtol"], entry["atol"],
                         *compare(case_arrays["outputs/" + name], array, entry["rtol"], entry["atol"])))
    return rows, problems


def format_table(rows):
    """The per-output table: max abs err, max rel err, tolerance, pass/fail."""
    header = ("output", "shape", "max abs err", "max rel err", "rtol", "atol", "result")
    lines = [(name, str(shape), f"{abs_err:.3g}", f"{rel_err:.3g}", f"{rtol:g}", f"{atol:g}",
              "pass" if passed else "FAIL") for name, shape, rtol, atol, abs_err, rel_err, passed, _
             in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in [header] + lines]
    for name, _, _, _, _, _, passed, worst in rows:
        if not passed:
            index, value, reference, allowed, n_nan = worst
            text.append(f"  {name}: worst at {list(index)}: theirs {value!r}, reference "
                        f"{reference!r}, allowed error {allowed:.3g}"
                        + (f"; NaN at {n_nan} place(s) where the reference has a number" if n_nan else ""))
    return "\n".join(text)


def main(case_path, theirs_path, out=None, err=None):
    """Verify and print the table; returns the exit status (0 pass, 1 fail, 2 error)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        document, case_arrays = load_case(case_path)
        theirs = load_outputs(theirs_path)
    except VerifyError as error:
        print(f"refmeta verify: {error}", file=err)
        return EXIT_ERROR
    rows, problems = verify(document, case_arrays, theirs)
    n_outputs = len(document["outputs"])
    print(f"case {document['id']} ({document['algorithm']}, {document['format']}, "
          f"refmeta {document['refmeta_version']}) against {theirs_path}", file=out)
    if rows:
        print(format_table(rows), file=out)
    for problem in problems:
        print(f"refmeta verify: {problem}", file=err)
    failed = [row[0] for row in rows if not row[6]]
    if problems or failed:
        print(f"FAILED: {len(rows) - len(failed)} of {n_outputs} outputs pass"
              + (f"; out of tolerance: {', '.join(failed)}" if failed else "")
              + (f"; {len(problems)} problem(s) with {theirs_path}, listed on stderr" if problems else ""),
              file=out)
        return EXIT_FAIL
    print(f"all {n_outputs} outputs pass", file=out)
    return EXIT_PASS
