"""Optimizer base classes.

An optimizer changes a program's trainable variables between batches. :class:`Optimizer` is the
interface the training loop calls; :class:`PopulationOptimizer` implements the selection
protocol shared by every promptfit search optimizer:

* challengers (candidate variable sets) are proposed from the current variables (the
  *incumbent*) and scored **concurrently** -- every challenger on every example of the batch in
  flight at once, bounded only by each language model's ``max_concurrency``;
* each challenger races the incumbent on the same examples over successive batches, and
  replaces it only when a sign test on the paired per-example differences says it is better
  at the configured confidence (:mod:`promptfit.optimizers.selection` says why);
* with validation data, every epoch ends on the best candidate by validation reward among
  those validated (so ``EarlyStopping`` and ``ProgramCheckpoint`` see the chosen one);
* ``max_lm_calls`` bounds every LM call of the fit (training batches, proposals, scoring,
  validation), so two optimizers can be compared at equal budget.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from promptfit.errors import ConfigurationError
from promptfit.optimizers.selection import Race
from promptfit.variables.overrides import override_variables

if TYPE_CHECKING:
    from promptfit.programs.program import Program
    from promptfit.training.context import FitContext
    from promptfit.training.outcome import BatchOutcome

__all__ = ["Optimizer", "PopulationOptimizer", "score_candidates"]


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

    Attributes:
        context: The running fit's :class:`~promptfit.training.context.FitContext` (its
            validation data, counters...), set by ``fit`` around the run; ``None`` outside.
    """

    context: FitContext | None = None

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

    async def on_validation_end(self, logs: dict[str, float]) -> None:
        """After ``fit`` validated the program at an epoch end (``logs["reward"]``)."""
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


async def score_candidates(
    program: Program,
    candidates: Sequence[dict[str, Any]],
    x: Sequence[Any],
    y: Sequence[Any],
    trace: bool = False,
) -> list[BatchOutcome]:
    """Run ``program`` with each candidate's variables on ``(x, y)``, all at once.

    The program's own variables are not touched: each candidate's task runs under
    :func:`~promptfit.variables.overrides.override_variables`, so candidates x examples are in
    flight together and only each language model's ``max_concurrency`` bounds them.
    """
    from promptfit.training.concurrency import run_concurrently as _run_concurrently

    outcomes: list[Any] = [None] * len(candidates)

    async def run(index: int) -> None:
        with override_variables(candidates[index]):
            outcomes[index] = await program.run_batch(list(x), list(y), trace=trace)

    await _run_concurrently(run, len(candidates))
    return outcomes


