"""SoloSim: the InfoNCE loss of SEA (MODELS.md §2.4) and AlignRec's in-batch NCE (§3.4).

:func:`solosim_loss` is InfoNCE over all N rows, ``mean_i -log softmax_j(<a_i, b_j>/tau)[i]``,
computed by a streaming log-sum-exp over tiles of b: memory O(N d) in forward and backward (the
backward recomputes the logit tiles from the saved per-row log-sum-exp). Kernels:
``csrc/solosim.cpp`` (driver), ``csrc/cpu/solosim.cpp``, ``csrc/cuda/solosim.cu``.

Its pure-PyTorch reference (``backend="torch"``) is written the way MMRec-style code writes it:
the full N x N logit matrix and cross-entropy against the diagonal.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mmfast import _ext
from mmfast.ops._backend import resolve


def solosim_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    normalize: bool = True,
    symmetric: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """InfoNCE with row i of ``b`` as row i of ``a``'s positive and every other row as negative:
    ``mean_i -log softmax_j(<â_i, b̂_j> / temperature)[i]``, â = a / ||a|| when ``normalize``
    (gradients through the normalization are exact). ``symmetric`` averages the a->b and
    b->a directions. a and b: [n, d], float32 or float64, n >= 1. Returns a scalar.
    """
    _check_solosim(a, b, temperature)
    if resolve(backend) == "torch":
        return solosim_reference(a, b, temperature, normalize, symmetric)
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    scale = 1.0 / float(temperature)
    loss = torch.ops.mmfast.solosim(a, b, scale)[0]
    if symmetric:
        loss = 0.5 * (loss + torch.ops.mmfast.solosim(b, a, scale)[0])
    return loss


def solosim_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    normalize: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    """Pure PyTorch: the full N x N logit matrix and cross-entropy against the diagonal."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def _check_solosim(a: torch.Tensor, b: torch.Tensor, temperature: float) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"solosim_loss: {name} must be a 2-D tensor [n, d], got {shape}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"solosim_loss: {name} must be float32 or float64, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(
            f"solosim_loss: a and b must have the same shape [n, d], got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if a.shape[0] == 0:
        raise ValueError("solosim_loss: a and b need at least one row, got n = 0")
    if a.dtype != b.dtype:
        raise TypeError(f"solosim_loss: a is {a.dtype} but b is {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"solosim_loss: a is on {a.device} but b is on {b.device}")
    if isinstance(temperature, torch.Tensor):
        raise TypeError("solosim_loss: temperature must be a Python float, not a tensor")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(
            f"solosim_loss: temperature must be positive and finite, got {temperature!r}"
        )


# ---------------------------------------------------------------------- registration
# Schemas and CPU/CUDA kernels come from csrc/; autograd and shape inference live here.
if _ext.available():

    @torch.library.register_fake("mmfast::solosim")
    def _solosim_fake(a, b, scale):
        return a.new_empty(()), a.new_empty((a.shape[0],))

    @torch.library.register_fake("mmfast::solosim_backward")
    def _solosim_backward_fake(grad, a, b, lse, scale):
        return torch.empty_like(a), torch.empty_like(b)

    def _solosim_setup(ctx, inputs, output):
        a, b, scale = inputs
        ctx.save_for_backward(a, b, output[1])
        ctx.scale = scale
        ctx.mark_non_differentiable(output[1])

    def _solosim_backward(ctx, grad_loss, grad_lse):
        a, b, lse = ctx.saved_tensors
        grad_a, grad_b = torch.ops.mmfast.solosim_backward(grad_loss, a, b, lse, ctx.scale)
        return grad_a, grad_b, None

    torch.library.register_autograd(
        "mmfast::solosim", _solosim_backward, setup_context=_solosim_setup
    )
