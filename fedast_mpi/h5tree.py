"""Nested state (dicts, lists, numpy arrays, scalars, strings) to and from an HDF5 group.

Everything written is checked on reading, so a checkpoint whose bytes were damaged is
detected instead of loading wrong numbers: every array carries a CRC32 of its bytes, and
every group a CRC32 (`ATTRS_CRC`) of its attributes (RNG states, counters, strings: each
name, type and exact value) and of its members' names, kinds, dtypes and shapes.
"""

from __future__ import annotations

import json
import os
import re
import zlib

import h5py
import numpy as np

from fedast_mpi.errors import CheckpointError

_LIST = "__list__"
_NONE = "__none__"
_JSON = "__json__"
ATTRS_CRC = "__crc32__"
"""Group attribute: CRC32 of the group's other attributes and of its members (`group_crc`).
Checkpoints written before it existed have none (`read_tree(..., required=False)`)."""


def crc(arr: np.ndarray) -> int:
    data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12 (mypy checks 3.10)
    return zlib.crc32(data) & 0xFFFFFFFF  # type: ignore[arg-type]


def _simple(value) -> bytes | None:
    """A scalar or string attribute as exact bytes, the same for the value written and for
    what h5py reads back (a Python int comes back as np.int64, a float as np.float64); None
    for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return b"?1" if value else b"?0"
    if isinstance(value, (int, np.integer)):
        return b"i" + str(int(value)).encode()
    if isinstance(value, (float, np.floating)):
        return b"f" + float(value).hex().encode()
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    return None  # bytes too: HDF5 may drop trailing NULs of a fixed-length string


def _canon(value) -> bytes:
    """An attribute value as h5py reads it, as exact bytes (see `_simple`; bytes as they
    are, arrays by dtype, shape and bytes)."""
    simple = _simple(value)
    if simple is not None:
        return simple
    if isinstance(value, bytes):
        return b"b" + value
    arr = np.asarray(value)
    if arr.dtype.kind == "O":  # variable-length strings in an array attribute
        return b"o" + repr(arr.tolist()).encode()
    return (b"n" + str(arr.dtype).encode() + repr(arr.shape).encode()
            + np.ascontiguousarray(arr).tobytes())


def _member(item) -> bytes:
    """A member of a group, as what a reader relies on: group, or dataset dtype and shape."""
    if isinstance(item, h5py.Group):
        return b"g"
    return b"d" + str(item.dtype).encode() + repr(item.shape).encode()


def _digest(attrs: dict, members: dict) -> int:
    """CRC32 of attributes (name -> `_canon` bytes; `ATTRS_CRC` left out) and members
    (name -> `_member` bytes), sorted by name and length-prefixed: no two different
    contents serialize alike."""
    parts = []
    for key in sorted(k for k in attrs if k != ATTRS_CRC):
        parts += [b"a" + key.encode("utf-8", "surrogatepass"), attrs[key]]
    for name in sorted(members):
        parts += [b"m" + name.encode("utf-8", "surrogatepass"), members[name]]
    value = 0
    for part in parts:
        value = zlib.crc32(len(part).to_bytes(8, "little"), value)
        value = zlib.crc32(part, value)
    return value & 0xFFFFFFFF


def group_crc(group: h5py.Group, attrs: dict | None = None, members: dict | None = None) -> int:
    """CRC32 of a group's attributes (all but `ATTRS_CRC`) and of its members' names, kinds,
    dtypes and shapes. `attrs` (name -> value) and `members` (name -> h5py object): as
    already read; read from the group when None."""
    if attrs is None:
        attrs = dict(group.attrs.items())
    if members is None:
        members = dict(group.items())
    return _digest({k: _canon(v) for k, v in attrs.items()},
                   {k: _member(v) for k, v in members.items()})


def seal(group: h5py.Group) -> None:
    """Store the group's `ATTRS_CRC` (call it after its last attribute and member)."""
    group.attrs[ATTRS_CRC] = np.uint32(group_crc(group))


