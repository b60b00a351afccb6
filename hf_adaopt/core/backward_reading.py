"""The first gradient as backward left it, before any clipping: what Polyak's start reads.

Gradient clipping (the Trainer's ``max_grad_norm`` 1.0, ``clip_grad_norm_`` in a loop) rescales the gradient between
``backward()`` and ``step()``. Adam's first direction sign(g) does not change with it, but sum |g| does, so a start
read from the clipped gradient moved with ``max_grad_norm``: 6x on the suite's LM (issue 19). A post-accumulate-grad
hook on each parameter reads |g|_1 after every backward until the first step, and the first step takes those
readings. Without clipping they equal what the step would read (the same reduction), bit for bit.

What it costs: one L1 norm per parameter per backward until the first step, no host sync; then the hooks are gone.

Where it does not apply, the step reads the gradient as ``step()`` sees it (clipping moves the start again):

* under ``torch.distributed`` with more than one process, where a hook would read this rank's gradient before DDP
  averages it (and FSDP2 writes its shards' gradients outside autograd's accumulation);
* a tensor whose gradient autograd did not accumulate (set by hand, or no backward since the last step): that
  tensor's reading is the step's.

A ``GradScaler`` (fp16) scales what backward leaves by its scale; ``GradScaler.step`` is what calls ``step()``, so the
caller's scale is divided out (the only link from an optimizer to its scaler is that call).
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import Tensor

# How many frames above AdaOpt.step to look for the GradScaler that called it: torch's step wrapper, accelerate's
# patched step and the scaler's _maybe_opt_step lie in between.
SCALER_FRAMES = 6


class BackwardReading:
    """Per parameter, |g|_1 of the gradient the last backward accumulated, until ``stop()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, dtype_of) -> None:
        self._optimizer = weakref.ref(optimizer)  # the hooks live on the parameters: no cycle back to the optimizer
        self._dtype_of = dtype_of
        self._l1: dict[Tensor, Tensor] = {}
        self._handles = [p.register_post_accumulate_grad_hook(self._read)
                         for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def _read(self, p: Tensor) -> None:
        optimizer = self._optimizer()
        if (optimizer is None or optimizer.param_groups[0]["base_scale"] is not None or p.grad is None
                or p.grad.is_sparse):  # a sparse gradient: step() refuses it with its own error
            return
        grad = p.grad if p.grad.dtype == self._dtype_of(p) else p.grad.to(self._dtype_of(p))
        self._l1[p] = torch.linalg.vector_norm(grad, 1)

    def l1(self, params: list[Tensor], at_step: Tensor) -> Tensor:
        """sum |g| per tensor of ``params`` as backward left it (``at_step``: what the step reads, for a tensor
        without a reading, and under distributed training)."""
        distributed = (torch.distributed.is_available() and torch.distributed.is_initialized()
                       and torch.distributed.get_world_size() > 1)
        if distributed or not self._l1:
            return at_step
        scaler = _calling_grad_scaler()
        scale = 1.0 if scaler is None else scaler.get_scale()  # a host sync, on the first step only (1 if disabled)
        readings = [self._l1[p].to(at_step) / scale if p in self._l1 else at_step[i] for i, p in enumerate(params)]
        return torch.stack(readings)

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._l1 = [], {}


def _calling_grad_scaler():
    """The ``torch.amp.GradScaler`` whose ``step`` called AdaOpt's, or None."""
    frame = sys._getframe(2)  # AdaOpt.step's (this function's caller is BackwardReading.l1)
    for _ in range(SCALER_FRAMES):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.amp.GradScaler):
            return owner
        frame = frame.f_back
    return None
