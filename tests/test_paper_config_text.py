"""How configs/paper/ are written: no needless per-task keys, sync blocks written once, no shared
mappings between tasks (a nested `--set tasks.0.KEY.SUB=...` must change task 0 only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

FILES = sorted((Path(__file__).parent.parent / "configs" / "paper").glob("*.yaml"))
SYNC_LIKE = ("sync-bayes", "sync-ucb")


def is_alias_of(node: yaml.Node, target: yaml.Node) -> bool:
    """`*sync` or `{<<: *sync}` (a copy of sync with nothing added)."""
    return node is target or (isinstance(node, yaml.MappingNode) and len(node.value) == 1
                              and node.value[0][0].value == "<<" and node.value[0][1] is target)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_compare_uses_tasks_star_for_shared_values(path):
    raw = yaml.safe_load(path.read_text())
    names = [t["name"] for t in raw["tasks"]]
    for algo, overrides in raw["compare"].items():
        per_key: dict[str, dict[str, object]] = {}
        for key, value in overrides.items():
            m = re.fullmatch(r"tasks\.([^.]+)\.(.+)", key)
            if m and m.group(1) != "*":
                per_key.setdefault(m.group(2), {})[m.group(1)] = value
        for key, values in per_key.items():
            same = set(values) == set(names) and len({repr(v) for v in values.values()}) == 1
            assert not same, \
                f"compare.{algo}: every task has {key}={values[names[0]]}: use tasks.*.{key}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_sync_blocks_written_once(path):
    text = path.read_text()
    compare = dict((k.value, v) for k, v in yaml.compose(text).value if k.value == "compare")
    nodes = {k.value: v for k, v in compare["compare"].value}
    loaded = yaml.safe_load(text)["compare"]
    for algo in SYNC_LIKE:
        aliased = is_alias_of(nodes[algo], nodes["sync"])
        assert aliased == (loaded[algo] == loaded["sync"]), \
            f"{algo}: " \
            f"{'an alias of sync but differs' if aliased else 'same as sync: write {<<: *sync}'}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_tasks_share_no_mapping(path):
    tasks = yaml.safe_load(path.read_text())["tasks"]
    shared = [(i, key) for i, task in enumerate(tasks) for key, value in task.items()
              if isinstance(value, (dict, list))
              and any(other.get(key) is value for other in tasks[:i])]
    assert not shared, f"tasks share a mapping with an earlier task (alias): {shared}"
    if path.stem.startswith("homogeneous"):  # M copies of one task but for the name
        assert all({**t, "name": None} == {**tasks[0], "name": None} for t in tasks)
