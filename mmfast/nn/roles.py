"""MMRec's two feature roles, visual (``v_feat``) and textual (``t_feat``), filled from a
dataset's modalities: ``image`` plays the visual role, the one other modality (``text``, or
TikTok's ``audio``) the textual role."""
from __future__ import annotations

from typing import Sequence


def visual_textual(modalities: Sequence[str], owner: str, *, need_both: bool
                   ) -> tuple[str | None, str | None]:
    """(visual modality or None, textual modality or None). Raises a one-line ValueError when
    the dataset has no features, more than two modalities, or (``need_both``) only one."""
    available = list(modalities)
    if not available:
        raise ValueError(f"{owner} needs item features, and the dataset has none "
                         "(<modality>_feat.npy files beside the .inter file)")
    if len(available) > 2:
        raise ValueError(f"{owner} takes at most two modalities (visual and textual), the "
                         f"dataset has {available}: choose with --set modalities=[a,b]")
    if need_both and len(available) < 2:
        raise ValueError(f"{owner} needs two modalities (visual and textual), the dataset has "
                         f"{available}")
    visual = "image" if "image" in available else None
    others = [m for m in available if m != visual]
    if visual is None and len(others) == 2:  # no image: the first listed plays the visual role
        visual = others.pop(0)
    return visual, (others[0] if others else None)


def image_text_roles(available: Sequence[str], model: str, *, need: int = 1) -> list[str]:
    """The roles of :func:`visual_textual` as a list in role order, [visual, textual], without
    an absent one (``need=2``: both required)."""
    visual, textual = visual_textual(available, model, need_both=need == 2)
    return [m for m in (visual, textual) if m is not None]


def visual_textual_roles(available: Sequence[str], model: str) -> dict[str, str]:
    """The roles of :func:`visual_textual` as ``{"v": modality, "t": modality}``, an absent role
    left out, ``v`` first (MMRec's order of summing)."""
    visual, textual = visual_textual(available, model, need_both=False)
    return {k: m for k, m in (("v", visual), ("t", textual)) if m is not None}
