"""`download()` against a loopback HTTP server serving generated files (127.0.0.1 only)."""

import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
import types

import numpy as np
import pytest

from fedast_mpi.data import download as dl
from fedast_mpi.data import load_task_data
from fedast_mpi.errors import ConfigError, DataError

TIMEOUT = 5.0


class Server:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 and records the paths requested."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.stop()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_gz(arr, magic) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return gzip.compress(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
                         + arr.tobytes())


def serve_idx(server, monkeypatch, name="mnist", n_train=20, n_test=6):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n_train, 28, 28)), 0x803),
             "train-labels-idx1-ubyte.gz": idx_gz(np.arange(n_train) % 10, 0x801),
             "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n_test, 28, 28)), 0x803),
             "t10k-labels-idx1-ubyte.gz": idx_gz(np.arange(n_test) % 10, 0x801)}
    for fname, body in files.items():
        server.files[f"/mirror/{fname}"] = body
    monkeypatch.setitem(dl.CHECKSUMS, name, {f: md5(b) for f, b in files.items()})
    return files


def task(dataset, data_dir, kind="iid"):
    return types.SimpleNamespace(name="t", dataset=dataset, dataset_args={}, data_dir=str(data_dir),
                                 partition=types.SimpleNamespace(kind=kind, alpha=0.5,
                                                                 samples_per_client=None))


def leftovers(root):
    return sorted(p.name for p in root.rglob("*")
                  if p.name.startswith(".") or p.name.endswith(".part"))


def test_idx_download_verify_and_skip(server, monkeypatch, tmp_path):
    files = serve_idx(server, monkeypatch)
    got = dl.download("mnist", tmp_path / "data", mirror=server.url, timeout=TIMEOUT)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert got == [raw / f for f in files]
    assert all(p.read_bytes() == files[p.name] for p in got)
    assert sorted(server.requests) == sorted(f"/mirror/{f}" for f in files)
    assert leftovers(tmp_path) == []
    # the reader finds them with data_dir = the download folder
    d = load_task_data(task("mnist", tmp_path / "data"), 4, 0)
    assert d.train_x.shape == (20, 1, 28, 28) and d.test_y.shape == (6,)
    # a second call fetches nothing; a file with a wrong md5 is fetched again
    assert dl.download("mnist", tmp_path / "data", mirror=server.url + "/", timeout=TIMEOUT) == got
    assert len(server.requests) == 4
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")
    dl.download("mnist", tmp_path / "data", mirror=server.url, timeout=TIMEOUT)
    assert server.requests[4:] == ["/mirror/t10k-labels-idx1-ubyte.gz"]
    assert (raw / "t10k-labels-idx1-ubyte.gz").read_bytes() == files["t10k-labels-idx1-ubyte.gz"]


def test_fmnist_goes_to_its_own_folder(server, monkeypatch, tmp_path):
    serve_idx(server, monkeypatch, "fmnist", n_train=12)
    got = dl.download("fmnist", tmp_path, mirror=server.url, timeout=TIMEOUT)
    assert all(p.parent == tmp_path / "FashionMNIST" / "raw" for p in got)
    assert load_task_data(task("fmnist", tmp_path), 3, 0).train_x.shape[0] == 12


def test_corrupted_file_leaves_nothing(server, monkeypatch, tmp_path):
    files = serve_idx(server, monkeypatch)
    server.files["/mirror/t10k-images-idx3-ubyte.gz"] = \
        b"corrupted" + files["t10k-images-idx3-ubyte.gz"][9:]
    with pytest.raises(DataError) as e:
        dl.download("mnist", tmp_path, mirror=server.url, timeout=TIMEOUT)
    msg = str(e.value)
    assert "\n" not in msg and "t10k-images-idx3-ubyte.gz" in msg and "md5" in msg
    assert md5(files["t10k-images-idx3-ubyte.gz"]) in msg
    assert md5(server.files["/mirror/t10k-images-idx3-ubyte.gz"]) in msg
    assert not (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path) == []