def verify(group: h5py.Group, attrs: dict | None = None, required: bool = True,
           members: dict | None = None) -> bool:
    """Check a group's `ATTRS_CRC` (`attrs`, `members`: as already read, see group_crc);
    CheckpointError on a mismatch, or when it is missing and `required`. Returns whether
    the group had one."""
    if attrs is None:
        attrs = dict(group.attrs.items())
    where = f"{group.file.filename}: {group.name}"
    if ATTRS_CRC not in attrs:
        if required:
            raise CheckpointError(f"{where} has no attribute check (damaged)")
        return False
    stored = attrs[ATTRS_CRC]
    if not isinstance(stored, np.integer) or int(stored) != group_crc(group, attrs, members):
        raise CheckpointError(f"{where}: attributes or members are corrupt (CRC mismatch)")
    return True


def write_tree(group: h5py.Group, tree: dict, _list_len: int | None = None) -> None:
    """Write a dict: sub-dicts and lists become groups, arrays datasets, the rest attributes;
    every group is sealed with its `ATTRS_CRC`, computed from what was written (no read-back)."""
    attrs: dict = {}  # name -> _canon bytes of what was written
    members: dict = {}  # name -> _member bytes

    def put(key, value):
        group.attrs[key] = value
        simple = _simple(value)
        attrs[key] = simple if simple is not None else _canon(group.attrs[key])

    if _list_len is not None:
        put(_LIST, _list_len)
    for key, value in tree.items():
        key = str(key)
        if isinstance(value, dict):
            write_tree(group.create_group(key), value)
            members[key] = b"g"
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (np.ndarray, dict, list))
                                                      for v in value):
            write_tree(group.create_group(key), {str(i): v for i, v in enumerate(value)},
                       len(value))
            members[key] = b"g"
        elif isinstance(value, np.ndarray):
            ds = group.create_dataset(key, data=value)
            ds.attrs["crc32"] = np.uint32(crc(value))
            members[key] = _member(ds)
        elif value is None:
            put(key, _NONE)
        elif isinstance(value, (list, tuple)):
            put(key, _JSON + json.dumps(list(value)))
        elif isinstance(value, (bool, np.bool_)):
            put(key, np.bool_(value))
        elif isinstance(value, (int, np.integer)) and not -2**63 <= int(value) < 2**63:
            put(key, _JSON + json.dumps(int(value)))
        else:
            put(key, value)
    group.attrs[ATTRS_CRC] = np.uint32(_digest(attrs, members))


def _decode(value):
    """An attribute as written by write_tree, back to its Python value."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value == _NONE:
        return None
    if isinstance(value, str) and value.startswith(_JSON):
        return json.loads(value[len(_JSON):])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_array(item: h5py.Dataset, required: bool) -> np.ndarray:
    """A dataset's data, its CRC32 checked (CheckpointError on a mismatch, or when missing
    and `required`)."""
    arr = item[()]
    where = f"{item.file.filename}: {item.name}"
    if "crc32" not in item.attrs:
        if required:
            raise CheckpointError(f"{where} has no CRC (damaged)")
        return arr
    if crc(np.asarray(arr)) != int(item.attrs["crc32"]):
        raise CheckpointError(f"{where} is corrupt (CRC mismatch)")
    return arr


def read_tree(group: h5py.Group, required: bool = False) -> dict | list:
    """The inverse of write_tree; raises CheckpointError on a CRC mismatch.

    Each group's attribute check is verified before any attribute is decoded. `required`:
    every group and array must carry its check (a file written with them); False accepts
    files written before group checks existed (their arrays' CRCs are still checked).
    """
    attrs = dict(group.attrs.items())
    members = dict(group.items())
    verify(group, attrs, required, members)
    out: dict = {}
    for key, value in attrs.items():
        if key not in (_LIST, ATTRS_CRC):
            out[key] = _decode(value)
    for key, item in members.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item, required)
        else:
            out[key] = _read_array(item, required)
    if _LIST in attrs:
        return [out[str(i)] for i in range(int(attrs[_LIST]))]
    return out


def write_error_text(exc: BaseException) -> str:
    """One line for a failed write: "[Errno 28] No space left on device" when the error has
    an errno (h5py's OSError does; HDF5 may only name it in its message), else its first
    line."""
    code = getattr(exc, "errno", None)
    if not code:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code:
        return f"[Errno {code}] {os.strerror(code)}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
