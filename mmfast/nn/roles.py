"""Which of a dataset's modalities plays MMRec's image (``v_feat``) and text (``t_feat``) role."""
from __future__ import annotations

from typing import Sequence


def image_text_roles(available: Sequence[str], model: str, *, need: int = 1) -> list[str]:
    """[image role, text role] (or one of them) from a dataset's modalities: ``image`` first
    when present (TikTok's ``audio`` then plays the text role), else the dataset's order.
    MMRec's image/text models read at most two modalities and some need both (``need=2``);
    any other count is a one-line error."""
    available = list(available)
    if len(available) < need or not available:
        raise ValueError(f"{model} needs {'two modalities' if need == 2 else 'item features'} "
                         f"(MMRec's image and text roles) and the dataset has {len(available)} "
                         f"({available})")
    if len(available) > 2:
        raise ValueError(f"{model} reads at most two modalities (image and text roles), the "
                         f"dataset has {available}: choose with --set modalities=[a,b]")
    return sorted(available, key=lambda m: m != "image")
