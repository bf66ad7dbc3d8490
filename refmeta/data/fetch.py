"""Fetching the Omniglot zips the demos read, each checked against a pinned SHA-256.

    refmeta data fetch omniglot [--dir HOME] [--from SOURCE]

The data home is ``--dir``, else ``$REFMETA_DATA``, else ``$XDG_CACHE_HOME/refmeta``, else
``~/.cache/refmeta``; the Omniglot files go in ``HOME/omniglot``, the demos' default ``--data``.

The files are those of the Omniglot authors' repository (Lake, Salakhutdinov & Tenenbaum 2015;
github.com/brendenlake/omniglot, MIT licence), under ``python/`` on its ``master`` branch:
``images_background_small1.zip``, ``images_background_small2.zip`` and
``one-shot-classification/all_runs.zip``.  ``SOURCE`` replaces that base: an ``http(s)://``
URL, a ``file://`` URL or a local folder, holding either the same layout or the three files
side by side (each file is looked for at its place in the layout first, then flat).

The size of every file is pinned: ``refmeta.data.download`` reads it into memory up to one
byte past that size and no further, from a server or a local folder, following redirects to
http(s) only.  Only once its SHA-256 checks out is a file written, atomically and with SIGINT
and SIGTERM held (``refmeta.disk.replace_atomically``), so the folder never holds a partial or
unchecked file, whatever stops the fetch (an error, a wrong checksum, Ctrl-C, SIGTERM).  A file
already there with the right SHA-256 is kept, read only up to its pinned size; one with the
wrong SHA-256 is fetched again (and replaced only once the new copy checks out); a folder,
FIFO, device or symbolic link in its place is refused.  The data home's path is resolved
(``a/../b`` is ``b``) before any folder is made; an empty one is refused.

Only the standard library is used.  Every failure is a ``FetchError`` with a one-line message.
"""

import hashlib
import os
import shlex
import sys
import tempfile
from pathlib import Path

from refmeta import disk
from refmeta.data.download import (CHUNK_BYTES, DEFAULT_SOURCE, FetchError, Remote, candidates,
                                   download, parse_source)

OMNIGLOT = (
    Remote("images_background_small1.zip", "images_background_small1.zip", 1_319_022,
           "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    Remote("images_background_small2.zip", "images_background_small2.zip", 1_580_917,
           "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    Remote("all_runs.zip", "one-shot-classification/all_runs.zip", 352_787,
           "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"),
)


# ----- where the data lives -----
def data_home(environ=None):
    """$REFMETA_DATA, else $XDG_CACHE_HOME/refmeta (an absolute XDG path only, as the XDG
    specification asks), else ~/.cache/refmeta."""
    environ = os.environ if environ is None else environ
    if environ.get("REFMETA_DATA"):
        return Path(environ["REFMETA_DATA"]).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "refmeta"
    return Path.home() / ".cache" / "refmeta"


def omniglot_dir(home=None):
    """The folder of the Omniglot zips: ``home`` (default ``data_home()``) / omniglot.
    ValueError for an empty ``home``, which names no folder."""
    if home is not None and not os.fspath(home):
        raise ValueError("--dir: expected the data home's folder; got an empty path")
    return (data_home() if home is None else Path(home).expanduser()) / "omniglot"


def fetch_command(environ=None):
    """The command that fills ``omniglot_dir()``: with ``--dir`` when the data home comes
    from $REFMETA_DATA or $XDG_CACHE_HOME, so it fills the same folder in any shell."""
    home = data_home(environ)
    if home == data_home({}):
        return "refmeta data fetch omniglot"
    return f"refmeta data fetch omniglot --dir {shlex.quote(str(home))}"


def default_urls(files=OMNIGLOT):
    """The URL of each file in the authors' repository: {name: URL}."""
    return {remote.name: candidates(remote, "http", DEFAULT_SOURCE)[0] for remote in files}


# ----- fetching -----
def fetch(files, directory, source=None, say=print, show_progress=None):
    """Fetch ``files`` (Remotes) from ``source`` (default: the authors' repository) into
    ``directory``, created if missing.  Returns {name: "present" or "fetched"}.

    ``say`` gets one line per file; ``show_progress`` (default: stderr is a terminal) draws a
    progress bar per download.  Raises FetchError, or ValueError for a bad ``source``."""
    kind, base = parse_source(source)
    directory = resolved(directory)
    _check_writable(directory)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    done = {}
    for remote in files:
        target = directory / remote.name
        wrong = _wrong_copy(target, remote)
        if wrong is None:
            say(f"{remote.name}: already in {directory} with the right SHA-256; not fetched again")
            done[remote.name] = "present"
            continue
        if wrong:
            say(f"{remote.name}: present but {wrong}; fetching it again")
        problem = disk.write_problem(target)
        if problem:
            raise FetchError(f"cannot write {target}: it {problem}")
        data, where = download(remote, kind, base, show_progress)
        _save(target, data)
        say(f"{remote.name}: fetched from {where} ({remote.size:,} bytes, SHA-256 checked)")
        done[remote.name] = "fetched"
    return done


def fetch_omniglot(home=None, source=None, say=print, show_progress=None):
    """Fetch the three Omniglot zips into ``omniglot_dir(home)``; returns that folder, resolved."""
    folder = resolved(omniglot_dir(home))
    fetch(OMNIGLOT, folder, source, say, show_progress)
    return folder


def resolved(folder):
    """``folder`` as an absolute path with ``..`` and symbolic links resolved, as the system
    would: ``a/../b`` is ``b``, and ``a`` is never made."""
    return Path(os.path.realpath(Path(folder).expanduser()))


def _check_writable(directory):
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise FetchError(f"cannot create or write the folder {directory}: "
                         f"{error.strerror or error}") from None


def _wrong_copy(target, remote):
    """What is wrong with the copy of ``remote`` at ``target`` ("its SHA-256 is ..."), None when
    it is right, or "" when there is none; reads at most ``remote.size + 1`` bytes."""
    try:
        with disk.open_regular(target) as file:
            data = file.read(remote.size + 1)
    except FileNotFoundError:
        return ""
    except disk.PathError:
        raise FetchError(f"cannot write {target}: it {disk.write_problem(target)}") from None
    except OSError as error:
        raise FetchError(f"cannot read {target}: {error.strerror or error}") from None
    if len(data) > remote.size:
        return f"it is larger than the {remote.size:,} bytes of {remote.name}"
    digest = hashlib.sha256(data).hexdigest()
    return None if digest == remote.sha256 else f"its SHA-256 is {digest}, not {remote.sha256}"


def _save(target, data):
    """Write ``data`` to ``target`` atomically, signals held (``disk.replace_atomically``)."""
    def write(out):
        for start in range(0, len(data), CHUNK_BYTES):
            _write(out, data[start:start + CHUNK_BYTES])
    try:
        disk.replace_atomically(target, write)
    except disk.PathError as error:
        raise FetchError(f"cannot write {error}") from None
    except OSError as error:
        raise FetchError(f"cannot write {target}: {error.strerror or error}; "
                         "nothing was kept") from None


def _write(out, chunk):
    """One write to the file being saved (a function of its own, so a test can fill the disk)."""
    out.write(chunk)
