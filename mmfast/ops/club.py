"""CLUB: SEA's mutual-information upper bound and the learning loop of its q-net (MODELS.md §2.4).

* :func:`club_upper_bound` -- SEA's CLUB mutual-information upper bound between x and y under
  the variational net q (any :class:`ClubQNet`, e.g. :class:`mmfast.nn.ClubNet`); gradients
  reach x and y, never q.
* :func:`club_learn` -- SEA's inner loop: ``steps`` Adam steps of q on the Gaussian negative
  log-likelihood of detached (x, y) pairs, as one call of one compiled kernel
  (``csrc/club.cpp`` driver, ``csrc/cpu/club.cpp``, ``csrc/cuda/club.cu``).

Each has its pure-PyTorch reference here (``backend="torch"``), written the way MMRec-style
code writes it: the N x N x d pairwise CLUB, the Python loop of ``torch.optim.Adam`` steps.

The ops take q through the :class:`ClubQNet` protocol rather than the ``mmfast.nn`` class, so
that ``mmfast.ops`` imports nothing from the layers above it.
"""
from __future__ import annotations

import math
from typing import Iterator, Protocol, Sequence, Union, runtime_checkable

import torch

from mmfast import _ext
from mmfast.ops._backend import resolve

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]
ESTIMATORS = ("sampled", "full")