def test_http_404_and_unreachable(server, monkeypatch, tmp_path):
    files = serve_idx(server, monkeypatch)
    del server.files["/mirror/train-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError) as e:
        dl.download("mnist", tmp_path, mirror=server.url, timeout=TIMEOUT)
    msg = str(e.value)
    assert "\n" not in msg and "404" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert not (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").exists()
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes() == \
        files["train-images-idx3-ubyte.gz"]
    assert leftovers(tmp_path) == []
    # nobody listening: a closed loopback port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as e:
        dl.download("mnist", tmp_path / "b", mirror=f"http://127.0.0.1:{port}/", timeout=TIMEOUT)
    assert "\n" not in str(e.value) and "cannot download" in str(e.value)
    assert leftovers(tmp_path) == []


def cifar_tarball(extra=None) -> bytes:
    import pickle
    rng = np.random.default_rng(1)
    members = {}
    for i, f in enumerate(dl.ARCHIVES["cifar10"][1]):
        n = 3 + i
        members[f"cifar-10-batches-py/{f}"] = pickle.dumps(
            {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": [j % 10 for j in range(n)]})
    members.update(extra or {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, body in members.items():
            if isinstance(body, tarfile.TarInfo):
                tar.addfile(body)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_cifar_tarball_download_and_extract(server, monkeypatch, tmp_path):
    body = cifar_tarball()
    server.files["/mirror/cifar-10-python.tar.gz"] = body
    monkeypatch.setitem(dl.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": md5(body)})
    got = dl.download("cifar10", tmp_path, mirror=server.url, timeout=TIMEOUT)
    folder = tmp_path / "cifar-10-batches-py"
    assert got == [folder / f for f in dl.ARCHIVES["cifar10"][1]]
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == body
    assert leftovers(tmp_path) == []
    d = load_task_data(task("cifar10", tmp_path), 2, 0)
    assert d.train_x.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and d.test_x.shape == (8, 3, 32, 32)
    assert dl.download("cifar10", tmp_path, mirror=server.url, timeout=TIMEOUT) == got
    assert server.requests == ["/mirror/cifar-10-python.tar.gz"]
    # a removed batch is restored from the verified tarball without a new request
    (folder / "data_batch_2").unlink()
    dl.download("cifar10", tmp_path, mirror=server.url, timeout=TIMEOUT)
    assert (folder / "data_batch_2").is_file() and len(server.requests) == 1


@pytest.mark.parametrize("evil", ["traversal", "absolute", "symlink", "outside"])
def test_cifar_tarball_unsafe_members(server, monkeypatch, tmp_path, evil):
    if evil == "symlink":
        link = tarfile.TarInfo("cifar-10-batches-py/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        extra = {"link": link}
    else:
        name = {"traversal": "cifar-10-batches-py/../../escaped", "absolute": "/tmp/escaped-fedast",
                "outside": "other/escaped"}[evil]
        extra = {name: b"boom"}
    body = cifar_tarball(extra)
    server.files["/mirror/cifar-10-python.tar.gz"] = body
    monkeypatch.setitem(dl.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": md5(body)})
    dest = tmp_path / "deep" / "to"
    with pytest.raises(DataError) as e:
        dl.download("cifar10", dest, mirror=server.url, timeout=TIMEOUT)
    assert "\n" not in str(e.value) and "unexpected member" in str(e.value)
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))
    assert not (dest / "cifar-10-batches-py").exists()
    assert leftovers(tmp_path) == []


def test_shakespeare_and_unknown_names(tmp_path):
    with pytest.raises(DataError) as e:
        dl.download("shakespeare", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "preprocess.sh -s niid --sf 1.0 -k 0 -t sample -tf 0.8" in msg
    assert str(tmp_path / "shakespeare" / "train") in msg
    with pytest.raises(ConfigError):
        dl.download("digits", tmp_path)


def test_checksum_table_is_the_standard_one():
    assert dl.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert dl.CHECKSUMS["fmnist"]["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert dl.CHECKSUMS["cifar100"] == {
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
    assert dl.BASE_URLS["mnist"] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert all(len(f) == 4 for n, f in dl.CHECKSUMS.items() if n in ("mnist", "fmnist"))


def test_cli_data_download(server, monkeypatch, tmp_path, capsys):
    from fedast_mpi.cli import main
    files = serve_idx(server, monkeypatch)
    assert main(["data", "download", "mnist", "--to", str(tmp_path / "d"),
                 "--mirror", server.url]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in printed) == sorted(files)
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", {f: "0" * 32 for f in files})
    assert main(["data", "download", "mnist", "--to", str(tmp_path / "e"),
                 "--mirror", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedast-mpi: error:") and "\n" not in err
