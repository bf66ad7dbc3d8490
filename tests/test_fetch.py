"""refmeta.data.fetch and `refmeta data fetch`: the Omniglot zips, served from 127.0.0.1 (no
internet), checked against their pinned SHA-256, written atomically; and the demos finding them."""

import errno
import hashlib
import http.server
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers import OMNIGLOT_FILES, omniglot_folder
from refmeta import cli
from refmeta import progress as progress_module
from refmeta.data import download, fetch
from refmeta.demos import options, protonet_omniglot

LAYOUT = {remote.name: remote.path for remote in fetch.OMNIGLOT}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) serving ``files`` {URL path: bytes}.

    ``mode[path]`` misbehaves on that path: "truncate" announces every byte and sends half
    before closing; "chunked-truncate" sends half as one chunk and closes without the last
    chunk; "stall" sends half, sets ``stalled`` and waits until ``release`` is set; "endless"
    sends the file then zeros, announcing no length, until the client stops reading (or 16 MiB
    more); "announce-more" announces a byte more than the file.  ``redirect[path]`` answers
    302 to that location.  ``requests`` lists the paths asked for."""

    def __init__(self, files):
        self.files, self.mode, self.redirect, self.requests = dict(files), {}, {}, []
        self.release, self.stalled = threading.Event(), threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                server.requests.append(self.path)
                self.close_connection = True
                if self.path in server.redirect:
                    self.send_response(302)
                    self.send_header("Location", server.redirect[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, mode = server.files.get(self.path), server.mode.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if mode == "chunked-truncate":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = body[:len(body) // 2]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                    return
                if mode == "endless":
                    self.end_headers()
                    self.send_endlessly(body)
                    return
                self.send_header("Content-Length", str(len(body) + (mode == "announce-more")))
                self.end_headers()
                self.wfile.write(body if mode in (None, "announce-more") else body[:len(body) // 2])
                self.wfile.flush()
                if mode == "stall":
                    server.stalled.set()
                    server.release.wait(60)

            def send_endlessly(self, body):
                try:
                    self.wfile.write(body)
                    for _ in range(256):
                        self.wfile.write(bytes(1 << 16))
                except OSError:  # the client stopped reading and closed
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    """serve(files) -> a running Server, shut down after the test."""
    servers = []

    def start(files):
        servers.append(Server(files))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """Every test's data home is its own: nothing reaches ~/.cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("REFMETA_DATA", str(home))
    return home


@pytest.fixture(scope="module")
def zips():
    """{name: bytes} of the three real zips."""
    folder = omniglot_folder()
    return {name: (folder / name).read_bytes() for name in OMNIGLOT_FILES}


def served_in_layout(zips, prefix="python/"):
    return {f"/{prefix}{LAYOUT[name]}": data for name, data in zips.items()}


def fake_remotes(monkeypatch, contents):
    """Small stand-ins for the three zips, pinned to the hashes of ``contents``; returns them."""
    remotes = tuple(fetch.Remote(r.name, r.path, len(contents[r.name]), sha256(contents[r.name]))
                    for r in fetch.OMNIGLOT)
    monkeypatch.setattr(fetch, "OMNIGLOT", remotes)
    return remotes


FAKE = {name: bytes(range(256)) * (40 + i) for i, name in enumerate(OMNIGLOT_FILES)}


def one_line_error(capsys, argv, status=1):
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# ----- where the files come from and where they go -----
def test_the_default_urls_are_the_authors_repository():
    base = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
    assert fetch.default_urls() == {
        "images_background_small1.zip": base + "images_background_small1.zip",
        "images_background_small2.zip": base + "images_background_small2.zip",
        "all_runs.zip": base + "one-shot-classification/all_runs.zip"}
    assert [r.name for r in fetch.OMNIGLOT] == list(OMNIGLOT_FILES)
    assert fetch.parse_source(None) == ("http", base)
    assert fetch.parse_source(base.rstrip("/")) == ("http", base)


def test_the_pinned_sizes_and_hashes_are_those_of_the_published_files(zips):
    for remote in fetch.OMNIGLOT:
        assert (remote.size, remote.sha256) == (len(zips[remote.name]), sha256(zips[remote.name]))


