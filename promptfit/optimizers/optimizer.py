"""Optimizer base classes.

An optimizer changes a program's trainable variables between batches. :class:`Optimizer` is the
interface the training loop calls; :class:`PopulationOptimizer` implements the search shared by
promptfit's optimizers: keep a scored population of candidate variable sets, propose new
candidates from the best one, score each on the current batch against the incumbent's reward on
the *same* batch (a paired comparison, so an easy batch cannot flatter a candidate), and move
to a candidate only when it does strictly better.
"""

from __future__ import annotations

import copy
import json
import random
from typing import TYPE_CHECKING, Any

from promptfit.errors import ConfigurationError

if TYPE_CHECKING:
    from promptfit.programs.program import Program
    from promptfit.training.trainer import BatchOutcome

__all__ = ["Optimizer", "PopulationOptimizer"]


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class Optimizer:
    """Interface between ``fit`` and a search over variables.

    ``build`` runs when ``fit`` starts (before callbacks restore any backup); then
    ``on_batch_end`` after every training batch and ``on_epoch_end`` after every epoch.
    ``state_dict``/``load_state_dict`` must capture everything (RNG included) so a resumed run
    continues the same search.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self._program: Program | None = None

    @property
    def program(self) -> Program:
        if self._program is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a program (call fit).")
        return self._program

    @property
    def language_models(self) -> list[Any]:
        return []

    def build(self, program: Program, seed: int) -> None:
        self._program = program
        self.rng = random.Random(self.seed if self.seed is not None else seed)

    async def on_batch_end(self, outcome: BatchOutcome) -> None:
        return None

    async def on_epoch_end(self, epoch: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _set_rng_state(self.rng, state["rng"])

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Optimizer:
        return cls(**config)


class PopulationOptimizer(Optimizer):
    """Greedy population search with paired per-batch comparisons.

    Args:
        num_candidates: Candidates proposed and scored per batch (each costs one batch of
            program calls).
        population_size: How many scored candidates to keep.
        seed: Seed of the optimizer's RNG (defaults to the ``fit`` seed).
    """

    def __init__(
        self, num_candidates: int = 1, population_size: int = 10, seed: int | None = None
    ) -> None:
        super().__init__(seed=seed)
        if num_candidates < 1:
            raise ConfigurationError(f"`num_candidates` must be >= 1, got {num_candidates}.")
        if population_size < 1:
            raise ConfigurationError(f"`population_size` must be >= 1, got {population_size}.")
        self.num_candidates = num_candidates
        self.population_size = population_size
        self.population: list[dict[str, Any]] = []
        self.moves = 0

    # -- subclass hooks --------------------------------------------------------------------
    def observe(self, outcome: BatchOutcome) -> None:
        """Learn from the incumbent's batch (e.g. harvest demonstrations)."""

    async def propose(self, parent: dict[str, Any], outcome: BatchOutcome) -> dict[str, Any] | None:
        """A new variable set derived from ``parent``, or ``None`` when nothing can be proposed."""
        raise NotImplementedError

    # -- search ----------------------------------------------------------------------------
    @staticmethod
    def _key(variables: dict[str, Any]) -> str:
        return json.dumps(variables, sort_keys=True, ensure_ascii=False)

    def _record(self, variables: dict[str, Any], reward: float) -> dict[str, Any]:
        key = self._key(variables)
        for member in self.population:
            if member["key"] == key:
                member["score"] = (member["score"] * member["evals"] + reward) / (
                    member["evals"] + 1
                )
                member["evals"] += 1
                return member
        member = {"key": key, "variables": copy.deepcopy(variables), "score": reward, "evals": 1}
        self.population.append(member)
        return member

    def _prune(self, keep: dict[str, Any]) -> None:
        self.population.sort(key=lambda m: m["score"], reverse=True)
        if len(self.population) > self.population_size:
            survivors = self.population[: self.population_size]
            if keep not in survivors:
                survivors[-1] = keep
            self.population = survivors

    async def _score(self, variables: dict[str, Any], outcome: BatchOutcome) -> float:
        program = self.program
        saved = program.get_variables(trainable_only=True)
        program.set_variables(variables)
        try:
            result = await program.run_batch(outcome.x, outcome.y)
        finally:
            program.set_variables(saved)
        return result.mean_reward

    async def on_batch_end(self, outcome: BatchOutcome) -> None:
        program = self.program
        incumbent_vars = program.get_variables(trainable_only=True)
        incumbent = self._record(incumbent_vars, outcome.mean_reward)
        self.observe(outcome)
        best_vars, best_reward = incumbent_vars, outcome.mean_reward
        for _ in range(self.num_candidates):
            candidate = await self.propose(incumbent_vars, outcome)
            if candidate is None or self._key(candidate) == incumbent["key"]:
                continue
            reward = await self._score(candidate, outcome)
            self._record(candidate, reward)
            if reward > best_reward:
                best_vars, best_reward = candidate, reward
        if best_vars is not incumbent_vars:
            program.set_variables(best_vars)
            self.moves += 1
        self._prune(incumbent)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "population": copy.deepcopy(self.population),
            "moves": self.moves,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = copy.deepcopy(state["population"])
        self.moves = state["moves"]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_candidates": self.num_candidates,
            "population_size": self.population_size,
        }
