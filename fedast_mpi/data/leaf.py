"""Shakespeare from LEAF's preprocessed JSON (next-character prediction, 80 classes).

LEAF (`data/shakespeare/preprocess.sh -s niid --sf 1.0 -k 0 -t sample -tf 0.8`, PAPER.md §6.1)
writes `train/*.json` and `test/*.json`, each
`{"users": [...], "num_samples": [...],
  "user_data": {user: {"x": [80-char str], "y": [1-char str]}}}`.
They are looked for in `data_dir`, `data_dir/shakespeare` and `data_dir/shakespeare/data` (the
LEAF checkout layout); the first folder holding both `train/` and `test/` wins.

Characters are encoded as their index in LEAF's 80-character set (`ALL_LETTERS` of
`models/utils/language_utils.py`); a character outside it is a DataError (LEAF's `find` would
give -1, which no embedding accepts). Inputs are stored as uint8 [n, 80] (the indices fit a
byte: an eighth of int64's memory, ≈ 0.34 GB instead of 2.7 GB for the full dataset); the model
widens them per batch (`models.CharLSTM`). Labels are int64 [n], as every dataset's.

Files are read in name order, users in each file's "users" order (a user in several files has
its samples joined in that order), so the pooled arrays are identical on every rank.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedast_mpi.errors import DataError

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
N_CLASSES = len(ALL_LETTERS)  # 80
SEQ_LEN = 80
INPUT_SHAPE = (SEQ_LEN,)
FOLDERS = (Path("."), Path("shakespeare"), Path("shakespeare", "data"))

_BAD = 255  # not in ALL_LETTERS
_LUT = np.full(256, _BAD, dtype=np.uint8)
_LUT[np.frombuffer(ALL_LETTERS.encode("ascii"), dtype=np.uint8)] = np.arange(N_CLASSES)


@dataclass(frozen=True, eq=False)
class LeafData:
    """Pooled train and test samples; user k's train samples are rows users[k][1]:users[k][2]."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    users: tuple[tuple[str, int, int], ...]
    """(name, start, stop) of every user with at least one train sample, in reading order."""


def encode(strings: list[str], length: int, path: Path, what: str) -> np.ndarray:
    """uint8 [len(strings), length] indices into ALL_LETTERS; wrong lengths or characters are
    DataErrors."""
    if not strings:
        return np.empty((0, length), dtype=np.uint8)
    if not all(isinstance(s, str) for s in strings):
        raise DataError(f"{path}: {what} must be strings")
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    bad = np.flatnonzero(lengths != length)
    if bad.size:
        raise DataError(f"{path}: {what} #{bad[0]} has {lengths[bad[0]]} characters, "
                        f"expected {length}")
    text = "".join(strings)
    try:
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as exc:
        raise DataError(f"{path}: {what} contains {text[exc.start]!r}, "
                        f"not in LEAF's 80-character set") from exc
    idx = _LUT[codes]
    if (idx == _BAD).any():
        ch = chr(codes[np.flatnonzero(idx == _BAD)[0]])
        raise DataError(f"{path}: {what} contains {ch!r}, not in LEAF's 80-character set")
    return idx.reshape(len(strings), length)


def decode(indices) -> str:
    """The text of a sequence of ALL_LETTERS indices (for tests and inspection)."""
    return "".join(ALL_LETTERS[int(i)] for i in np.asarray(indices).reshape(-1))