def test_the_data_home_is_refmeta_data_else_xdg_cache_else_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("REFMETA_DATA", str(tmp_path / "data"))
    assert fetch.data_home() == tmp_path / "data"
    assert fetch.omniglot_dir() == tmp_path / "data" / "omniglot"
    monkeypatch.setenv("REFMETA_DATA", "")
    assert fetch.omniglot_dir() == tmp_path / "xdg" / "refmeta" / "omniglot"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG specification: ignored
    assert fetch.data_home() == tmp_path / "user" / ".cache" / "refmeta"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("REFMETA_DATA")
    assert fetch.omniglot_dir() == tmp_path / "user" / ".cache" / "refmeta" / "omniglot"
    assert fetch.fetch_command() == "refmeta data fetch omniglot"
    assert fetch.omniglot_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "omniglot"
    assert fetch.fetch_command({"REFMETA_DATA": "/a b"}) == "refmeta data fetch omniglot --dir '/a b'"


@pytest.mark.parametrize("source", ["ftp://example.org/x", "file://example.org/x", "no/such/folder"])
def test_a_bad_source_is_a_usage_error_of_one_line(capsys, source):
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", source], status=2)
    assert line.startswith(f"refmeta: error: --from {source}: ")


def test_an_unknown_data_set_or_a_missing_one_is_a_usage_error_of_one_line(capsys):
    line = one_line_error(capsys, ["data", "fetch", "mnist"], status=2)
    assert line.startswith("refmeta: error: argument dataset: invalid choice: 'mnist'")
    line = one_line_error(capsys, ["data", "fetch"], status=2)
    assert "the following arguments are required: dataset" in line


# ----- fetching -----
@pytest.mark.parametrize("layout", ["the repository's", "flat"])
def test_a_good_fetch_over_http_gives_the_pinned_files(capsys, serve, zips, data_home, layout):
    files = ({f"/python/{name}": data for name, data in zips.items()} if layout == "flat"
             else served_in_layout(zips))
    server = serve(files)
    assert cli.main(["data", "fetch", "omniglot", "--from", server.url + "python"]) == 0
    folder = data_home / "omniglot"
    assert sorted(os.listdir(folder)) == sorted(OMNIGLOT_FILES)  # no temporary left
    for name in OMNIGLOT_FILES:
        assert sha256((folder / name).read_bytes()) == sha256(zips[name])
    expected = [f"/python/{LAYOUT[name]}" for name in OMNIGLOT_FILES]
    if layout == "flat":  # all_runs.zip: the layout's place first (404), then flat
        expected.append("/python/all_runs.zip")
    assert server.requests == expected
    out = capsys.readouterr().out
    assert f"Omniglot: 3 files checked in {folder}" in out and "all_runs.zip: fetched from" in out


@pytest.mark.parametrize("how", ["folder in the layout", "flat folder", "file:// URL"])
def test_a_local_folder_or_file_url_is_a_source(tmp_path, zips, how):
    if how == "flat folder":
        source = str(omniglot_folder())
    else:
        for name, data in zips.items():
            path = tmp_path / "mirror" / LAYOUT[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        source = str(tmp_path / "mirror")
        if how == "file:// URL":
            source = (tmp_path / "mirror").as_uri()
    lines = []
    folder = fetch.fetch_omniglot(tmp_path / "d", source, say=lines.append)
    assert folder == tmp_path / "d" / "omniglot"
    assert sorted(os.listdir(folder)) == sorted(OMNIGLOT_FILES)
    for name in OMNIGLOT_FILES:
        assert (folder / name).read_bytes() == zips[name]
    assert len(lines) == 3 and all("SHA-256 checked" in line for line in lines)


def test_a_good_file_is_not_fetched_again_and_a_wrong_one_is(serve, zips, data_home):
    folder = data_home / "omniglot"
    folder.mkdir(parents=True)
    shutil.copy(omniglot_folder() / "images_background_small1.zip", folder)
    (folder / "all_runs.zip").write_bytes(b"not the zip")
    server = serve(served_in_layout(zips))
    lines = []
    done = fetch.fetch_omniglot(source=server.url + "python/", say=lines.append)
    assert done == folder
    assert server.requests == ["/python/images_background_small2.zip",
                               "/python/one-shot-classification/all_runs.zip"]
    assert "images_background_small1.zip: already in" in lines[0] and "not fetched again" in lines[0]
    assert lines[2].startswith(f"all_runs.zip: present but its SHA-256 is {sha256(b'not the zip')}")
    assert (folder / "all_runs.zip").read_bytes() == zips["all_runs.zip"]
    assert sorted(os.listdir(folder)) == sorted(OMNIGLOT_FILES)


@pytest.mark.parametrize("bar", ["tqdm", "plain"])
def test_a_download_draws_a_progress_bar(capsys, monkeypatch, tmp_path, bar):
    if bar == "plain":
        monkeypatch.setattr(progress_module, "tqdm", None)
    elif progress_module.tqdm is None:
        pytest.skip("tqdm is not installed")
    remotes = fake_remotes(monkeypatch, FAKE)
    fetch.fetch(remotes, tmp_path, str(make_flat(tmp_path / "src", FAKE)), show_progress=True)
    err = capsys.readouterr().err
    for remote in remotes:
        assert remote.name in err
    assert "MB=0.01/0.01" in err


def make_flat(folder, contents):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return folder


# ----- failures: one line, nothing left behind -----
def test_a_corrupted_file_is_refused_naming_both_hashes(capsys, monkeypatch, serve, data_home):
    remotes = fake_remotes(monkeypatch, FAKE)
    corrupted = bytearray(FAKE["images_background_small2.zip"])
    corrupted[100] ^= 1
    server = serve({f"/{name}": bytes(corrupted) if name.endswith("2.zip") else data
                    for name, data in FAKE.items()})
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url])
    assert line == (f"refmeta data fetch: images_background_small2.zip from {server.url}"
                    f"images_background_small2.zip: wrong SHA-256: expected {remotes[1].sha256}, "
                    f"got {sha256(bytes(corrupted))} ({len(corrupted):,} bytes, expected "
                    f"{len(corrupted):,}); nothing was kept")
    assert os.listdir(data_home / "omniglot") == ["images_background_small1.zip"]  # no temporary


