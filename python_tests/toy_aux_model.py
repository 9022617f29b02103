"""A model with an auxiliary optimizer, a hook, its own random stream and an epoch schedule:
one file plus one YAML (toy_aux_model.yaml), registered from outside the package."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmfast.models import Recommender, register
from mmfast.nn import LightGCNEmbeddings, bpr_loss


@register("ToyAux")
class ToyAux(Recommender):
    """LightGCN plus a critic trained by its own Adam between the model's backward and step
    (SEA's CLUB pattern) on rows drawn from the model's own generator."""

    config_file = Path(__file__).with_name("toy_aux_model.yaml")

    def __init__(self, config, dataset, device):
        super().__init__(config, dataset, device)
        d = int(config["embedding_size"])
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, d)
        self.adj = dataset.norm_adj().to(self.device)
        self.critic = nn.Linear(d, d)
        self.critic_opt = self.add_auxiliary_optimizer(
            "critic", torch.optim.Adam(self.critic.parameters(), lr=float(config["critic_lr"])))
        self.rows = self.add_generator("rows")
        self.steps_run = 0

    def calculate_loss(self, users, positives, negatives):
        u, i = self.ids(self.adj, 2)
        # The critic's loss term reaches the model, never the critic (it is detached there).
        w = [p.detach() for p in (self.critic.weight, self.critic.bias)]
        pick = torch.randperm(self.n_items, generator=self.rows, device=self.rows.device)[:32]
        align = (nn.functional.linear(i[pick], *w) - i[pick]).pow(2).mean()
        ramp = min(1.0, (self.current_epoch + 1) / 3)  # a per-epoch schedule
        self._pairs = i[pick].detach()
        return bpr_loss(u[users], i[positives], i[negatives]) + ramp * float(
            self.config["critic_weight"]) * align

    def after_backward(self):
        for _ in range(int(self.config["critic_steps"])):
            self.critic_opt.zero_grad(set_to_none=True)
            (self.critic(self._pairs) - self._pairs).pow(2).mean().backward()
            self.critic_opt.step()
        self.steps_run += 1

    def embeddings(self):
        return self.ids(self.adj, 2)
