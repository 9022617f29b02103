"""Random views for self-supervised recommenders (SLMRec, BM3): inverted dropout and the
masking of one input branch, each drawn from a model-owned ``torch.Generator`` (see
:meth:`mmfast.models.base.Recommender.add_generator`) so that a resumed run draws the same
views, and SLMRec's two-chain propagation with per-layer dropout.

The InfoNCE these views feed is :func:`mmfast.ops.solosim_loss` (in-batch, all rows), and
BM3's bootstrap term is :func:`mmfast.nn.alignment.ui_cosine_loss` on a detached target.
"""
from __future__ import annotations

import torch

from mmfast.ops import SparseGraph, spmm


class DropoutView:
    """Inverted dropout, x̃ = x ⊙ m / (1 - p) with m_k ~ Bernoulli(1 - p) i.i.d. (Srivastava
    et al., JMLR 2014, Eq. (1) with the test-time rescaling moved to training, as
    ``torch.nn.functional.dropout`` does), always on (a view, not a regularizer: it does not
    follow ``train()``/``eval()``). Masks come from ``generator``.

    ``mask(shape, like)`` returns the multiplier m / (1 - p) (dtype and device of ``like``);
    ``view(x)`` is ``x * mask(x.shape, x)``. Drawing a whole table's mask and indexing it gives
    repeated rows of a batch the same mask, as dropping the table and then indexing does.
    """

    def __init__(self, p: float, generator: torch.Generator) -> None:
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p!r}")
        self.p, self.generator = p, generator

    def mask(self, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        # u < 1 - p with u ~ U[0, 1) is Bernoulli(1 - p); on CPU it is 4-5x faster than
        # bernoulli_ with a scalar probability.
        u = torch.rand(tuple(shape), generator=self.generator, device=self.generator.device)
        return (u < 1.0 - self.p).to(device=like.device, dtype=like.dtype).div_(1.0 - self.p)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x.shape, x)


class BranchMasking:
    """SLMRec's feature masking (FM, Tao et al., TMM 2022): two views, each with the
    item input of one of ``n_branches`` branches (ID, then each modality) replaced by zeros,
    the two masked branches distinct: (b1, b2) uniform over ordered pairs with b1 != b2 (the
    distribution of MMRec's redraw-until-different loop), drawn on the generator's device
    with no host read.

    ``keep()`` returns two float vectors [n_branches] of ones with a zero at b1 (resp. b2).
    """

    def __init__(self, n_branches: int, generator: torch.Generator) -> None:
        if n_branches < 2:
            raise ValueError(f"feature masking needs at least two branches, got {n_branches}")
        self.n_branches, self.generator = int(n_branches), generator

    def keep(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = self.n_branches, self.generator.device
        first = torch.randint(n, (1,), generator=self.generator, device=dev)
        second = (first + 1 + torch.randint(n - 1, (1,), generator=self.generator, device=dev)) % n
        branches = torch.arange(n, device=dev)
        return (branches != first).float(), (branches != second).float()


def mask_item_branches(ego: torch.Tensor, n_users: int, keep: torch.Tensor) -> torch.Tensor:
    """``ego`` [n_users + n_items, B*d] (column block b = branch b) with the item rows of
    each branch scaled by ``keep[b]`` (0: masked); user rows unchanged."""
    width = ego.shape[1] // keep.numel()
    cols = keep.to(ego.dtype).repeat_interleave(width)
    return torch.cat([ego[:n_users], ego[n_users:] * cols])


def dropout_chain_views(
    graph: SparseGraph,
    ego_1: torch.Tensor,
    ego_2: torch.Tensor,
    layers: int,
    dropout: DropoutView | None,
    *,
    swap: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLMRec's two augmented propagations (FD / FM): chain c runs x_c^(0) = ego_c,
    x_c^(l+1) = drop(Â x_c^(l)) (``dropout=None``: no drop), and the views are the LightGCN
    mean of layers 0..L,

        view_1 = (ego_1 + Σ_{l≥1} x_2^(l)) / (L + 1),  view_2 = (ego_2 + Σ_{l≥1} x_1^(l)) / (L + 1)

    with ``swap`` (MMRec's code appends chain 2's layers to view 1's list and chain 1's to view
    2's), else each view keeps its own chain. Both chains go through one ``spmm`` per layer
    (stacked as columns), each layer's mask drawn over the whole stacked table.
    """
    width = ego_1.shape[1]
    x = torch.cat([ego_1, ego_2], dim=1)
    total = torch.zeros_like(x)
    for _ in range(layers):
        x = spmm(graph, x)
        if dropout is not None:
            x = dropout.view(x)
        total = total + x
    prop_1, prop_2 = total[:, :width], total[:, width:]
    if swap:
        prop_1, prop_2 = prop_2, prop_1
    scale = 1.0 / (layers + 1)
    return (ego_1 + prop_1) * scale, (ego_2 + prop_2) * scale
