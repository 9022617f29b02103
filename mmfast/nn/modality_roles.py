"""Which dataset modality plays MMRec's ``v_feat`` and which its ``t_feat``."""
from __future__ import annotations

from typing import Sequence


def visual_textual_roles(available: Sequence[str], model: str) -> dict[str, str]:
    """{"v": modality, "t": modality} (either key absent when the dataset lacks it) for models
    written around MMRec's two feature files (vision, text): ``image`` is ``v`` when present and
    the other modality ``t`` (TikTok's audio plays the text role); a dataset with one modality
    other than image gives it the ``t`` role; two modalities without image are ``v``, ``t`` in
    the dataset's order. The dict lists ``v`` first (MMRec's order of summing). No modality, or
    more than two, is a one-line error."""
    available = list(available)
    if not available:
        raise ValueError(f"{model} needs item features, and the dataset has none "
                         "(<modality>_feat.npy files beside the .inter file)")
    if len(available) > 2:
        raise ValueError(f"{model} takes at most two modalities (MMRec's vision and text), the "
                         f"dataset has {available}: choose with --set modalities=[image,text]")
    if "image" in available:
        others = [m for m in available if m != "image"]
        return {"v": "image", **({"t": others[0]} if others else {})}
    if len(available) == 1:
        return {"t": available[0]}
    return {"v": available[0], "t": available[1]}
