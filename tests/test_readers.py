"""The standard-file readers (MNIST/FMNIST IDX, CIFAR pickles, LEAF Shakespeare JSON) on tiny
generated files."""

import gzip
import json
import pickle
import struct
import types

import numpy as np
import pytest

from fedast_mpi.catalog import DATASETS
from fedast_mpi.data import leaf, load_task_data
from fedast_mpi.data.sample_files import (cifar_batch, idx_bytes, write_cifar10, write_idx_set,
                                          write_shakespeare)
from fedast_mpi.errors import ConfigError, DataError


def task(dataset, data_dir, kind="iid", alpha=0.5, spc=None, name="t0"):
    """A duck-typed task config as the config module provides it."""
    return types.SimpleNamespace(name=name, dataset=dataset, dataset_args={},
                                 data_dir=None if data_dir is None else str(data_dir),
                                 partition=types.SimpleNamespace(kind=kind, alpha=alpha,
                                                                 samples_per_client=spc))


def same(a, b):
    return (a.train_x.equal(b.train_x) and a.train_y.equal(b.train_y) and a.test_x.equal(b.test_x)
            and a.test_y.equal(b.test_y) and len(a.shards) == len(b.shards)
            and all(np.array_equal(s, t) for s, t in zip(a.shards, b.shards)))


def one_line_error(exc_info, *fragments):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert str(f) in msg, (f, msg)
    return msg


# ----------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_plain_and_gzipped(tmp_path, gz):
    raw = write_idx_set(tmp_path, gz=gz)
    d = load_task_data(task("mnist", tmp_path, spc=5), 4, 0)
    assert d.train_x.shape == (40, 1, 28, 28) and d.test_x.shape == (12, 1, 28, 28)
    assert str(d.train_x.dtype) == "torch.float32" and str(d.train_y.dtype) == "torch.int64"
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10
    want = (raw["train-images-idx3-ubyte"].reshape(40, 1, 28, 28) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(d.train_x.numpy(), want, rtol=0, atol=1e-5)
    want = (raw["t10k-images-idx3-ubyte"].reshape(12, 1, 28, 28) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(d.test_x.numpy(), want, rtol=0, atol=1e-5)
    assert d.train_y.tolist() == raw["train-labels-idx1-ubyte"].tolist()
    assert d.test_y.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()
    assert len(d.shards) == 4 and all(len(s) == 5 for s in d.shards)
    assert same(d, load_task_data(task("mnist", tmp_path, spc=5), 4, 0))


def test_idx_torchvision_layout_and_mixed_gz(tmp_path):
    mn = write_idx_set(tmp_path / "MNIST" / "raw", seed=1, gz=("train-images-idx3-ubyte",))
    fm = write_idx_set(tmp_path / "FashionMNIST" / "raw", seed=2, n_train=30, gz=True)
    a = load_task_data(task("mnist", tmp_path, kind="dirichlet", alpha=0.3, spc=8), 6, 0)
    b = load_task_data(task("fmnist", tmp_path, kind="dirichlet", alpha=0.3, spc=8), 6, 0)
    assert a.train_x.shape[0] == 40 and b.train_x.shape[0] == 30
    np.testing.assert_allclose(a.train_x.numpy()[:, 0] * 0.3081 + 0.1307,
                               mn["train-images-idx3-ubyte"] / 255.0, atol=1e-5)
    np.testing.assert_allclose(b.train_x.numpy()[:, 0] * 0.3081 + 0.1307,
                               fm["train-images-idx3-ubyte"] / 255.0, atol=1e-5)
    assert all(len(s) == 8 and s.max() < 30 for s in b.shards)
    # the raw/ folder is preferred over files directly in data_dir
    write_idx_set(tmp_path, seed=3, n_train=20)
    assert load_task_data(task("mnist", tmp_path), 2, 0).train_x.shape[0] == 40


def test_idx_wrong_magic(tmp_path):
    write_idx_set(tmp_path, gz=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28)), 0x801)[:4] + b"\0" * 100))
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", tmp_path), 2, 0)
    one_line_error(e, bad, "not an IDX image file", "magic 0x00000801", "expected 0x00000803")
    # labels file given an image header
    write_idx_set(tmp_path, gz=True)
    lab = tmp_path / "t10k-labels-idx1-ubyte.gz"
    lab.write_bytes(gzip.compress(idx_bytes(np.zeros((12, 28, 28)), 0x803)))
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", tmp_path), 2, 0)
    one_line_error(e, lab, "not an IDX label file", "expected 0x00000801")