@pytest.mark.parametrize("mode, message", [
    ("truncate", "the connection closed after 5,120 of 10,240 bytes"),
    ("chunked-truncate", "the download broke off"),
    ("stall", "the download broke off (timed out)"),
])
def test_a_connection_closed_mid_file_leaves_nothing(capsys, monkeypatch, serve, data_home, mode, message):
    fake_remotes(monkeypatch, FAKE)
    monkeypatch.setattr(download, "TIMEOUT_SECONDS", 0.5)
    server = serve({f"/{name}": data for name, data in FAKE.items()})
    server.mode["/images_background_small1.zip"] = mode
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url])
    assert line.startswith(f"refmeta data fetch: {server.url}images_background_small1.zip: {message}")
    assert line.endswith("nothing was kept")
    assert os.listdir(data_home / "omniglot") == []


def test_an_http_error_is_one_line_naming_the_url(capsys, serve, zips, data_home):
    server = serve({"/python/images_background_small1.zip": zips["images_background_small1.zip"]})
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url + "python/"])
    assert line == (f"refmeta data fetch: HTTP 404 Not Found for "
                    f"{server.url}python/images_background_small2.zip")
    assert os.listdir(data_home / "omniglot") == ["images_background_small1.zip"]
    server.files.clear()
    server.files["/python/images_background_small2.zip"] = zips["images_background_small2.zip"]
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url + "python/"])
    assert line == (f"refmeta data fetch: HTTP 404 Not Found for {server.url}python/"
                    f"one-shot-classification/all_runs.zip and {server.url}python/all_runs.zip")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_url_is_one_line(capsys, data_home):
    url = f"http://127.0.0.1:{closed_port()}/"
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", url])
    assert line == f"refmeta data fetch: cannot reach {url}images_background_small1.zip: Connection refused"
    assert os.listdir(data_home / "omniglot") == []


