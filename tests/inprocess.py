"""Helpers for tests that run a small job in-process (world size 1, virtual clock)."""

from __future__ import annotations

import copy

import h5py
from mpi4py import MPI

from fedast_mpi.config import config_from_dict
from fedast_mpi.launch import run_job
from fedast_mpi.schema import RUN_FILE

RUN_SEED = 3
EQUAL_TIERS = {name: {"multiplier": 1.0} for name in ("slow", "normal", "fast")}
EQUAL_DELAY = {"shift": 1.0, "exp_mean": 0.0, "local_multi": 1.0}


def digits_task(name="digits", **over):
    """A small digits/logreg task that never reaches its target (target 1.0, rare evals)."""
    task = {
        "name": name,
        "dataset": "digits",
        "partition": {"kind": "iid", "samples_per_client": 40},
        "model": "logreg",
        "local_steps": 5,
        "batch_size": 8,
        "local_lr": 0.05,
        "global_lr": 0.5,
        "requests": 4,
        "buffer_size": 1,
        "target_accuracy": 1.0,
        "eval_every": 1000,
        "delay": {"shift": 1.0, "exp_mean": 2.0, "local_multi": 1.0},
    }
    task.update(over)
    return task


def make_config(tasks, *, clients=50, max_time=40.0, tiers=None, seed=RUN_SEED, available=None,
                **algorithm):
    """A virtual-clock config; `algorithm` holds extra `algorithm.*` keys (name, allocation...)."""
    clients_cfg = {"count": clients, "available": available}
    if tiers is not None:
        clients_cfg["tiers"] = copy.deepcopy(tiers)
    return config_from_dict({
        "run": {"name": "equivalence", "seed": seed, "clock": "virtual", "max_time": max_time,
                "device": "cpu", "log_every": 0},
        "algorithm": {"name": "fedast", "allocation": "static", **algorithm},
        "clients": clients_cfg,
        "tasks": [copy.deepcopy(t) for t in tasks],
    })


def run_and_read(cfg, out_dir):
    """Run `cfg` in-process; return (events, aggregations, {task: final_model}, attrs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = run_job(cfg, out_dir, MPI.COMM_SELF)
    assert rc == 0
    with h5py.File(out_dir / RUN_FILE, "r", locking=False) as f:
        events = f["/events"][()]
        aggs = f["/aggregations"][()]
        finals = {t.name: f[f"/tasks/{t.name}/final_model"][()] for t in cfg.tasks}
        attrs = {k: f.attrs[k] for k in f.attrs}
    return events, aggs, finals, attrs
