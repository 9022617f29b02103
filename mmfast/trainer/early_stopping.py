"""Early stopping with MMRec's counter semantics.

The counter resets to 0 on a strict improvement of the valid score and grows by one
otherwise; the run stops when the counter exceeds ``stopping_step``, i.e. after
``stopping_step + 1`` evaluations in a row without improvement.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    stopping_step: int
    best: float = float("-inf")
    counter: int = 0

    def step(self, score: float) -> bool:
        """Record one evaluation; True when it is a new best."""
        if score > self.best:
            self.best, self.counter = score, 0
            return True
        self.counter += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.counter > self.stopping_step

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.stopping_step, self.best, self.counter = (
            state["stopping_step"], state["best"], state["counter"])