def test_an_unwritable_folder_is_one_line(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    homes = [tmp_path / "a-file", tmp_path / "a-file" / "below"]
    homes += [os.path.join("/proc", "refmeta-data")] if os.path.isdir("/proc") else []
    for home in homes:
        line = one_line_error(capsys, ["data", "fetch", "omniglot", "--dir", str(home),
                                       "--from", str(omniglot_folder())])
        assert line.startswith(f"refmeta data fetch: cannot create or write the folder "
                               f"{os.path.join(home, 'omniglot')}: ")


def test_a_local_folder_without_a_file_is_one_line_naming_where_it_looked(capsys, monkeypatch, tmp_path,
                                                                         data_home):
    fake_remotes(monkeypatch, FAKE)
    source = make_flat(tmp_path / "src", {name: FAKE[name] for name in OMNIGLOT_FILES[:2]})
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", str(source)])
    assert line == (f"refmeta data fetch: all_runs.zip: not in {source} (looked for "
                    f"{source / 'one-shot-classification' / 'all_runs.zip'} and {source / 'all_runs.zip'})")
    assert sorted(os.listdir(data_home / "omniglot")) == sorted(OMNIGLOT_FILES[:2])


def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, monkeypatch, tmp_path, data_home):
    remotes = fake_remotes(monkeypatch, FAKE)
    writes = []

    def fill_up(out, chunk):
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(len(chunk))
        out.write(chunk)

    monkeypatch.setattr(fetch, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(fetch, "_write", fill_up)
    source = make_flat(tmp_path / "src", FAKE)
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", str(source)])
    target = data_home / "omniglot" / remotes[0].name
    assert line == f"refmeta data fetch: cannot write {target}: No space left on device; nothing was kept"
    assert writes == [1024] and os.listdir(data_home / "omniglot") == []


def test_stderr_of_the_process_is_one_line(serve, data_home):
    server = serve({})
    result = subprocess.run([sys.executable, "-m", "refmeta", "data", "fetch", "omniglot",
                             "--from", server.url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"refmeta data fetch: HTTP 404 Not Found for {server.url}images_background_small1.zip"]


@pytest.mark.parametrize("signum, status, what", [(signal.SIGTERM, 143, "terminated"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_fetch_stopped_by_a_signal_leaves_no_partial_file(serve, zips, data_home, signum, status, what):
    server = serve(served_in_layout(zips))
    server.mode["/python/images_background_small1.zip"] = "stall"
    process = subprocess.Popen([sys.executable, "-m", "refmeta", "data", "fetch", "omniglot",
                                "--from", server.url + "python/"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stalled.wait(60), "the download never began"
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == status
    assert err.splitlines() == [f"refmeta data fetch: {what}; no partial file was left"]
    assert os.listdir(data_home / "omniglot") == []


# ----- the demos find what was fetched -----
def demo_args(argv):
    parser = options.parser("refmeta demo protonet-omniglot", protonet_omniglot.__doc__)
    protonet_omniglot.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_demo_finds_the_fetched_data_in_refmeta_data(capsys, monkeypatch, tmp_path):
    home = tmp_path / "D"
    assert cli.main(["data", "fetch", "omniglot", "--from", str(omniglot_folder()), "--dir", str(home)]) == 0
    monkeypatch.setenv("REFMETA_DATA", str(home))
    args = demo_args(["--fast"])
    assert args.data == str(home / "omniglot")
    options.check_data_folder(args.data, OMNIGLOT_FILES)  # no UsageError
    assert str(home / "omniglot") in capsys.readouterr().out


def test_missing_data_in_the_data_home_names_the_files_and_the_fetch_command(capsys, monkeypatch, tmp_path):
    home = tmp_path / "empty home"
    monkeypatch.setenv("REFMETA_DATA", str(home))
    line = one_line_error(capsys, ["demo", "protonet-omniglot", "--fast", "--out", str(tmp_path / "out")],
                          status=2)
    assert line == (f"refmeta: error: no Omniglot data in {home / 'omniglot'} (missing "
                    f"{', '.join(OMNIGLOT_FILES)}): fetch it with "
                    f"`refmeta data fetch omniglot --dir '{home}'`")
    monkeypatch.delenv("REFMETA_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user" / ".cache" / "refmeta" / "omniglot").mkdir(parents=True)
    shutil.copy(omniglot_folder() / "all_runs.zip", tmp_path / "user" / ".cache" / "refmeta" / "omniglot")
    with pytest.raises(options.UsageError) as raised:
        options.check_data_folder(demo_args([]).data, OMNIGLOT_FILES)
    assert str(raised.value) == (
        f"no Omniglot data in {tmp_path / 'user' / '.cache' / 'refmeta' / 'omniglot'} (missing "
        "images_background_small1.zip, images_background_small2.zip): "
        "fetch it with `refmeta data fetch omniglot`")


# ----- every read bounded by the pinned size -----
def test_an_endless_body_is_read_one_byte_past_the_pinned_size_and_no_further(capsys, monkeypatch, serve,
                                                                              data_home):
    remotes = fake_remotes(monkeypatch, FAKE)
    server = serve({f"/{name}": data for name, data in FAKE.items()})
    server.mode["/images_background_small1.zip"] = "endless"
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url])
    size = remotes[0].size
    assert line == (f"refmeta data fetch: {server.url}images_background_small1.zip holds more than the "
                    f"{size:,} bytes of images_background_small1.zip: reading stopped at {size + 1:,}, "
                    "nothing was kept")
    assert os.listdir(data_home / "omniglot") == []


def test_a_body_announced_larger_than_the_pinned_size_is_not_read(capsys, monkeypatch, serve, data_home):
    remotes = fake_remotes(monkeypatch, FAKE)
    server = serve({f"/{name}": data for name, data in FAKE.items()})
    server.mode["/images_background_small1.zip"] = "announce-more"
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url])
    assert line == (f"refmeta data fetch: {server.url}images_background_small1.zip is "
                    f"{remotes[0].size + 1:,} bytes; images_background_small1.zip is {remotes[0].size:,}: "
                    "not read, nothing was kept")


def test_a_huge_local_file_is_not_copied(capsys, monkeypatch, tmp_path, data_home):
    remotes = fake_remotes(monkeypatch, FAKE)
    source = make_flat(tmp_path / "src", FAKE)
    with open(source / remotes[0].name, "r+b") as f:
        f.truncate(64 << 20)                                   # sparse: no disk space used
    reads = []
    real_chunks = download._chunks
    monkeypatch.setattr(download, "_chunks", lambda *a: (reads.append(len(c)) or c for c in real_chunks(*a)))
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", str(source)])
    assert line == (f"refmeta data fetch: {source / remotes[0].name} is 67,108,864 bytes; "
                    f"{remotes[0].name} is {remotes[0].size:,}: not read, nothing was kept")
    assert reads == [] and os.listdir(data_home / "omniglot") == []


def test_a_local_file_that_grows_while_read_stops_one_byte_past(monkeypatch, tmp_path):
    remotes = fake_remotes(monkeypatch, FAKE)
    stream = io.BytesIO(bytes(10 << 20))                       # announced as the right size
    with pytest.raises(fetch.FetchError, match=f"reading stopped at {remotes[0].size + 1:,}"):
        download._download_from(stream, "here", remotes[0].size, remotes[0], False)
    assert stream.tell() == remotes[0].size + 1


# ----- redirects and sources: one line saying what happened -----
def test_a_redirect_to_ftp_is_refused_not_followed(capsys, serve, data_home):
    server = serve({})
    server.redirect["/images_background_small1.zip"] = "ftp://127.0.0.1/images_background_small1.zip"
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url])
    assert line == (f"refmeta data fetch: {server.url}images_background_small1.zip redirects to "
                    "ftp://127.0.0.1/images_background_small1.zip; refmeta follows redirects to "
                    "http:// and https:// URLs only")


def test_a_redirect_loop_is_one_line(capsys, serve, data_home):
    server = serve({})
    server.redirect["/images_background_small1.zip"] = "/images_background_small1.zip"
    line = one_line_error(capsys, ["data", "fetch", "omniglot", "--from", server.url])
    url = f"{server.url}images_background_small1.zip"
    assert line.startswith(f"refmeta data fetch: {url}: a redirect loop (gave up after ")
    assert line.endswith(f" redirects, the last to {url})")


def test_redirects_are_followed_to_http(capsys, monkeypatch, serve, data_home):
    fake_remotes(monkeypatch, FAKE)
    server = serve({f"/real/{name}": data for name, data in FAKE.items()})
    for name in FAKE:
        server.redirect[f"/{name}"] = f"/real/{name}"
    assert cli.main(["data", "fetch", "omniglot", "--from", server.url]) == 0
    assert sorted(os.listdir(data_home / "omniglot")) == sorted(OMNIGLOT_FILES)


@pytest.mark.parametrize("argv, message", [
    (["--from", "http://"], "--from http://: the URL names no host; expected http://HOST/PATH"),
    (["--from", "https://[::1/x"], "--from https://[::1/x: not a valid URL (Invalid IPv6 URL); expected "
                                   "http(s)://HOST/PATH, file:///PATH or a local folder"),
    (["--from", "http://host:port/"], "--from http://host:port/: not a valid URL (Port could not be cast "
                                      "to integer value as 'port')"),
    (["--from", ""], "--from: expected a URL or a folder; got an empty string"),
    (["--dir", ""], "--dir: expected the data home's folder; got an empty path"),
])
def test_a_source_or_home_that_names_nothing_is_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["data", "fetch", "omniglot", *argv], status=2)
    assert line.startswith(f"refmeta: error: {message}")
    assert os.listdir(tmp_path) == []


def test_dot_dot_in_the_home_makes_no_stray_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "fetch", "omniglot", "--dir", "a/../b", "--from", str(omniglot_folder())]) == 0
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert sorted(os.listdir(tmp_path / "b" / "omniglot")) == sorted(OMNIGLOT_FILES)
    assert f"Omniglot: 3 files checked in {tmp_path / 'b' / 'omniglot'}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_in_a_files_place_is_refused_not_read(tmp_path, data_home, kind):
    target = data_home / "omniglot" / OMNIGLOT_FILES[0]
    target.parent.mkdir(parents=True)
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    result = subprocess.run([sys.executable, "-m", "refmeta", "data", "fetch", "omniglot",
                             "--from", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)   # a FIFO read would hang
    what = "a folder" if kind == "folder" else "a pipe"
    assert result.returncode == 1 and result.stderr == (
        f"refmeta data fetch: cannot write {target}: it is {what}, not a regular file "
        "(refmeta replaces only regular files)\n")
