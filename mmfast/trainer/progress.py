"""Per-epoch progress: a tqdm bar on a terminal, nothing extra otherwise (the log has lines)."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def use_bar(setting: bool | None) -> bool:
    """``None``: a bar only when stderr is a terminal."""
    return sys.stderr.isatty() if setting is None else bool(setting)


def epoch_bar(it: Iterable[T], total: int, epoch: int, enabled: bool) -> Iterator[T]:
    if not enabled:
        return iter(it)
    from tqdm import tqdm

    return iter(tqdm(it, total=total, desc=f"epoch {epoch}", unit="batch", leave=False,
                     dynamic_ncols=True))
