"""Nested state (dicts, lists, numpy arrays, scalars, strings) to and from an HDF5 group.

Every array carries a CRC32 attribute checked on reading, so a checkpoint whose
bytes were damaged is detected instead of loading wrong numbers.
"""

from __future__ import annotations

import json
import zlib

import h5py
import numpy as np

from fedast_mpi.errors import CheckpointError

_LIST = "__list__"
_NONE = "__none__"
_JSON = "__json__"


def crc(arr: np.ndarray) -> int:
    data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12 (mypy checks 3.10)
    return zlib.crc32(data) & 0xFFFFFFFF  # type: ignore[arg-type]


def write_tree(group: h5py.Group, tree: dict) -> None:
    """Write a dict: sub-dicts and lists become groups, arrays datasets, the rest attributes."""
    for key, value in tree.items():
        key = str(key)
        if isinstance(value, dict):
            write_tree(group.create_group(key), value)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (np.ndarray, dict, list))
                                                      for v in value):
            sub = group.create_group(key)
            sub.attrs[_LIST] = len(value)
            write_tree(sub, {str(i): v for i, v in enumerate(value)})
        elif isinstance(value, np.ndarray):
            ds = group.create_dataset(key, data=value)
            ds.attrs["crc32"] = np.uint32(crc(value))
        elif value is None:
            group.attrs[key] = _NONE
        elif isinstance(value, (list, tuple)):
            group.attrs[key] = _JSON + json.dumps(list(value))
        elif isinstance(value, (bool, np.bool_)):
            group.attrs[key] = np.bool_(value)
        elif isinstance(value, (int, np.integer)) and not -2**63 <= int(value) < 2**63:
            group.attrs[key] = _JSON + json.dumps(int(value))
        else:
            group.attrs[key] = value


def read_tree(group: h5py.Group) -> dict | list:
    """The inverse of write_tree; raises CheckpointError on a CRC mismatch."""
    out: dict = {}
    for key, value in group.attrs.items():
        if key == _LIST:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value == _NONE:
            value = None
        elif isinstance(value, str) and value.startswith(_JSON):
            value = json.loads(value[len(_JSON):])
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item)
        else:
            arr = item[()]
            if "crc32" in item.attrs and crc(np.asarray(arr)) != int(item.attrs["crc32"]):
                raise CheckpointError(f"{group.file.filename}: {item.name} is corrupt "
                                      f"(CRC mismatch)")
            out[key] = arr
    if _LIST in group.attrs:
        return [out[str(i)] for i in range(int(group.attrs[_LIST]))]
    return out
