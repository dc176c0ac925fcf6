"""Several requests of one task trained at once: torch.func vmap over stacked parameters.

Each request keeps its own base model, client shard and batch schedule (drawn from its
own seed exactly as `training.local_train` draws it), so member i of a batch computes
the same SGD steps as `local_train` would for it alone; only the floating-point order
of the batched kernels differs (tested to float tolerance). The gain is fewer, larger
kernel launches: on a GPU, small models leave most of the device idle one at a time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fedast_mpi.params import FlatModel, _as_tensor
from fedast_mpi.training import batch_indices

def batchable(module: torch.nn.Module) -> bool:
    """Whether vmap can train this module at full speed: no buffers and no recurrent layers.

    nn.LSTM/GRU have no batching rule for their fused kernels (vmap falls back to a slow
    per-member loop, correct but slower than one at a time); buffers (e.g. BatchNorm
    running statistics) would have to be stacked per member too.
    """
    return (not any(True for _ in module.buffers())
            and not any(isinstance(m, torch.nn.RNNBase) for m in module.modules()))


def schedules(shards: list[np.ndarray], seeds: list[int], steps: int,
              batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(G × steps × B) item indices and, when batch sizes differ, per-item loss weights.

    Member i's batches are local_train's (same seed, same draws); a member whose shard is
    smaller than batch_size has shorter batches, padded with its first item at weight 0.
    Weights are None when every member's batches have the same size (plain mean).
    """
    rows, sizes = [], []
    for shard, seed in zip(shards, seeds):
        sched = batch_indices(len(shard), steps, batch_size,
                              torch.Generator().manual_seed(int(seed)))
        shard_t = torch.as_tensor(np.asarray(shard, dtype=np.int64))
        rows.append(shard_t[torch.stack(sched)])
        sizes.append(rows[-1].shape[1])
    width = max(sizes)
    if min(sizes) == width:
        return torch.stack(rows), None
    idx = torch.empty((len(rows), steps, width), dtype=torch.int64)
    w = torch.zeros((len(rows), steps, width), dtype=torch.float32)
    for i, (r, b) in enumerate(zip(rows, sizes)):
        idx[i, :, :b] = r
        idx[i, :, b:] = r[:, :1]
        w[i, :, :b] = 1.0 / b
    return idx, w


def local_train_batch(fm: FlatModel, bases: list, x: torch.Tensor, y: torch.Tensor,
                      shards: list[np.ndarray], seeds: list[int], *, steps: int, batch_size: int,
                      lr: float, weight_decay: float,
                      outs: list | None = None,
                      on_step: Callable[[], None] | None = None
                      ) -> list[tuple[np.ndarray, float, int]]:
    """local_train for G requests at once; returns [(delta, mean loss, n)] in input order.

    fm gives the architecture (its own parameters are left untouched); bases are the
    members' flat float32 models (numpy or tensors); x, y may live on any device.
    `outs`, when given, are CPU float32 arrays (one per member) the deltas are written to.
    """
    if not (len(bases) == len(shards) == len(seeds)) or not bases:
        raise ValueError("local_train_batch needs equally many (>= 1) bases, shards and seeds")
    module, device, n = fm.module, fm.flat.device, fm.n_params
    G = len(bases)
    stacked = torch.stack([_as_tensor(b, n, device) for b in bases])
    start = stacked.clone()
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    views: dict[str, torch.Tensor] = {}
    off = 0
    for name, param in zip(names, fm.params):
        views[name] = stacked[:, off:off + param.numel()].view(G, *param.shape)
        off += param.numel()
    total = torch.zeros(G, dtype=torch.float64, device=device)
    if steps:
        idx, weights = schedules(shards, seeds, steps, batch_size)
        idx = idx.to(x.device)
        weights = None if weights is None else weights.to(device)

        def loss(params, xb, yb, wb=None):
            out = functional_call(module, params, (xb,))
            if wb is None:
                return F.cross_entropy(out, yb)
            return (F.cross_entropy(out, yb, reduction="none") * wb).sum()

        step = vmap(grad_and_value(loss))
        was_training = module.training
        module.train()
        try:
            for s in range(steps):
                b = idx[:, s]
                args = ((views, x[b], y[b]) if weights is None
                        else (views, x[b], y[b], weights[:, s]))
                grads, losses = step(*args)
                with torch.no_grad():
                    for name in names:
                        p, g = views[name], grads[name]
                        if weight_decay != 0:
                            g = g.add(p, alpha=weight_decay)
                        p.add_(g, alpha=-lr)
                total += losses.detach().to(torch.float64)
                if on_step is not None:
                    on_step()
        finally:
            module.train(was_training)
    stacked.sub_(start)
    if outs is None:
        deltas = list(stacked.to("cpu").numpy())
    else:
        for o, row in zip(outs, stacked):
            torch.from_numpy(o).copy_(row, non_blocking=True)
        deltas = outs
    mean_loss = (total / steps if steps else total).to("cpu").tolist()  # synchronises the copies
    return [(deltas[i], mean_loss[i], len(shards[i])) for i in range(G)]
