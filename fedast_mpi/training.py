"""Local SGD on one client shard (PAPER.md §1.2, §6.3) and evaluation of a flat model."""

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedast_mpi.evaluation import EVAL_BATCH, combine, n_chunks
from fedast_mpi.params import FlatModel


def batch_indices(n: int, steps: int, batch_size: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Positions into a shard of n items for each step: epoch-style batches, drop_last.

    A fresh randperm(n) is drawn whenever fewer than batch_size unused positions remain, and
    consecutive batch_size slices are taken from it; a shard smaller than batch_size uses a
    fresh permutation of the whole shard at every step (so no step is ever empty).
    """
    if n < 1 or batch_size < 1 or steps < 0:
        raise ValueError(f"bad batch schedule: n={n}, steps={steps}, batch_size={batch_size}")
    if n < batch_size:
        return [torch.randperm(n, generator=generator) for _ in range(steps)]
    out, perm, pos = [], None, 0
    for _ in range(steps):
        if perm is None or n - pos < batch_size:
            perm, pos = torch.randperm(n, generator=generator), 0
        out.append(perm[pos:pos + batch_size])
        pos += batch_size
    return out


def local_train(fm: FlatModel, base: np.ndarray, x: torch.Tensor, y: torch.Tensor,
                shard: np.ndarray, *, steps: int, batch_size: int, lr: float, weight_decay: float,
                seed: int, out: np.ndarray | None = None,
                on_step: Callable[[], None] | None = None) -> tuple[np.ndarray, float, int]:
    """Run `steps` plain SGD steps from `base` on x[shard], y[shard]; return (delta, mean loss, n).

    delta = trained - base (new float32 CPU array), mean loss = mean over steps of the mean
    batch cross-entropy, n = len(shard). Update: p <- p - lr * (grad + weight_decay * p),
    per parameter, as torch.optim.SGD without momentum. The batch schedule comes only from
    `seed`, so the result is bit-for-bit reproducible; x, y and fm may live on any device.
    `on_step`, when given, is called after every step (a worker serves evaluations there:
    anything it does must leave fm, x and y alone).
    """
    fm.load(base)
    start = fm.flat.detach().clone()
    module, device = fm.module, fm.flat.device
    was_training = module.training
    module.train()
    schedule = batch_indices(len(shard), steps, batch_size,
                             torch.Generator().manual_seed(int(seed)))
    shard_t = torch.as_tensor(np.asarray(shard, dtype=np.int64))
    idx = shard_t[torch.stack(schedule)].to(x.device) if steps else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(steps):
        assert idx is not None  # steps > 0
        b = idx[i]
        for p in fm.params:
            p.grad = None
        loss = F.cross_entropy(module(x[b]), y[b])
        loss.backward()
        with torch.no_grad():
            for p in fm.params:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=weight_decay) if weight_decay != 0 else p.grad
                p.add_(g, alpha=-lr)
        total += loss.detach().to(torch.float64)
        if on_step is not None:
            on_step()
    for p in fm.params:
        p.grad = None
    module.train(was_training)
    return (write_delta(fm.flat.detach() - start, out), (total.item() / steps if steps else 0.0),
            len(shard))


def write_delta(delta: torch.Tensor, out: np.ndarray | None) -> np.ndarray:
    """A delta tensor (any device) as a CPU float32 array: into `out` when given.

    From a GPU the copy into `out` (pinned memory) is queued without blocking, then the
    current stream is synchronised, so `out` holds the delta when this returns, whatever the
    caller does next (with steps == 0 nothing else reads a device value). On the CPU the copy
    is synchronous.
    """
    if out is None:
        return delta.to("cpu").numpy()
    torch.from_numpy(out).copy_(delta, non_blocking=True)
    if delta.device.type == "cuda":
        torch.cuda.current_stream(delta.device).synchronize()
    return out


def _chunk_sums(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int,
                batch_size: int) -> tuple[float, float]:
    s = chunk * batch_size
    logits = module(x[s:s + batch_size])
    yb = y[s:s + batch_size]
    loss = F.cross_entropy(logits, yb, reduction="none").to(torch.float64).sum()
    correct = (logits.argmax(dim=1) == yb).sum().to(torch.float64)
    return correct.item(), loss.item()


def evaluate_chunk(fm: FlatModel, vec: np.ndarray, x: torch.Tensor, y: torch.Tensor, chunk: int,
                   batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """(correct predictions, summed cross-entropy) of `vec` on test batch `chunk`, as float64.

    Eval mode, no grad. `combine` of every chunk in order is exactly `evaluate`.
    """
    fm.load(vec)
    module = fm.module
    was_training = module.training
    module.eval()
    with torch.no_grad():
        sums = _chunk_sums(module, x, y, chunk, batch_size)
    module.train(was_training)
    return sums


def evaluate(fm: FlatModel, vec: np.ndarray, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """Load vec and return (accuracy, mean per-sample cross-entropy) over all of x, y.

    Eval mode, no grad; per-batch sums are accumulated in float64, batch after batch (the
    order that makes a chunked evaluation on workers give the same bits).
    """
    n = len(y)
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    fm.load(vec)
    module = fm.module
    was_training = module.training
    module.eval()
    with torch.no_grad():
        sums = [_chunk_sums(module, x, y, c, batch_size) for c in range(n_chunks(n, batch_size))]
    module.train(was_training)
    return combine(sums, n)
