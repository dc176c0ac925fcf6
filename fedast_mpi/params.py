"""Flat float32 views of a torch module's trainable parameters (the wire format of a model)."""

import numpy as np
import torch


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that travel on the wire: requires_grad ones, in module.parameters() order."""
    return [p for p in module.parameters() if p.requires_grad]


def _as_tensor(vec, n: int, device: torch.device) -> torch.Tensor:
    """A 1-D float32 tensor of length n from a numpy array or tensor (checked, not yet copied)."""
    t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)) \
        if isinstance(vec, np.ndarray) else torch.as_tensor(vec, dtype=torch.float32)
    t = t.reshape(-1)
    if t.numel() != n:
        raise ValueError(f"flat vector has {t.numel()} entries, the model has {n} parameters")
    return t.to(device)


class FlatModel:
    """A torch module whose trainable parameters are views into one flat float32 tensor.

    Loading, reading and updating a whole model is then one copy of one tensor. Moving
    the module (`.to(...)`) after wrapping breaks the views: wrap it where it will live.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.params = _trainable(module)
        if not self.params:
            raise ValueError("module has no trainable parameters")
        device = self.params[0].device
        for p in self.params:
            if p.dtype != torch.float32 or p.device != device:
                raise ValueError("FlatModel needs float32 parameters on one device")
        self.n_params = sum(p.numel() for p in self.params)
        self.flat = torch.empty(self.n_params, dtype=torch.float32, device=device)
        off = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                view = self.flat[off:off + n]
                view.copy_(p.detach().reshape(-1))
                p.data = view.view_as(p)
                off += n

    def load(self, vec) -> None:
        """Copy a flat vector (numpy or tensor, any device) into the parameters."""
        with torch.no_grad():
            self.flat.copy_(_as_tensor(vec, self.n_params, self.flat.device))

    def numpy(self) -> np.ndarray:
        """A float32 numpy copy of the parameters, on the CPU."""
        return self.flat.detach().to("cpu", copy=True).numpy()


def flatten(module: torch.nn.Module) -> np.ndarray:
    """The trainable parameters of any module as one new float32 numpy vector."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32)
                      for p in _trainable(module)]).numpy()


def unflatten(module: torch.nn.Module, vec) -> None:
    """Copy a flat vector into the trainable parameters of any module (inverse of flatten)."""
    params = _trainable(module)
    t = _as_tensor(vec, sum(p.numel() for p in params), torch.device("cpu"))
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(t[off:off + n].view_as(p))
            off += n
