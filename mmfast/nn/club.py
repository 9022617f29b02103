"""The CLUB variational network q(y | x) of SEA (MODELS.md §2.3): a diagonal Gaussian whose mean
and log-variance come from two small MLP heads.

* mu(x)       = Linear(x_dim, hidden) -> ReLU -> Linear(hidden, y_dim)
* logvar(x)   = Linear(x_dim, hidden) -> ReLU -> Linear(hidden, y_dim) -> tanh, in (-1, 1)

SEA builds it with ``hidden_size = 16`` and uses ``16 // 2 = 8`` as the width: pass ``hidden=8``
(the default) to get SEA's network.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ClubNet(nn.Module):
    """Gaussian q(y | x) with mean and log-variance heads; shared by every modality in SEA."""

    def __init__(self, x_dim: int = 32, y_dim: int = 32, hidden: int = 8) -> None:
        super().__init__()
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ClubNet: {name} must be a positive int, got {value!r}")
        self.x_dim, self.y_dim, self.hidden = x_dim, y_dim, hidden
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu(x), logvar(x))``, each [n, y_dim]."""
        return self.mu(x), self.logvar(x)

    def flat_parameters(self) -> list[nn.Parameter]:
        """The 8 parameters in the order the fused kernels take them:
        mu W1, b1, W2, b2, then logvar W1, b1, W2, b2."""
        return [self.mu[0].weight, self.mu[0].bias, self.mu[2].weight, self.mu[2].bias,
                self.logvar[0].weight, self.logvar[0].bias, self.logvar[2].weight,
                self.logvar[2].bias]

    def heads(
        self, x: torch.Tensor, detach_params: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``; with ``detach_params`` no gradient reaches the net's parameters
        (gradients still flow to x)."""
        p = self.flat_parameters()
        if detach_params:
            p = [t.detach() for t in p]
        mu = F.linear(F.relu(F.linear(x, p[0], p[1])), p[2], p[3])
        logvar = torch.tanh(F.linear(F.relu(F.linear(x, p[4], p[5])), p[6], p[7]))
        return mu, logvar

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per row: sum_d -(mu_d(x) - y_d)^2 / (2 exp(logvar_d(x))) - logvar_d(x) / 2, i.e.
        log q(y | x) up to a constant. [n]."""
        mu, logvar = self(x)
        return (-(mu - y) ** 2 / (2 * logvar.exp()) - logvar / 2).sum(-1)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, y_dim={self.y_dim}, hidden={self.hidden}"