@runtime_checkable
class ClubQNet(Protocol):
    """What the CLUB ops need of the Gaussian variational net q(y | x) (``mmfast.nn.ClubNet``
    is the implementation): mean and log-variance heads, each
    ``Linear(x_dim, hidden) -> ReLU -> Linear(hidden, y_dim)``, the log-variance one followed
    by tanh. The fused ``club_learn`` kernel computes exactly this network from
    :meth:`flat_parameters`."""

    x_dim: int
    y_dim: int

    def flat_parameters(self) -> list[torch.Tensor]:
        """The 8 parameters, in the order the kernels take them: mu W1 [hidden, x_dim], b1,
        W2 [y_dim, hidden], b2, then logvar W1, b1, W2, b2."""
        ...

    def heads(
        self, x: torch.Tensor, detach_params: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of x, each [n, y_dim]; ``detach_params`` keeps gradients away from
        the parameters (they still reach x)."""
        ...

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per row, log q(y | x) up to a constant, [n], differentiable in the parameters."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The parameters the Adam optimizer of :func:`club_learn` holds (as nn.Module's)."""
        ...


# The protocol's members, to name the missing ones in errors.
_Q_MEMBERS = ("x_dim", "y_dim", "flat_parameters", "heads", "log_likelihood", "parameters")


def _check_q(op: str, q: object) -> None:
    if not isinstance(q, ClubQNet):
        missing = ", ".join(m for m in _Q_MEMBERS if not hasattr(q, m))
        raise TypeError(
            f"{op}: q must be a mmfast.nn.ClubNet (or another ClubQNet), got "
            f"{type(q).__name__} (missing {missing})"
        )


# ---------------------------------------------------------------------- CLUB bound
def club_upper_bound(
    x: torch.Tensor,
    y: torch.Tensor,
    q: ClubQNet,
    perm: torch.Tensor | None = None,
    estimator: str = "sampled",
    halve: bool = True,
    clamp: bool = True,
    backend: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SEA's CLUB upper bound on I(x; y) (MODELS.md §2.4), differentiable in x and y only.

    With l(x, y) = sum_d -(mu_d(x) - y_d)^2 / (2 exp(logvar_d(x))) - logvar_d(x) / 2:

    * ``"sampled"``: mean_i [l(x_i, y_i) - l(x_i, y_perm(i))], ``perm`` a fresh
      ``torch.randperm`` when None (as SEA draws one per call), drawn from ``generator`` when
      given (a model's own stream, on x's device: no host read);
    * ``"full"``: mean_i [l(x_i, y_i) - mean_j l(x_i, y_j)], computed in O(N d) from the mean
      and (population) variance of y: mean_j (mu - y_j)^2 = (mu - mean(y))^2 + var(y).

    ``halve`` multiplies by 1/2 and ``clamp`` takes max(0, .), both on by default as in SEA.
    """
    _check_bound(x, y, q, perm, estimator)
    if perm is None and estimator == "sampled":
        perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
    if resolve(backend) == "torch":
        return club_upper_bound_reference(x, y, q, perm, estimator, halve, clamp)
    mu, logvar = q.heads(x, detach_params=True)
    inv_var = torch.exp(-logvar)
    if estimator == "sampled":
        negative = (mu - y[perm]) ** 2
    else:
        mean = y.mean(0)
        negative = (mu - mean) ** 2 + (y - mean).square().mean(0)
    # The logvar/2 terms cancel between the positive and the negative pair.
    bound = (((negative - (mu - y) ** 2) * inv_var).sum(-1)).mean() / 2
    return _finish(bound, halve, clamp)


def club_upper_bound_reference(
    x: torch.Tensor,
    y: torch.Tensor,
    q: ClubQNet,
    perm: torch.Tensor | None,
    estimator: str = "sampled",
    halve: bool = True,
    clamp: bool = True,
) -> torch.Tensor:
    """Pure PyTorch, as CLUB code writes it: the log-likelihood of positive and negative pairs,
    and for ``"full"`` the N x N x d tensor of all pairs."""
    mu, logvar = q.heads(x, detach_params=True)
    positive = -((mu - y) ** 2) / 2 / logvar.exp() - logvar / 2
    if estimator == "sampled":
        negative = -((mu - y[perm]) ** 2) / 2 / logvar.exp() - logvar / 2
    else:
        pairs = (y.unsqueeze(0) - mu.unsqueeze(1)) ** 2  # [n, n, d]
        negative = -pairs.mean(1) / 2 / logvar.exp() - logvar / 2
    bound = (positive.sum(-1) - negative.sum(-1)).mean()
    return _finish(bound, halve, clamp)


def _finish(bound: torch.Tensor, halve: bool, clamp: bool) -> torch.Tensor:
    if halve:
        bound = bound / 2
    return bound.clamp(min=0) if clamp else bound


def _check_bound(x, y, q, perm, estimator) -> None:
    _check_q("club_upper_bound", q)
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"club_upper_bound: estimator must be one of {ESTIMATORS}, got {estimator!r}"
        )
    _check_pair("club_upper_bound", x, y, q)
    if perm is not None:
        if estimator != "sampled":
            raise ValueError("club_upper_bound: perm is only used by estimator='sampled'")
        if not isinstance(perm, torch.Tensor) or perm.shape != (x.shape[0],) or perm.dtype not in (
            torch.int64, torch.int32
        ):
            raise ValueError(
                f"club_upper_bound: perm must be an int64 tensor of shape ({x.shape[0]},)"
            )
        if perm.numel() and (int(perm.min()) < 0 or int(perm.max()) >= x.shape[0]):
            raise ValueError(f"club_upper_bound: perm holds indices outside [0, {x.shape[0]})")


def _check_pair(op: str, x, y, q: ClubQNet, suffix: str = "") -> None:
    for name, t, dim in (("x", x, q.x_dim), ("y", y, q.y_dim)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name}{suffix} must be a 2-D tensor [n, {dim}], got {shape}")
        if t.shape[1] != dim:
            raise ValueError(
                f"{op}: {name}{suffix} has {t.shape[1]} features but q expects {dim} "
                f"(shape {tuple(t.shape)})"
            )
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{op}: {name}{suffix} must be float32 or float64, got {t.dtype}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{op}: x{suffix} and y{suffix} must have the same number of rows, got "
            f"{x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{op}: x{suffix} and y{suffix} need at least one row, got n = 0")
    weight = q.flat_parameters()[0]
    for name, t in (("x", x), ("y", y)):
        if t.dtype != weight.dtype or t.device != weight.device:
            raise TypeError(
                f"{op}: {name}{suffix} is {t.dtype} on {t.device} but q's parameters are "
                f"{weight.dtype} on {weight.device}"
            )


# ---------------------------------------------------------------------- CLUB learning
def club_learn(
    x: Tensors,
    y: Tensors,
    q: ClubQNet,
    optimizer: torch.optim.Adam,
    steps: int = 50,
    lr: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """SEA's CLUB learning loop: ``steps`` Adam steps of ``q`` on the negative log-likelihood
    ``-sum_m mean_i l(x_m,i, y_m,i)`` of detached pairs, over one modality (tensors) or several
    sharing q (sequences of tensors, one loss term per modality).

    ``optimizer`` is the ``torch.optim.Adam`` over ``q.parameters()`` that keeps the moments
    and step count: this call reads and updates its state exactly as ``optimizer.step()``
    would, so the fused call and the reference loop can be mixed freely. ``lr`` overrides the
    optimizer's learning rate for this call. Returns the loss before each step, [steps].
    """
    xs, ys = _as_list(x, "x"), _as_list(y, "y")
    if len(xs) != len(ys):
        raise ValueError(f"club_learn: got {len(xs)} x tensors but {len(ys)} y tensors")
    _check_q("club_learn", q)
    for m, (xm, ym) in enumerate(zip(xs, ys)):
        _check_pair("club_learn", xm, ym, q, f"[{m}]" if len(xs) > 1 else "")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"club_learn: steps must be a non-negative int, got {steps!r}")
    group = _adam_group(optimizer, q)
    lr = group["lr"] if lr is None else lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"club_learn: lr must be a non-negative float, got {lr!r}")
    if resolve(backend) == "torch":
        return club_learn_reference(xs, ys, q, optimizer, steps, lr)

    params = q.flat_parameters()
    state = [_adam_state(optimizer, p) for p in params]
    steps_taken = {float(s["step"]) for s in state}
    if len(steps_taken) != 1:
        raise ValueError(
            f"club_learn: q's parameters have different Adam step counts {steps_taken}"
        )
    xcat = torch.cat([t.detach() for t in xs])
    ycat = torch.cat([t.detach() for t in ys])
    weight = torch.cat([torch.full((t.shape[0],), 1.0 / t.shape[0], dtype=t.dtype, device=t.device)
                        for t in xs])
    beta1, beta2 = group["betas"]
    with torch.no_grad():
        losses = torch.ops.mmfast.club_learn(
            xcat, ycat, weight, [p.detach() for p in params],
            [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
            int(steps_taken.pop()), steps, float(lr), float(beta1), float(beta2),
            float(group["eps"]),
        )
        for s in state:
            if isinstance(s["step"], torch.Tensor):
                s["step"].add_(steps)
            else:
                s["step"] += steps
    return losses


def club_nll(q: ClubQNet, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """The q-net's learning loss: -sum_m mean_i log q(y_m,i | x_m,i) (up to a constant)."""
    return sum(-q.log_likelihood(xm, ym).mean() for xm, ym in zip(xs, ys))


def club_learn_reference(
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    q: ClubQNet,
    optimizer: torch.optim.Adam,
    steps: int,
    lr: float | None = None,
) -> torch.Tensor:
    """Pure PyTorch, SEA's loop: zero_grad, NLL on detached pairs, backward, Adam step.
    (SEA also shuffles the rows each step, which cannot change a full-batch mean.)"""
    xs, ys = [t.detach() for t in xs], [t.detach() for t in ys]
    group = _adam_group(optimizer, q)
    saved_lr = group["lr"]
    if lr is not None:
        group["lr"] = lr
    losses = []
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = club_nll(q, xs, ys)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    finally:
        group["lr"] = saved_lr
    if not losses:
        return xs[0].new_empty((0,))
    return torch.stack(losses)


def _as_list(t: Tensors, name: str) -> list[torch.Tensor]:
    if isinstance(t, torch.Tensor):
        return [t]
    items = list(t)
    if not items:
        raise ValueError(f"club_learn: {name} must be a tensor or a non-empty sequence of tensors")
    return items


def _adam_group(optimizer, q: ClubQNet) -> dict:
    if not isinstance(optimizer, torch.optim.Adam):
        raise TypeError(
            f"club_learn: optimizer must be the torch.optim.Adam over q.parameters(), got "
            f"{type(optimizer).__name__}"
        )
    ids = {id(p) for p in q.parameters()}
    groups = [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])]
    if len(groups) != 1 or {id(p) for p in groups[0]["params"]} != ids:
        raise ValueError("club_learn: optimizer must hold exactly q's parameters, in one group")
    group = groups[0]
    unsupported = {k: group.get(k) for k in ("weight_decay", "amsgrad", "maximize")
                   if group.get(k)}
    if unsupported or group.get("fused") or group.get("differentiable"):
        raise ValueError(
            f"club_learn: the fused loop implements plain Adam; got unsupported options "
            f"{unsupported or {k: group[k] for k in ('fused', 'differentiable') if group.get(k)}}"
        )
    return group


def _adam_state(optimizer: torch.optim.Adam, p: torch.nn.Parameter) -> dict:
    """The parameter's Adam state, created as torch.optim.Adam creates it on its first step."""
    state = optimizer.state[p]
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


# ---------------------------------------------------------------------- registration
# Schemas and CPU/CUDA kernels come from csrc/; shape inference lives here. club_learn has no
# autograd formula: it updates q in place under no_grad.
if _ext.available():

    @torch.library.register_fake("mmfast::club_learn")
    def _club_learn_fake(x, y, row_weight, params, exp_avg, exp_avg_sq, step, steps, lr, beta1,
                         beta2, eps):
        return x.new_empty((steps,))