def test_idx_truncated_and_corrupt(tmp_path):
    write_idx_set(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-7])
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", tmp_path), 2, 0)
    one_line_error(e, img, "truncated")
    img.write_bytes(img.read_bytes()[:10])  # inside the header
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", tmp_path), 2, 0)
    one_line_error(e, img, "truncated")
    # a broken gzip stream
    gzdir = tmp_path / "gz"
    write_idx_set(gzdir, gz=True)
    gzp = gzdir / "train-images-idx3-ubyte.gz"
    gzp.write_bytes(gzp.read_bytes()[:40])
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", gzdir), 2, 0)
    one_line_error(e, gzp)
    # label count not matching the images
    write_idx_set(gzdir, gz=True)
    lab = gzdir / "train-labels-idx1-ubyte.gz"
    lab.write_bytes(gzip.compress(idx_bytes(np.zeros(39), 0x801)))
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", gzdir), 2, 0)
    one_line_error(e, lab, "39 labels", "40 images")


def test_idx_missing_file(tmp_path):
    write_idx_set(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load_task_data(task("mnist", tmp_path), 2, 0)
    one_line_error(e, "t10k-labels-idx1-ubyte", tmp_path / "MNIST" / "raw")


# --------------------------------------------------------------------------------------- CIFAR

def test_cifar10_shapes_normalisation_labels(tmp_path):
    folder, parts, test = write_cifar10(tmp_path)
    for data_dir in (tmp_path, folder):  # the parent or the batch folder itself
        d = load_task_data(task("cifar10", data_dir, kind="dirichlet", alpha=0.5, spc=6), 5, 1)
        assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (7, 3, 32, 32)
        assert d.input_shape == (3, 32, 32) and d.n_classes == 10
        assert str(d.train_x.dtype) == "torch.float32" and str(d.test_y.dtype) == "torch.int64"
        raw = np.concatenate([p[0] for p in parts]).reshape(20, 3, 32, 32)
        np.testing.assert_allclose(d.train_x.numpy(), (raw / 255.0 - 0.5) / 0.5, atol=1e-5)
        assert d.train_y.tolist() == sum((p[1] for p in parts), [])
        assert d.test_y.tolist() == test[1]
        np.testing.assert_allclose(d.test_x.numpy(),
                                   (test[0].reshape(7, 3, 32, 32) / 255.0 - 0.5) / 0.5, atol=1e-5)
        assert len(d.shards) == 5 and all(len(s) == 6 for s in d.shards)
    assert d.train_x.min() >= -1.0 and d.train_x.max() <= 1.0


def test_cifar100_fine_labels_and_channels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    tr = cifar_batch(folder / "train", 30, b"fine_labels", 100, 5, protocol=4)
    te = cifar_batch(folder / "test", 9, b"fine_labels", 100, 6, protocol=2)
    d = load_task_data(task("cifar100", tmp_path, kind="iid", spc=10), 3, 0)
    assert d.n_classes == 100 and d.train_x.shape == (30, 3, 32, 32) \
        and d.test_x.shape == (9, 3, 32, 32)
    assert d.train_y.tolist() == tr[1] and d.test_y.tolist() == te[1]
    mean = np.array([0.5071, 0.4867, 0.4408]).reshape(1, 3, 1, 1)
    std = np.array([0.2675, 0.2565, 0.2761]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(d.train_x.numpy(),
                               (tr[0].reshape(30, 3, 32, 32) / 255.0 - mean) / std, atol=1e-5)
    # channel-major: pixel 0 of channel 1 is byte 1024 of the row
    assert d.train_x[0, 1, 0, 0].item() == pytest.approx((tr[0][0, 1024] / 255.0 - 0.4867) / 0.2565,
                                                         abs=1e-5)


def py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle (protocol 2) writes it: str keys and raw data as
    SHORT_BINSTRING/BINSTRING."""
    def s(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 \
            else (b"T" + struct.pack("<I", len(b)) + b)

    def i(n):
        return b"J" + struct.pack("<i", n)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + b"\x89\x88\x87R(" + i(3) + s(b"|") + b"NNN"
             + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85"
             + s(b"b") + b"\x87R(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
             + dtype + b"\x89" + s(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"py2") + s(b"data") + array + s(b"labels")
            + b"](" + b"".join(i(v) for v in labels) + b"eu.")


def test_cifar_python2_pickles(tmp_path):
    """The real batches were written by Python 2; str keys from py3 writers are accepted too."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    raws = []
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
              "test_batch"):
        data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        if f == "data_batch_5":
            (folder / f).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        else:
            (folder / f).write_bytes(py2_pickle(data, labels))
        raws.append((data, labels))
    d = load_task_data(task("cifar10", tmp_path), 2, 0)
    want = np.concatenate([r[0] for r in raws[:5]]).reshape(15, 3, 32, 32)
    np.testing.assert_allclose(d.train_x.numpy(), (want / 255.0 - 0.5) / 0.5, atol=1e-5)
    assert d.train_y.tolist() == sum((r[1] for r in raws[:5]), []) \
        and d.test_y.tolist() == raws[5][1]


def test_cifar_malformed(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    bad = folder / "data_batch_3"
    cifar_batch(bad, 4, b"labels", 10, 0, drop=b"labels")
    with pytest.raises(DataError) as e:
        load_task_data(task("cifar10", tmp_path), 2, 0)
    one_line_error(e, bad, "b'labels'")
    # a CIFAR-10 batch is not a CIFAR-100 one (no fine_labels)
    cifar_batch(tmp_path / "c100" / "train", 4, b"labels", 10, 0)
    cifar_batch(tmp_path / "c100" / "test", 4, b"labels", 10, 0)
    with pytest.raises(DataError) as e:
        load_task_data(task("cifar100", tmp_path / "c100"), 2, 0)
    one_line_error(e, tmp_path / "c100" / "train", "b'fine_labels'")
    # truncated pickle
    write_cifar10(tmp_path)
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError) as e:
        load_task_data(task("cifar10", tmp_path), 2, 0)
    one_line_error(e, bad, "not a CIFAR python pickle batch")
    # a pickle that would call a function is refused, not run
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError) as e:
        load_task_data(task("cifar10", tmp_path), 2, 0)
    one_line_error(e, bad, "not allowed")
    assert not marker.exists()
    # wrong data shape; a missing test batch
    write_cifar10(tmp_path)
    bad.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError) as e:
        load_task_data(task("cifar10", tmp_path), 2, 0)
    one_line_error(e, bad, "(n, 3072)")
    write_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError) as e:
        load_task_data(task("cifar10", tmp_path), 2, 0)
    one_line_error(e, folder / "test_batch", "missing")


