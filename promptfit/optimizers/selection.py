"""How a search optimizer decides that a candidate is better: paired racing with a sign test.

Why this rule. The old rule moved to a candidate as soon as it scored higher than the current
variables (the *incumbent*) on one training batch. With 8 examples and a candidate that is in
truth no better, that happens by chance about a third of the time, and the run keeps whatever
won last. Here a challenger must *accumulate* evidence:

* every challenger is scored on the same examples as the incumbent (the training batch the
  incumbent just ran), so each example gives a paired difference ``d = r_challenger -
  r_incumbent``; pairing cancels the example's difficulty, which dominates the variance;
* differences accumulate over successive batches (a *race*) until a decision;
* the decision is an exact one-sided **sign test** on the non-zero differences: accept when
  ``P(Binomial(wins + losses, 1/2) >= wins) <= alpha / max_looks``, where ``alpha = 1 -
  confidence``. Dividing by the number of looks (Bonferroni) keeps the chance that a
  challenger which is in truth no better is *ever* accepted during its race below ``alpha``,
  although it is tested after every batch;
* a challenger is dropped (rejected) after ``max_looks`` batches without acceptance, or as
  soon as it has not won more examples than it lost after two looks (futility: stopping a
  race early can only lower the false-acceptance rate).

The sign test was chosen over a paired bootstrap because it is exact for the small samples a
race sees, needs no resampling (so no random numbers: a resumed run takes the same
decisions without extra RNG state), and suits the 0/1 rewards that most programs use, where
most differences are ties and carry no information. Its cost is lower power for graded
rewards than a t-test would have; the racing over batches makes up for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Race", "sign_test_p_value"]

_TIE = 1e-9


def sign_test_p_value(wins: int, losses: int) -> float:
    """One-sided exact sign test: ``P(X >= wins)`` for ``X ~ Binomial(wins + losses, 1/2)``.

    Args:
        wins: Examples where the challenger earned more reward than the incumbent.
        losses: Examples where it earned less (ties are left out before the test).

    Returns:
        The p-value; 1.0 when there is no non-tied example.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n


@dataclass
class Race:
    """The paired evidence of one challenger against the current incumbent (JSON-friendly)."""

    key: str
    variables: dict[str, Any]
    wins: int = 0
    losses: int = 0
    examples: int = 0
    reward_sum: float = 0.0
    diff_sum: float = 0.0
    looks: int = 0

    def add(self, challenger: list[float], incumbent: list[float]) -> None:
        """Add one look: the rewards of both on the same examples, in the same order."""
        for mine, theirs in zip(challenger, incumbent, strict=True):
            diff = mine - theirs
            if diff > _TIE:
                self.wins += 1
            elif diff < -_TIE:
                self.losses += 1
            self.diff_sum += diff
            self.reward_sum += mine
        self.examples += len(challenger)
        self.looks += 1

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.examples if self.examples else 0.0

    @property
    def p_value(self) -> float:
        return sign_test_p_value(self.wins, self.losses)

    def accepted(self, confidence: float, max_looks: int) -> bool:
        """Whether the evidence so far says the challenger beats the incumbent."""
        return self.wins > self.losses and self.p_value <= (1.0 - confidence) / max_looks

    def rejected(self, max_looks: int) -> bool:
        """Whether the race is over without acceptance (out of looks, or hopeless)."""
        return self.looks >= max_looks or (self.looks >= 2 and self.wins <= self.losses)

    def reset(self) -> None:
        """Forget the evidence (it was against an incumbent that has just been replaced)."""
        self.wins = self.losses = self.examples = self.looks = 0
        self.reward_sum = self.diff_sum = 0.0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Race:
        return cls(**state)