class PopulationOptimizer(Optimizer):
    """Search by racing challengers against the incumbent, with a budget.

    Subclasses implement :meth:`propose` (and optionally :meth:`observe`). After every
    training batch, free race slots (up to ``num_candidates``) are filled with new proposals;
    every racing challenger is scored on the batch the incumbent just ran, all concurrently;
    a challenger replaces the incumbent only when the sign test on the accumulated paired
    differences passes at ``confidence`` (see :mod:`promptfit.optimizers.selection`). With a
    challenger that is in truth no better, the default (``confidence=0.95``, ``max_looks=5``)
    moves in fewer than 5 % of races.

    With validation data, at each epoch end every incumbent of the epoch that has no
    validation score yet, and up to ``num_candidates`` challengers -- first those racing with
    more examples won than lost (or that the budget left no training data to race on), then
    the best by training reward among the others scored so far -- are scored on the
    validation set (concurrently); the program ends the epoch on the best candidate by
    validation reward among all validated so far (the current variables win ties). Validation
    thus decides what a race could not settle before the epoch (or the budget) ended, on data
    the races never saw.

    Args:
        num_candidates: Challengers racing at a time (each costs one batch of program calls
            per training batch).
        population_size: How many scored candidates to keep (proposal history).
        confidence: 1 - the false-acceptance rate allowed per race.
        max_looks: Batches a challenger may race before it is dropped.
        max_lm_calls: Most LM calls the whole fit may make (training batches, proposals,
            candidate scoring and validation), or ``None`` for no limit. The optimizer stops
            the fit (``stop_training``) before a step it cannot pay for, keeping enough for
            the last validation pass. Calls per example are measured as the run goes, so the
            final count can differ from the limit by about one example's calls.
        seed: Seed of the optimizer's RNG (defaults to the ``fit`` seed).
    """

    def __init__(
        self,
        num_candidates: int = 1,
        population_size: int = 10,
        confidence: float = 0.95,
        max_looks: int = 5,
        max_lm_calls: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if not isinstance(num_candidates, int) or num_candidates < 1:
            raise ConfigurationError(f"`num_candidates` must be >= 1, got {num_candidates!r}.")
        if not isinstance(population_size, int) or population_size < 1:
            raise ConfigurationError(f"`population_size` must be >= 1, got {population_size!r}.")
        if not isinstance(confidence, int | float) or not 0.5 <= confidence < 1.0:
            raise ConfigurationError(
                f"`confidence` must be in [0.5, 1), e.g. 0.95, got {confidence!r}."
            )
        if not isinstance(max_looks, int) or max_looks < 1:
            raise ConfigurationError(f"`max_looks` must be a positive integer, got {max_looks!r}.")
        if max_lm_calls is not None and (
            isinstance(max_lm_calls, bool) or not isinstance(max_lm_calls, int) or max_lm_calls < 1
        ):
            raise ConfigurationError(
                f"`max_lm_calls` must be a positive integer or None, got {max_lm_calls!r}."
            )
        self.num_candidates = num_candidates
        self.population_size = population_size
        self.confidence = float(confidence)
        self.max_looks = max_looks
        self.max_lm_calls = max_lm_calls
        self._reset_search()

    def _reset_search(self) -> None:
        self.population: list[dict[str, Any]] = []
        self.races: list[Race] = []
        self.rejected: list[str] = []
        self.validated: dict[str, dict[str, Any]] = {}
        self.epoch_incumbents: dict[str, dict[str, Any]] = {}
        self.moves = 0
        self.decisions = {"accepted": 0, "rejected": 0}
        self.calls_start = 0
        self.calls_measured = 0
        self.examples_measured = 0
        self.budget_exhausted = False

    def build(self, program: Program, seed: int) -> None:
        super().build(program, seed)
        self._reset_search()
        self.calls_start = program.usage_totals().calls  # type: ignore[attr-defined]

    # -- subclass hooks --------------------------------------------------------------------
    def observe(self, outcome: BatchOutcome) -> Any:
        """Learn from the incumbent's batch (e.g. harvest demonstrations); may be async."""

    async def propose(self, parent: dict[str, Any], outcome: BatchOutcome) -> dict[str, Any] | None:
        """A new variable set derived from ``parent``, or ``None`` when nothing can be proposed."""
        raise NotImplementedError

    # -- bookkeeping -----------------------------------------------------------------------
    @staticmethod
    def _key(variables: dict[str, Any]) -> str:
        return json.dumps(variables, sort_keys=True, ensure_ascii=False)

    def _record(self, variables: dict[str, Any], reward: float, n: int = 1) -> dict[str, Any]:
        key = self._key(variables)
        for member in self.population:
            if member["key"] == key:
                total = member["score"] * member["evals"] + reward * n
                member["evals"] += n
                member["score"] = total / member["evals"]
                return member
        member = {"key": key, "variables": copy.deepcopy(variables), "score": reward, "evals": n}
        self.population.append(member)
        return member

    def _prune(self, keep: str) -> None:
        self.population.sort(key=lambda m: m["score"], reverse=True)
        if len(self.population) > self.population_size:
            survivors = self.population[: self.population_size]
            if all(m["key"] != keep for m in survivors):
                survivors[-1] = next(m for m in self.population if m["key"] == keep)
            self.population = survivors

    # -- budget ----------------------------------------------------------------------------
    @property
    def calls_used(self) -> int:
        """LM calls made since the fit started (every LM of program, reward and optimizer)."""
        return self.program.usage_totals().calls - self.calls_start  # type: ignore[attr-defined]

    def _calls_per_example(self) -> float:
        if self.examples_measured == 0:
            return 1.0
        return max(self.calls_measured / self.examples_measured, 1e-9)

    def _measure(self, calls: int, examples: int) -> None:
        if examples > 0 and calls >= 0:
            self.calls_measured += calls
            self.examples_measured += examples

    def _validation_size(self) -> int:
        state = self.context
        return len(state.val_xs) if state is not None else 0

    def _remaining(self, final: bool = False) -> float:
        """Calls still available after what the end of the fit needs.

        With validation data, training steps keep back the last epoch end's validation
        passes: the incumbent and ``num_candidates`` challengers scored by the optimizer, and
        fit's own pass (``final=True``: only fit's own pass, used at the epoch end itself).
        """
        if self.max_lm_calls is None:
            return math.inf
        passes = 1 if final else 2 + self.num_candidates
        reserve = passes * self._validation_size() * self._calls_per_example()
        return self.max_lm_calls - self.calls_used - reserve

    def _affordable(self, cost: float, wanted: int, final: bool = False) -> int:
        """How many of ``wanted`` runs costing ``cost`` calls each the budget still pays for."""
        remaining = self._remaining(final)
        if math.isinf(remaining) or cost <= 0:
            return wanted
        return max(0, min(wanted, int(remaining // cost)))

    def _stop_for_budget(self) -> None:
        self.budget_exhausted = True
        self.program.stop_training = True  # type: ignore[attr-defined]

    # -- search ----------------------------------------------------------------------------
    async def _fill(self, incumbent: dict[str, Any], incumbent_key: str, outcome: Any) -> None:
        """Propose challengers for the free race slots (proposals run concurrently)."""
        free = self.num_candidates - len(self.races)
        if free <= 0:
            return
        from promptfit.training.concurrency import run_concurrently as _run_concurrently

        proposals: list[Any] = [None] * free

        async def run(index: int) -> None:
            proposals[index] = await self.propose(incumbent, outcome)

        await _run_concurrently(run, free)
        taken = {incumbent_key, *self.rejected, *(r.key for r in self.races)}
        for candidate in proposals:
            if candidate is None:
                continue
            key = self._key(candidate)
            if key in taken:
                continue
            taken.add(key)
            self.races.append(Race(key=key, variables=candidate))

    async def on_batch_end(self, outcome: BatchOutcome) -> None:
        program = self.program
        n = len(outcome.x)
        if self.examples_measured == 0 and n:
            self._measure(self.calls_used, n)  # the first batch: calls of one program run
        incumbent = program.get_variables(trainable_only=True)
        incumbent_key = self._key(incumbent)
        self.epoch_incumbents.setdefault(incumbent_key, incumbent)
        self._record(incumbent, outcome.mean_reward, n)
        observed = self.observe(outcome)
        if inspect.isawaitable(observed):
            await observed
        # Proposals are made even when the budget cannot race them on training data: with
        # validation data, the epoch end still scores them there (unraced challengers).
        await self._fill(incumbent, incumbent_key, outcome)
        affordable = self._affordable(n * self._calls_per_example(), len(self.races))
        racing = self.races[: max(0, affordable)]
        if not racing:
            if self.races or self._remaining() < 2 * n * self._calls_per_example():
                self._stop_for_budget()
            self._prune(incumbent_key)
            return
        before = self.calls_used
        outcomes = await score_candidates(
            program, [r.variables for r in racing], outcome.x, outcome.y
        )
        self._measure(self.calls_used - before, n * len(racing))
        winner: Race | None = None
        for race, scored in zip(racing, outcomes, strict=True):
            race.add(scored.rewards, outcome.rewards)
            self._record(race.variables, scored.mean_reward, n)
            if race.accepted(self.confidence, self.max_looks) and (
                winner is None
                or (race.p_value, -race.diff_sum) < (winner.p_value, -winner.diff_sum)
            ):
                winner = race
        if winner is not None:
            program.set_variables(winner.variables)  # type: ignore[attr-defined]
            self.moves += 1
            self.decisions["accepted"] += 1
            self.races = [r for r in self.races if r is not winner]
            for race in self.races:
                race.reset()
            self.rejected = []
            self.epoch_incumbents.setdefault(winner.key, copy.deepcopy(winner.variables))
        else:
            for race in [r for r in racing if r.rejected(self.max_looks)]:
                self.races.remove(race)
                self.decisions["rejected"] += 1
                self.rejected = [*self.rejected, race.key][-64:]
        self._prune(winner.key if winner is not None else incumbent_key)
        if self._remaining() < 2 * n * self._calls_per_example():
            self._stop_for_budget()  # the next step could not pay for a batch and a challenger

    async def on_epoch_end(self, epoch: int) -> None:
        """Validate this epoch's incumbents; end the epoch on the best validated candidate."""
        state = self.context
        if state is None or not state.val_xs:
            self.epoch_incumbents = {}
            return
        program = self.program
        current = program.get_variables(trainable_only=True)
        current_key = self._key(current)
        self.epoch_incumbents.setdefault(current_key, current)
        pending = [(k, v) for k, v in self.epoch_incumbents.items() if k not in self.validated]
        self.epoch_incumbents = {}
        # Challengers still racing with more wins than losses are validated too (strongest
        # evidence first): when the budget or the epoch ends a race early, validation decides.
        leading = sorted(
            (
                r
                for r in self.races
                if (r.wins > r.losses or r.looks == 0) and r.key not in self.validated
            ),
            key=lambda r: (r.looks == 0, r.p_value, -r.diff_sum),
        )
        chosen = [(r.key, r.variables) for r in leading[: self.num_candidates]]
        # Free slots go to the candidates with the best training reward so far (races end
        # early on futility or the budget; a dropped candidate may still be the best one,
        # and the validation set, which no race saw, is the fairer judge).
        taken = {key for key, _ in pending} | {key for key, _ in chosen} | set(self.validated)
        runners_up = sorted(
            (m for m in self.population if m["key"] not in taken and m["key"] != current_key),
            key=lambda m: (-m["score"], -m["evals"]),
        )
        chosen += [
            (m["key"], m["variables"]) for m in runners_up[: self.num_candidates - len(chosen)]
        ]
        pending += chosen
        pending.sort(key=lambda item: item[0] != current_key)  # the incumbent first
        if len(self.validated) + len(pending) < 2:
            return  # nothing to choose between: fit's own validation pass scores the incumbent
        per_pass = len(state.val_xs) * self._calls_per_example()
        affordable = self._affordable(per_pass, len(pending), final=True)
        pending = pending[: max(0, affordable)]
        if pending:
            before = self.calls_used
            outcomes = await score_candidates(
                program, [v for _, v in pending], state.val_xs, state.val_ys
            )
            self._measure(self.calls_used - before, len(state.val_xs) * len(pending))
            for (key, variables), scored in zip(pending, outcomes, strict=True):
                self.validated[key] = {"variables": variables, "val_reward": scored.mean_reward}
        if not self.validated:
            return
        best_key = max(
            self.validated,
            key=lambda k: (self.validated[k]["val_reward"], k == current_key),
        )
        if (
            best_key != current_key
            and current_key in self.validated
            and self.validated[best_key]["val_reward"] > self.validated[current_key]["val_reward"]
        ):
            program.set_variables(self.validated[best_key]["variables"])  # type: ignore[attr-defined]
            self.moves += 1
            self.races = []
            self.rejected = []

    async def on_validation_end(self, logs: dict[str, float]) -> None:
        """Keep fit's validation score of the incumbent, so it is never validated twice."""
        if "reward" not in logs:
            return
        variables = self.program.get_variables(trainable_only=True)
        self.validated[self._key(variables)] = {
            "variables": variables,
            "val_reward": float(logs["reward"]),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "population": copy.deepcopy(self.population),
            "races": [r.state_dict() for r in self.races],
            "rejected": list(self.rejected),
            "validated": copy.deepcopy(self.validated),
            "epoch_incumbents": copy.deepcopy(self.epoch_incumbents),
            "moves": self.moves,
            "decisions": dict(self.decisions),
            "calls_start": self.calls_start,
            "calls_measured": self.calls_measured,
            "examples_measured": self.examples_measured,
            "budget_exhausted": self.budget_exhausted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = copy.deepcopy(state["population"])
        self.races = [Race.from_state(copy.deepcopy(r)) for r in state.get("races", [])]
        self.rejected = list(state.get("rejected", []))
        self.validated = copy.deepcopy(state.get("validated", {}))
        self.epoch_incumbents = copy.deepcopy(state.get("epoch_incumbents", {}))
        self.moves = state["moves"]
        self.decisions = dict(state.get("decisions", {"accepted": 0, "rejected": 0}))
        self.calls_start = state.get("calls_start", self.calls_start)
        self.calls_measured = state.get("calls_measured", 0)
        self.examples_measured = state.get("examples_measured", 0)
        self.budget_exhausted = state.get("budget_exhausted", False)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_candidates": self.num_candidates,
            "population_size": self.population_size,
            "confidence": self.confidence,
            "max_looks": self.max_looks,
            "max_lm_calls": self.max_lm_calls,
        }