# --------------------------------------------------------------------------------- Shakespeare

def user_rows(train_docs):
    """{user: [(x string, y string)]} in file order."""
    return {u: list(zip(doc["user_data"][u]["x"], doc["user_data"][u]["y"]))
            for doc in train_docs for u in doc["users"]}


def test_all_letters_is_leafs_set():
    assert len(leaf.ALL_LETTERS) == 80 and len(set(leaf.ALL_LETTERS)) == 80
    assert leaf.ALL_LETTERS[0] == "\n" and leaf.ALL_LETTERS[-1] == "}" \
        and leaf.ALL_LETTERS.index("a") == 53 and leaf.ALL_LETTERS.index("A") == 25
    assert leaf.encode([leaf.ALL_LETTERS], 80, "f", "x").tolist() == [list(range(80))]
    assert DATASETS["shakespeare"].partitions[0] == "natural"


def test_shakespeare_encoding_round_trip(tmp_path):
    train, test = write_shakespeare(tmp_path)
    d = load_task_data(task("shakespeare", tmp_path, kind="natural"), 5, 0)
    assert d.train_x.shape == (20, 80) and d.test_x.shape == (7, 80) and d.train_y.shape == (20,)
    assert str(d.train_x.dtype) == "torch.uint8" and str(d.train_y.dtype) == "torch.int64"
    assert d.input_shape == (80,) and d.n_classes == 80
    assert 0 <= d.train_x.min() and d.train_x.max() < 80 and d.train_y.max() < 80
    rows = [r for rows in user_rows(train).values() for r in rows]
    assert [(leaf.decode(x), leaf.decode(y)) for x, y in zip(d.train_x, d.train_y)] == rows
    # union of every user's test samples
    test_rows = [r for rows in user_rows(test).values() for r in rows]
    assert [(leaf.decode(x), leaf.decode(y)) for x, y in zip(d.test_x, d.test_y)] == test_rows


def test_shakespeare_one_user_per_client(tmp_path):
    train, _ = write_shakespeare(tmp_path)
    rows = user_rows(train)
    d = load_task_data(task("shakespeare", tmp_path, kind="natural"), 12, 3)

    def owner(shard):
        got = [(leaf.decode(d.train_x[i]), leaf.decode(d.train_y[i])) for i in shard]
        matches = [u for u, r in rows.items() if r == got]
        assert len(matches) == 1
        return matches[0]

    owners = [owner(s) for s in d.shards]
    assert sorted(owners[:5]) == sorted(rows)  # a permutation of the 5 users ...
    assert owners[5:10] == owners[:5] and owners[10:] == owners[:2]  # ... repeated in that order
    assert all(np.array_equal(d.shards[k], d.shards[k + 5]) for k in range(7))
    # deterministic, and the permutation depends on the seed
    assert same(d, load_task_data(task("shakespeare", tmp_path, kind="natural"), 12, 3))
    perms = {tuple(owner(s) for s in load_task_data(task("shakespeare", tmp_path, kind="natural"),
                                                    5, seed).shards)
             for seed in range(6)}
    assert len(perms) > 1
    # fewer clients than users: distinct users
    few = load_task_data(task("shakespeare", tmp_path, kind="natural"), 3, 0)
    assert len({owner(s) for s in few.shards}) == 3


