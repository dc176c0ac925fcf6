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


RNN_ALIGN = 64
"""float32 elements (256 bytes) an RNN's block is aligned to within FlatModel's allocation."""


class FlatModel:
    """A torch module whose trainable parameters are views into one flat float32 tensor.

    Loading, reading and updating a whole model is then one copy of one tensor. Moving
    the module (`.to(...)`) or calling an RNN's `flatten_parameters()` after wrapping breaks
    the views: wrap it where it will live.

    Recurrent layers (nn.LSTM, nn.GRU, nn.RNN) keep their parameters where cuDNN reads them in
    place: cuDNN takes an RNN's weights as one buffer starting at the beginning of their
    storage, in the layer's parameter order (w_ih, w_hh, b_ih, b_hh per layer and direction,
    which is also their order here), and otherwise copies them into a fresh buffer on every
    call and warns ("RNN module weights are not part of single contiguous chunk of memory").
    So each RNN's slice of the flat vector is given its own storage object that starts at the
    slice (a view of the same memory: `flat` still holds the values), and the first RNN's
    slice is aligned to RNN_ALIGN elements, as a buffer of cuDNN's own would be.
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
        offsets = np.cumsum([0] + [p.numel() for p in self.params]).tolist()
        blocks = rnn_blocks(module, self.params)
        pad = -offsets[blocks[0][0]] % RNN_ALIGN if blocks else 0
        self.flat = torch.empty(pad + self.n_params, dtype=torch.float32, device=device)[pad:]
        with torch.no_grad():
            for p, off in zip(self.params, offsets):
                view = self.flat[off:off + p.numel()]
                view.copy_(p.detach().reshape(-1))
                p.data = view.view_as(p)
            for first, stop in blocks:
                _own_storage(self.flat, self.params[first:stop], offsets[first], offsets[stop])

    def load(self, vec) -> None:
        """Copy a flat vector (numpy or tensor, any device) into the parameters."""
        with torch.no_grad():
            self.flat.copy_(_as_tensor(vec, self.n_params, self.flat.device))

    def numpy(self) -> np.ndarray:
        """A float32 numpy copy of the parameters, on the CPU."""
        return self.flat.detach().to("cpu", copy=True).numpy()


def rnn_blocks(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> list[tuple[int, int]]:
    """(first, stop) indices into `params` of each RNN submodule's weights, where they are
    consecutive there in the RNN's own order (cuDNN's); other RNNs are left out."""
    index = {id(p): i for i, p in enumerate(params)}
    blocks = []
    for m in module.modules():
        if isinstance(m, torch.nn.RNNBase):
            at = [index.get(id(w), -1) for w in m._flat_weights]
            if at and at[0] >= 0 and at == list(range(at[0], at[0] + len(at))):
                blocks.append((at[0], at[0] + len(at)))
    return blocks


def _own_storage(flat: torch.Tensor, params: list[torch.nn.Parameter], start: int,
                 stop: int) -> None:
    """Rebind params (flat[start:stop], consecutive) to views of a storage that begins at
    flat[start]: the same memory, seen by cuDNN as one buffer of exactly these weights."""
    size = flat.element_size()
    begin = (flat.storage_offset() + start) * size
    storage = flat.untyped_storage()[begin:begin + (stop - start) * size]
    off = 0
    for p in params:
        p.data = torch.empty(0, dtype=flat.dtype, device=flat.device).set_(
            storage, off, p.shape, p.data.stride())
        off += p.numel()


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
