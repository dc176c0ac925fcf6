"""Fetch the paper's standard dataset files (on a machine with internet, e.g. a login node).

`download(name, to)` puts them where the readers look with `data_dir: <to>`:
  mnist    -> <to>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz  (torchvision's mirror)
  fmnist   -> <to>/FashionMNIST/raw/... the same four names                (Zalando's S3 bucket)
  cifar10  -> <to>/cifar-10-python.tar.gz, extracted to <to>/cifar-10-batches-py/
  cifar100 -> <to>/cifar-100-python.tar.gz, extracted to <to>/cifar-100-python/
Every file is written under a temporary name, checked against its md5 and only then renamed
into place; a file already present with the right md5 is not fetched again. Shakespeare has
no download: LEAF's preprocessing must be run (see SHAKESPEARE_HELP).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from fedast_mpi.errors import ConfigError, DataError

BASE_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fmnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
}

CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fmnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}
"""Files of each dataset (in download order) and their md5."""

SUBFOLDERS = {"mnist": "MNIST/raw", "fmnist": "FashionMNIST/raw", "cifar10": "", "cifar100": ""}
"""Where under `to` the downloaded files go."""

ARCHIVES = {
    "cifar10": ("cifar-10-batches-py", ("data_batch_1", "data_batch_2", "data_batch_3",
                                        "data_batch_4", "data_batch_5", "test_batch",
                                        "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
}
"""The folder each tarball extracts to and the files it must contain."""

SHAKESPEARE_HELP = (
    "Shakespeare has no direct download: run LEAF's preprocessing in a LEAF checkout "
    "(https://github.com/TalwalkarLab/leaf, data/shakespeare: "
    "`./preprocess.sh -s niid --sf 1.0 -k 0 -t sample -tf 0.8`, as PAPER.md §6.1) and copy its "
    "data/train/*.json and data/test/*.json to {to}/shakespeare/train and {to}/shakespeare/test "
    "(or train/ and test/ directly in the task's data_dir)")

_CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    """Hex md5 of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _one_line(text) -> str:
    return " ".join(str(text).split())


def fetch(url: str, dest: Path, md5: str, *, timeout: float) -> None:
    """Download url to dest via a temporary file in dest's folder; verify md5, then rename.

    Any failure is a one-line DataError and leaves neither dest nor the temporary file behind.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        h.update(block)
                        out.write(block)
            except urllib.error.HTTPError as exc:
                raise DataError(f"{url}: HTTP {exc.code} {_one_line(exc.reason)}") from exc
            except urllib.error.URLError as exc:
                raise DataError(f"{url}: cannot download ({_one_line(exc.reason)})") from exc
            except (OSError, ValueError) as exc:  # timeouts, resets, bad URLs
                raise DataError(f"{url}: cannot download "
                                f"({_one_line(exc) or type(exc).__name__})") from exc
        got = h.hexdigest()
        if got != md5:
            raise DataError(f"{dest}: md5 mismatch for {url} (expected {md5}, got {got}); "
                            f"file removed")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _checked_members(tar: tarfile.TarFile, archive: Path, folder: str) -> list[tarfile.TarInfo]:
    """The archive's members, each a plain file or folder inside `folder`, or a DataError."""
    members = tar.getmembers()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if (m.name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != folder
                or not (m.isfile() or m.isdir())):
            raise DataError(f"{archive}: unexpected member {m.name!r} "
                            f"(expected plain files under {folder}/)")
    return members


def extract(archive: Path, to: Path, folder: str, expected: tuple[str, ...]) -> list[Path]:
    """Safely extract a CIFAR tarball's `folder` into `to` (via a temporary folder); its files."""
    tmp = Path(tempfile.mkdtemp(dir=to, prefix=f".{folder}.", suffix=".part"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _checked_members(tar, archive, folder)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive}: cannot extract ({_one_line(exc)})") from exc
        missing = [f for f in expected if not (tmp / folder / f).is_file()]
        if missing:
            raise DataError(f"{archive}: {folder}/ lacks {', '.join(missing)}")
        target = to / folder
        target.mkdir(exist_ok=True)
        for src in sorted((tmp / folder).iterdir()):
            if src.is_file():
                os.replace(src, target / src.name)
        return [target / f for f in expected]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, to: Path, mirror: str | None = None, *, timeout: float = 60) -> list[Path]:
    """Fetch dataset `name` into `to` (see the module docstring) and return its files.

    mirror replaces the base URL (file names are appended). Returns the IDX .gz files, or the
    CIFAR files extracted from the tarball. Raises ConfigError for an unknown name and
    DataError for Shakespeare and for any failed download, checksum or extraction.
    """
    if name == "shakespeare":
        raise DataError(SHAKESPEARE_HELP.format(to=to))
    if name not in CHECKSUMS:
        raise ConfigError(f"no download for dataset {name!r} "
                          f"(known: {', '.join(sorted(CHECKSUMS))}, shakespeare)")
    to = Path(to)
    dest_dir = to / SUBFOLDERS[name]
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest_dir}: cannot create ({_one_line(exc)})") from exc
    base = (mirror if mirror is not None else BASE_URLS[name]).rstrip("/") + "/"
    files, fetched = [], False
    for fname, md5 in CHECKSUMS[name].items():
        dest = dest_dir / fname
        if not (dest.is_file() and md5sum(dest) == md5):
            fetch(base + fname, dest, md5, timeout=timeout)
            fetched = True
        files.append(dest)
    if name not in ARCHIVES:
        return files
    folder, expected = ARCHIVES[name]
    present = [to / folder / f for f in expected]
    if not fetched and all(p.is_file() for p in present):
        return present  # tarball verified and already extracted
    out = []
    for archive in files:
        out.extend(extract(archive, to, folder, expected))
    return out
