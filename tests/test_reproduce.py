"""`fedast-mpi reproduce`: the paper's tables as data, row selection, keeping finished runs, and
the M = 2 Fashion-MNIST table end to end on the real files (short max_time)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import yaml

from conftest import launch
from fedast_mpi import reproduce as rp
from fedast_mpi.config import load_config
from fedast_mpi.errors import ConfigError
from fedast_mpi.paper_tables import FEDAST, SYNC, TABLES

REPO = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO / "configs" / "paper"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_row_names_a_paper_config_of_its_shape(name):
    tab = TABLES[name]
    assert rp.default_config_dir() == PAPER_DIR
    for row in tab.rows:
        cfg = load_config(str(PAPER_DIR / row.config))
        names = [t.name for t in cfg.tasks]
        if tab.name.startswith("fig5-"):  # homogeneous: M identical tasks, the paper's gain
            assert len(names) == int(row.key[1:])
            assert len({(t.dataset, t.model) for t in cfg.tasks}) == 1
            gain = 100 * (row.time[SYNC] - row.time[FEDAST]) / row.time[SYNC]
            assert gain == pytest.approx(row.gain, abs=0.06)  # Fig. 5's times are rounded
        else:  # heterogeneous: the paper's per-task times name the config's tasks
            assert sorted(row.task_times[FEDAST]) == sorted(names)
            assert row.time[FEDAST] == max(row.task_times[FEDAST].values())


def test_rows_are_selected_by_key_and_bad_names_are_one_line():
    tab = rp.table("fig5-fmnist")
    assert [r.key for r in rp.select_rows(tab, None)] == ["m2", "m4", "m6"]
    assert [r.key for r in rp.select_rows(tab, "m6, m2")] == ["m2", "m6"]
    with pytest.raises(ConfigError, match="m3: fig5-fmnist has rows m2, m4, m6"):
        rp.select_rows(tab, "m3")
    with pytest.raises(ConfigError, match="no paper table 'fig9'"):
        rp.table("fig9")
    with pytest.raises(ConfigError, match="config of row m2 is missing"):
        rp.row_configs(rp.select_rows(tab, "m2"), REPO / "nowhere", [])


def _run_file(path: Path, status: str) -> None:
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.attrs["status"] = status


def test_finished_runs_are_kept_and_an_unfinished_one_is_named(tmp_path):
    tab = rp.table("fig5-fmnist")
    ((row, cfg),) = rp.row_configs(rp.select_rows(tab, "m2"), PAPER_DIR, [])
    assert rp.pending(cfg, tab.algorithms, 2, tmp_path, []) == [0, 1, 2, 3]
    _run_file(tmp_path / "fedast-seed0" / "run.h5", "completed")
    _run_file(tmp_path / "sync-seed1" / "run.h5", "diverged")
    assert rp.pending(cfg, tab.algorithms, 2, tmp_path, []) == [1, 2]
    _run_file(tmp_path / "fedast-seed1" / "run.h5", "interrupted")
    with pytest.raises(ConfigError, match=r"fedast-seed1: a run that is interrupted.*resume"):
        rp.pending(cfg, tab.algorithms, 2, tmp_path, [])


def test_list_and_usage_errors():
    res = launch(0, "reproduce", "fig5-fmnist", "--rows", "m4", "--list")
    assert res.rc == 0, res.stderr
    assert res.stdout.split() == ["m4", str(PAPER_DIR / "homogeneous-fmnist-m4.yaml"),
                                  "fedast,sync"]
    for args, text in ((["fig5-fmnist", "--seeds", "1"], "--out DIR is required"),
                       (["fig5-fmnist", "--out", "x", "--seeds", "0"], "--seeds: 0"),
                       (["nosuch", "--out", "x"], "no paper table 'nosuch'")):
        res = launch(0, "reproduce", *args)
        assert res.rc == 2 and res.error_lines() and text in res.error_lines()[0], res.stderr


@pytest.mark.slow
@pytest.mark.launch
@pytest.mark.timeout(600)
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"real Fashion-MNIST not installed in "
                    f"{FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_fig5_fmnist_m2_end_to_end_on_the_real_files(tmp_path):
    """One seed, max_time 5: both methods run on the real files, the table has the measured
    and the paper's columns; the same command again keeps the finished runs."""
    out = tmp_path / "fig5"
    args = ["reproduce", "fig5-fmnist", "--rows", "m2", "--seeds", "1", "--out", str(out),
            "--set", "run.max_time=5", "--set", f"tasks.*.data_dir={FMNIST_DIR}",
            "--set", "run.log_every=0"]
    res = launch(3, *args, timeout=540)
    assert res.rc == 0, res.stdout + res.stderr
    assert "m2: Fashion-MNIST, M = 2; 2 of 2 runs to do" in res.stdout
    for name in ("fedast-seed0", "sync-seed0"):
        with h5py.File(out / "m2" / name / "run.h5", "r") as f:
            assert f.attrs["status"] == "completed"
            assert [f["tasks"][t].attrs["dataset"] for t in f["tasks"]] == ["fmnist"] * 2
    md = (out / "reproduce.md").read_text()
    header, _, row = [ln for ln in md.splitlines() if ln.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in row.strip("|").split("|")]))
    assert cells["row"] == "Fashion-MNIST, M = 2" and cells["seeds"] == "1"
    assert cells["paper FedAST"] == "383.1" and cells["paper Sync-ST"] == "534.1"
    assert cells["paper gain"] == "28.26 %"
    assert cells["FedAST completion"] == cells["Sync-ST completion"] == "not reached"
    assert cells["wall per run (FedAST / Sync-ST)"].endswith(" s")
    assert (out / "m2" / "compare.md").exists() and (out / "reproduce.csv").exists()

    again = launch(3, *args, timeout=300)
    assert again.rc == 0, again.stdout + again.stderr
    assert "0 of 2 runs to do" in again.stdout
    assert (out / "reproduce.md").read_text() == md

    # --summarize (no MPI): a row uses the seeds every algorithm finished; none is an error
    summary = [a if a != "1" else "2" for a in args] + ["--summarize"]
    res = launch(0, *summary)
    assert res.rc == 0, res.stderr
    assert "| Fashion-MNIST, M = 2 | 2 | 1 |" in res.stdout
    res = launch(0, *[a if a != "m2" else "m2,m4" for a in summary])
    assert res.rc == 2 and "m4/fedast-seed0/run.h5: missing or unfinished" in res.stderr


@pytest.mark.parametrize("path", sorted(PAPER_DIR.glob("homogeneous-*.yaml")), ids=lambda p: p.stem)
def test_homogeneous_configs_say_where_every_value_comes_from(path):
    """The header names the source of each value; the unpublished R and b are the ones the
    header states, chosen by its rule (ΣR = 300 split evenly, b = ceil(R / 32), R / b < 37)."""
    text = path.read_text()
    head = text[:text.index("run:")]
    raw = yaml.safe_load(text)
    m = len(raw["tasks"])
    (r,), (b,) = {t["requests"] for t in raw["tasks"]}, {t["buffer_size"] for t in raw["tasks"]}
    assert r == 300 // m and b == -(-r // 32) and r / b < 37
    assert "Where each value comes from" in head
    assert f"requests R = {r}, buffer_size b = {b}: [here]" in head
    for source in ("[P §5.1, §5.2]", "[P Table 1", "[P App. C.5", "[C JSON round_to_test]",
                   "[P Table 3]", f"reproduce fig5-{raw['tasks'][0]['dataset']} --rows m{m}"):
        assert source in head, (path.name, source)