def _read_file(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(user, x uint8 [n, 80], y int64 [n])] of one LEAF JSON file, in its "users" order."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), list) \
            or not isinstance(doc.get("user_data"), dict):
        raise DataError(f"{path}: expected a LEAF JSON object with 'users' (list) and "
                        f"'user_data' (object)")
    counts = doc.get("num_samples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(doc["users"])):
        raise DataError(f"{path}: 'num_samples' must list one count per user")
    out = []
    for i, user in enumerate(doc["users"]):
        data = doc["user_data"].get(user) if isinstance(user, str) else None
        if not isinstance(data, dict) or not isinstance(data.get("x"), list) \
                or not isinstance(data.get("y"), list):
            raise DataError(f"{path}: user_data[{user!r}] must be an object with lists 'x' and 'y'")
        xs, ys = data["x"], data["y"]
        if len(xs) != len(ys) or (counts is not None and counts[i] != len(xs)):
            raise DataError(f"{path}: user {user!r} has {len(xs)} x, {len(ys)} y"
                            + (f" and num_samples {counts[i]}" if counts is not None else ""))
        x = encode(xs, SEQ_LEN, path, f"user {user!r} x")
        y = encode(ys, 1, path, f"user {user!r} y").reshape(-1).astype(np.int64)
        out.append((user, x, y))
    return out


def _read_split(files: tuple[Path, ...]
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    """Pool a split's files: (x, y, [(user, start, stop)]) with a user's samples contiguous."""
    chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in files:
        for user, x, y in _read_file(path):
            chunks.setdefault(user, []).append((x, y))
    xs, ys, users, start = [], [], [], 0
    for user, parts in chunks.items():
        for x, y in parts:
            xs.append(x)
            ys.append(y)
        n = sum(len(y) for _, y in parts)
        if n:
            users.append((user, start, start + n))
        start += n
    if not xs:
        return np.empty((0, SEQ_LEN), np.uint8), np.empty(0, np.int64), users
    return np.concatenate(xs), np.concatenate(ys), users


def find_files(data_dir: Path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The train and test JSON files (each in name order), or a DataError saying where they were
    sought."""
    for sub in FOLDERS:
        folder = data_dir / sub
        train, test = folder / "train", folder / "test"
        tr = sorted(train.glob("*.json")) if train.is_dir() else []
        if tr:
            te = sorted(test.glob("*.json")) if test.is_dir() else []
            if not te:
                raise DataError(f"{test}: no LEAF Shakespeare test JSON files (*.json) "
                                f"next to {train}")
            return tuple(tr), tuple(te)
    where = ", ".join(str(data_dir / s) for s in FOLDERS)
    raise DataError(f"{data_dir}: no LEAF Shakespeare data (expected train/*.json and "
                    f"test/*.json in one of {where}; see `fedast-mpi data download shakespeare`)")


@functools.lru_cache(maxsize=1)
def _load_cached(train: tuple[Path, ...], test: tuple[Path, ...], _stamp) -> LeafData:
    tx, ty, users = _read_split(train)
    vx, vy, _ = _read_split(test)
    if not users:
        raise DataError(f"{train[0].parent}: no train samples in {len(train)} file(s)")
    if len(vy) == 0:
        raise DataError(f"{test[0].parent}: no test samples in {len(test)} file(s)")
    return LeafData(tx, ty, vx, vy, tuple(users))


def forget() -> None:
    """Drop the parsed arrays kept for the next load (`fedast_mpi.data.forget_parsed`)."""
    _load_cached.cache_clear()


def load(data_dir: Path) -> LeafData:
    """Read (once per process and file version) the LEAF Shakespeare JSON under data_dir.

    The arrays are shared by the tasks that use them and must not be modified in place.
    """
    train, test = find_files(Path(data_dir))
    try:
        stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in train + test)
    except OSError as exc:
        raise DataError(f"{data_dir}: cannot read the Shakespeare files ({exc})") from exc
    return _load_cached(train, test, stamp)


def natural_partition(users: tuple[tuple[str, int, int], ...], n_clients: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """One LEAF user per client (PAPER.md §6.1): client k gets user perm[k mod U]'s train samples.

    perm is one random permutation of the U users; with fewer users than clients they repeat
    in that order, with more only the first n_clients of perm are used.
    """
    if not users:
        raise DataError("no Shakespeare users with train samples")
    perm = rng.permutation(len(users))
    shards = []
    for k in range(n_clients):
        _, start, stop = users[perm[k % len(users)]]
        shards.append(np.arange(start, stop, dtype=np.int64))
    return shards
