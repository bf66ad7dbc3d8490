"""Reading one pinned file from a source, bounded by its size and checked by its SHA-256.

A source (``parse_source``) is an ``http(s)://`` URL, a ``file://`` URL or a local folder;
each file is looked for at its place in the source's layout first, then flat
(``candidates``).  Redirects are followed to http:// and https:// URLs only, at most
``MAX_REDIRECTS`` of them; a redirect elsewhere, or a loop, is one line saying so.  A file is
read into memory up to one byte past its pinned size and no further; a server announcing more,
or a local file larger than that, is not read at all.  ``refmeta.data.fetch`` writes what
``download`` returns.  Every failure is a ``FetchError`` with a one-line message.
"""

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from refmeta import disk
from refmeta.progress import progress

DEFAULT_SOURCE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
CHUNK_BYTES = 1 << 16
TIMEOUT_SECONDS = 60
MAX_REDIRECTS = 10


class FetchError(Exception):
    """A fetch that failed: its message is one line naming the file, the URL or the folder."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its name here, its path under the source, its size and SHA-256."""
    name: str
    path: str
    size: int
    sha256: str


# ----- sources -----
def parse_source(source):
    """("http", base URL ending in /) or ("folder", Path) from ``--from``; ValueError for
    another scheme, a file:// URL on another host, or a local path that is not a folder."""
    if source is None:
        source = DEFAULT_SOURCE
    if not source:
        raise ValueError("--from: expected a URL or a folder; got an empty string")
    try:
        parts = urllib.parse.urlsplit(source)
        parts.port  # reading the port checks it: ValueError for "host:http"
    except ValueError as error:
        raise ValueError(f"--from {source}: not a valid URL ({error}); expected "
                         "http(s)://HOST/PATH, file:///PATH or a local folder") from None
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"--from {source}: the URL names no host; expected "
                             f"{parts.scheme}://HOST/PATH")
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


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, to http:// and https:// only, at most MAX_REDIRECTS; a refused
    redirect or a loop is a FetchError saying so."""
    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):
        target = urllib.parse.urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            fp.close()
            raise FetchError(f"{req.full_url} redirects to {target}; refmeta follows redirects "
                             "to http:// and https:// URLs only")
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as error:
            if not error.msg.startswith(self.inf_msg):
                raise
            error.close()
            followed = sum(getattr(req, "redirect_dict", {}).values())
            raise FetchError(f"{req.full_url}: a redirect loop (gave up after {followed} "
                             f"redirects, the last to {target})") from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_Redirects)


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
            stream = disk.open_regular(found[0])
        except (OSError, disk.PathError) as error:
            raise FetchError(f"cannot read {found[0]}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
        with stream:
            yield stream, str(found[0]), os.fstat(stream.fileno()).st_size
        return
    for i, url in enumerate(where):
        try:
            stream = _OPENER.open(url, timeout=TIMEOUT_SECONDS)
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


# ----- reading, bounded and checked -----
def download(remote, kind, base, show_progress=False):
    """(the bytes of ``remote``, where they came from) from the source (kind, base) that
    ``parse_source`` gives: read up to one byte past its pinned size and SHA-256 checked;
    FetchError otherwise.  ``show_progress`` draws a progress bar."""
    with _open(remote, kind, base) as (stream, where, announced):
        return _download_from(stream, where, announced, remote, show_progress), where


def _download_from(stream, where, announced, remote, show_progress):
    """The checked bytes of ``remote`` from an open ``stream`` that announced ``announced``
    bytes (None: unknown); never reads more than ``remote.size + 1``."""
    if announced is not None and announced > remote.size:
        raise FetchError(f"{where} is {announced:,} bytes; {remote.name} is {remote.size:,}: "
                         "not read, nothing was kept")
    data = _read_bounded(stream, remote, where, show_progress)
    if len(data) > remote.size:
        raise FetchError(f"{where} holds more than the {remote.size:,} bytes of {remote.name}: "
                         f"reading stopped at {len(data):,}, nothing was kept")
    if announced is not None and len(data) < announced:
        raise FetchError(f"{where}: the connection closed after {len(data):,} of "
                         f"{announced:,} bytes; nothing was kept")
    digest = hashlib.sha256(data).hexdigest()
    if digest != remote.sha256:
        raise FetchError(f"{remote.name} from {where}: wrong SHA-256: expected "
                         f"{remote.sha256}, got {digest} ({len(data):,} bytes, expected "
                         f"{remote.size:,}); nothing was kept")
    return data


def _read_bounded(stream, remote, where, show_progress):
    """The bytes of ``stream``, at most ``remote.size + 1`` of them."""
    chunks = _chunks(stream, where, remote.size + 1)
    bar = progress(chunks, total=-(-remote.size // CHUNK_BYTES), desc=remote.name) \
        if show_progress else chunks
    data, received = [], 0
    try:
        for chunk in bar:
            data.append(chunk)
            received += len(chunk)
            if show_progress:
                bar.set_postfix(MB=f"{received / 1e6:.2f}/{remote.size / 1e6:.2f}")
    finally:
        if show_progress:
            bar.close()
    return b"".join(data)


def _chunks(stream, where, limit):
    """The chunks of ``stream``, ``limit`` bytes at most in all; a read that fails is a FetchError."""
    received = 0
    while received < limit:
        try:
            chunk = stream.read(min(CHUNK_BYTES, limit - received))
        except (OSError, http.client.HTTPException) as error:
            raise FetchError(f"{where}: the download broke off ({_reason(error)}); "
                             "nothing was kept") from None
        if not chunk:
            return
        received += len(chunk)
        yield chunk