def test_shakespeare_pooled_partitions_and_layouts(tmp_path):
    write_shakespeare(tmp_path / "shakespeare" / "data")  # the LEAF checkout layout under data_dir
    d = load_task_data(task("shakespeare", tmp_path, kind="iid", spc=4), 6, 0)
    assert len(d.shards) == 6 and all(len(s) == 4 for s in d.shards)
    e = load_task_data(task("shakespeare", tmp_path, kind="dirichlet", alpha=0.2, spc=4), 6, 0)
    assert all(len(s) == 4 for s in e.shards)
    with pytest.raises(ConfigError, match="samples_per_client"):
        load_task_data(task("shakespeare", tmp_path, kind="natural", spc=10), 6, 0)


def test_shakespeare_malformed(tmp_path):
    write_shakespeare(tmp_path)
    bad = tmp_path / "train" / "b_train.json"
    bad.write_text('{"users": ["A"], "user_data": {"A": {"x": ["')
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path, kind="natural"), 2, 0)
    one_line_error(e, bad, "not valid JSON")
    bad.write_text(json.dumps({"users": ["A"], "num_samples": [1],
                               "user_data": {"A": {"x": ["ab"], "y": ["c"]}}}))
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path, kind="natural"), 2, 0)
    one_line_error(e, bad, "'A'", "expected 80")
    bad.write_text(json.dumps({"users": ["A"], "num_samples": [1],
                               "user_data": {"A": {"x": ["~" * 80], "y": ["c"]}}}))
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path, kind="natural"), 2, 0)
    one_line_error(e, bad, "'~'", "80-character set")
    bad.write_text(json.dumps({"users": ["A"], "num_samples": [1],
                               "user_data": {"A": {"x": ["é" * 80], "y": ["c"]}}}))
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path, kind="natural"), 2, 0)
    one_line_error(e, bad, "'é'")
    bad.write_text(json.dumps({"users": ["A"], "user_data": {"B": {}}}))
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path, kind="natural"), 2, 0)
    one_line_error(e, bad, "user_data['A']")
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path, kind="natural"), 2, 0)
    one_line_error(e, bad, "'users'")
    for f in (tmp_path / "test").iterdir():
        f.unlink()
    write_shakespeare(tmp_path / "other" / "shakespeare" / "data")
    for f in (tmp_path / "other" / "shakespeare" / "data" / "test").iterdir():
        f.unlink()
    with pytest.raises(DataError) as e:
        load_task_data(task("shakespeare", tmp_path / "other", kind="natural"), 2, 0)
    one_line_error(e, "test", "no LEAF Shakespeare test JSON")


# --------------------------------------------------------------------------------- data_dir

@pytest.mark.parametrize("name", ["mnist", "fmnist", "cifar10", "cifar100", "shakespeare"])
def test_missing_or_empty_data_dir(tmp_path, name):
    kind = "natural" if name == "shakespeare" else "iid"
    assert not DATASETS[name].embedded
    with pytest.raises(DataError) as e:
        load_task_data(task(name, tmp_path / "nowhere", kind=kind), 2, 0)
    one_line_error(e, tmp_path / "nowhere", "no such directory")
    with pytest.raises(DataError) as e:
        load_task_data(task(name, tmp_path, kind=kind), 2, 0)
    one_line_error(e, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError) as e:
        load_task_data(task(name, tmp_path / "file", kind=kind), 2, 0)
    one_line_error(e, "not a directory")
    with pytest.raises(ConfigError) as e:
        load_task_data(task(name, None, kind=kind), 2, 0)
    one_line_error(e, "data_dir")


def test_all_paper_datasets_in_one_data_dir(tmp_path):
    """configs/paper use `data_dir: data` for every task: the layouts must not collide."""
    write_idx_set(tmp_path / "MNIST" / "raw", seed=1, n_train=40)
    write_idx_set(tmp_path / "FashionMNIST" / "raw", seed=2, n_train=30)
    write_cifar10(tmp_path)
    cifar_batch(tmp_path / "cifar-100-python" / "train", 11, b"fine_labels", 100, 0)
    cifar_batch(tmp_path / "cifar-100-python" / "test", 3, b"fine_labels", 100, 1)
    write_shakespeare(tmp_path / "shakespeare")
    sizes = {name: len(load_task_data(task(name, tmp_path,
                                           kind="natural" if name == "shakespeare" else "iid"),
                                      2, 0).train_y)
             for name in ("mnist", "fmnist", "cifar10", "cifar100", "shakespeare")}
    assert sizes == {"mnist": 40, "fmnist": 30, "cifar10": 20, "cifar100": 11, "shakespeare": 20}
