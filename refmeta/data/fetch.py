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

Every file is written to a temporary name in the target folder, checked, then renamed, so
the folder never holds a partial or unchecked file, whatever stops the fetch (an error, a
wrong checksum, Ctrl-C, SIGTERM).  A file already there with the right SHA-256 is kept; one
with the wrong SHA-256 is fetched again (and replaced only once the new copy checks out).

Only the standard library is used.  Every failure is a ``FetchError`` with a one-line message.
"""

import contextlib
import hashlib
import http.client
import os
import secrets
import shlex
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from refmeta.progress import progress

DEFAULT_SOURCE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
CHUNK_BYTES = 1 << 16
TIMEOUT_SECONDS = 60


class FetchError(Exception):
    """A fetch that failed: its message is one line naming the file, the URL or the folder."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its name here, its path under the source, its size and SHA-256."""
    name: str
    path: str
    size: int
    sha256: str


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
    """The folder of the Omniglot zips: ``home`` (default ``data_home()``) / omniglot."""
    return (data_home() if home is None else Path(home).expanduser()) / "omniglot"


def fetch_command(environ=None):
    """The command that fills ``omniglot_dir()``: with ``--dir`` when the data home comes
    from $REFMETA_DATA or $XDG_CACHE_HOME, so it fills the same folder in any shell."""
    home = data_home(environ)
    if home == data_home({}):
        return "refmeta data fetch omniglot"
    return f"refmeta data fetch omniglot --dir {shlex.quote(str(home))}"


# ----- sources -----
def parse_source(source):
    """("http", base URL ending in /) or ("folder", Path) from ``--from``; ValueError for
    another scheme, a file:// URL on another host, or a local path that is not a folder."""
    if source is None:
        source = DEFAULT_SOURCE
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https"):
        return "http", source if source.endswith("/") else source + "/"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"--from {source}: a file:// URL must name this machine (file:///path)")
        folder = Path(urllib.request.url2pathname(parts.path))
    elif "://" in source:
        raise ValueError(f"--from {source}: expected an http://, https:// or file:// URL "
                         "or a local folder")
    else:
        folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--from {source}: {folder} is not a folder")
    return "folder", folder


def candidates(remote, kind, base):
    """Where ``remote`` may be under a source: its place in the layout first, then flat."""
    paths = [remote.path] + ([remote.name] if remote.name != remote.path else [])
    if kind == "http":
        return [base + urllib.parse.quote(path) for path in paths]
    return [base / path for path in paths]


def default_urls(files=OMNIGLOT):
    """The URL of each file in the authors' repository: {name: URL}."""
    return {remote.name: candidates(remote, "http", DEFAULT_SOURCE)[0] for remote in files}


@contextlib.contextmanager
def _open(remote, kind, base):
    """(readable stream, where it is, bytes announced or None) for the first candidate that
    exists; FetchError when none does or the source cannot be reached."""
    where = candidates(remote, kind, base)
    if kind == "folder":
        found = [path for path in where if path.is_file()]
        if not found:
            raise FetchError(f"{remote.name}: not in {base} (looked for "
                             f"{' and '.join(str(path) for path in where)})")
        try:
            stream = open(found[0], "rb")
        except OSError as error:
            raise FetchError(f"cannot read {found[0]}: {error.strerror or error}") from None
        with stream:
            yield stream, str(found[0]), None
        return
    for i, url in enumerate(where):
        try:
            stream = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 404 and i + 1 < len(where):
                continue
            tried = " and ".join(where[:i + 1])
            raise FetchError(f"HTTP {error.code} {error.reason} for {tried}") from None
        except (OSError, http.client.HTTPException) as error:
            raise FetchError(f"cannot reach {url}: {_reason(error)}") from None
        with stream:
            length = stream.headers.get("Content-Length")
            yield stream, url, int(length) if length and length.isdigit() else None
        return


def _reason(error):
    """The human part of a urllib, socket or http.client error."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, OSError):
        error = reason
    elif reason is not None:
        return str(reason)
    return (error.strerror if isinstance(error, OSError) and error.strerror
            else str(error) or type(error).__name__)


# ----- fetching -----
def fetch(files, directory, source=None, say=print, show_progress=None):
    """Fetch ``files`` (Remotes) from ``source`` (default: the authors' repository) into
    ``directory``, created if missing.  Returns {name: "present" or "fetched"}.

    ``say`` gets one line per file; ``show_progress`` (default: stderr is a terminal) draws a
    progress bar per download.  Raises FetchError, or ValueError for a bad ``source``."""
    kind, base = parse_source(source)
    directory = Path(directory)
    _check_writable(directory)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    done = {}
    for remote in files:
        target = directory / remote.name
        if target.exists():
            digest = _sha256_of(target)
            if digest == remote.sha256:
                say(f"{remote.name}: already in {directory} with the right SHA-256; not fetched again")
                done[remote.name] = "present"
                continue
            say(f"{remote.name}: present but its SHA-256 is {digest}, not {remote.sha256}; "
                "fetching it again")
        where = _fetch_one(remote, kind, base, target, show_progress)
        say(f"{remote.name}: fetched from {where} ({remote.size:,} bytes, SHA-256 checked)")
        done[remote.name] = "fetched"
    return done


def fetch_omniglot(home=None, source=None, say=print, show_progress=None):
    """Fetch the three Omniglot zips into ``omniglot_dir(home)``; returns that folder."""
    folder = omniglot_dir(home)
    fetch(OMNIGLOT, folder, source, say, show_progress)
    return folder


def _check_writable(directory):
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise FetchError(f"cannot create or write the folder {directory}: "
                         f"{error.strerror or error}") from None


def _sha256_of(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
                digest.update(chunk)
    except OSError as error:
        raise FetchError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def _fetch_one(remote, kind, base, target, show_progress):
    """Download into a temporary file beside ``target``, check it, rename it; returns where
    it came from.  On any failure or interruption the temporary file is removed."""
    with _open(remote, kind, base) as (stream, where, announced):
        temporary = None
        try:
            temporary, out = _create_temporary(target)
            with out:
                received, digest = _copy(stream, out, remote, where, show_progress)
                out.flush()
                os.fsync(out.fileno())
            if announced is not None and received < announced:
                raise FetchError(f"{where}: the connection closed after {received:,} of "
                                 f"{announced:,} bytes; nothing was kept")
            if digest != remote.sha256:
                raise FetchError(f"{remote.name} from {where}: wrong SHA-256: expected "
                                 f"{remote.sha256}, got {digest} ({received:,} bytes, expected "
                                 f"{remote.size:,}); nothing was kept")
            os.replace(temporary, target)
        except OSError as error:  # reading errors are FetchErrors already: this is the disk
            raise FetchError(f"cannot write {target}: {error.strerror or error}; "
                             "nothing was kept") from None
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
    return where


def _create_temporary(target):
    """(path, binary file) of a new hidden file beside ``target``, made with the umask's
    permissions (as the renamed file should have), never one that exists already."""
    for _ in range(100):
        path = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            return str(path), open(path, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def _copy(stream, out, remote, where, show_progress):
    """Copy ``stream`` into ``out``; returns (bytes, SHA-256 hex digest)."""
    digest, received = hashlib.sha256(), 0
    chunks = _chunks(stream, where)
    bar = progress(chunks, total=-(-remote.size // CHUNK_BYTES), desc=remote.name) \
        if show_progress else chunks
    try:
        for chunk in bar:
            _write(out, chunk)
            digest.update(chunk)
            received += len(chunk)
            if show_progress:
                bar.set_postfix(MB=f"{received / 1e6:.2f}/{remote.size / 1e6:.2f}")
    finally:
        if show_progress:
            bar.close()
    return received, digest.hexdigest()


def _chunks(stream, where):
    """The chunks of ``stream``; a read that fails is a FetchError."""
    while True:
        try:
            chunk = stream.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise FetchError(f"{where}: the download broke off ({_reason(error)}); "
                             "nothing was kept") from None
        if not chunk:
            return
        yield chunk


def _write(out, chunk):
    """One write to the temporary file (a function of its own, so a test can fill the disk)."""
    out.write(chunk)
