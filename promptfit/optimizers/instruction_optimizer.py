"""``InstructionOptimizer``: an LM proposes better instructions (in the spirit of OPRO/GEPA)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from promptfit.data.data_model import DataModel, Field, json_schema_text
from promptfit.language_models.language_model import LanguageModel
from promptfit.language_models.request import build_messages, render_system
from promptfit.optimizers.optimizer import PopulationOptimizer

if TYPE_CHECKING:
    from promptfit.training.outcome import BatchOutcome

__all__ = ["InstructionOptimizer", "InstructionProposal"]

_META_INSTRUCTIONS = (
    "You improve the instructions of one step of an LLM program. You see the current "
    "instructions, earlier instructions with their scores (higher is better), examples the "
    "program got right and examples it got wrong. Write new instructions that keep what works "
    "and fix the mistakes. Reply with the instructions only."
)


class InstructionProposal(DataModel):
    instructions: str = Field(description="The improved instructions.")


class InstructionOptimizer(PopulationOptimizer):
    """Let a language model rewrite each generator's instructions from scored feedback.

    For every trainable generator, the proposer LM sees the current instructions, the best
    scored instructions tried so far, and up to ``num_examples`` good and bad examples from the
    batch (inputs, the program's output, the expected output, the reward). Each proposal races
    the current instructions on paired per-example evidence and replaces them only when it
    wins (see :class:`~promptfit.optimizers.PopulationOptimizer`); proposals are LM calls and
    count towards ``max_lm_calls``.

    Args:
        language_model: The proposer.
        num_candidates: Proposals scored per batch.
        num_examples: Good and bad examples shown (each).
        population_size: Scored candidates kept.
        confidence: 1 - the chance that a challenger which is in truth no better replaces the
            current variables (see :class:`~promptfit.optimizers.PopulationOptimizer`).
        max_looks: Training batches a challenger may race before it is dropped.
        max_lm_calls: Most LM calls the whole fit may make (proposals and scoring
            included), or ``None``.
        seed: RNG seed.

    Example:
        ```python
        import promptfit as pf

        proposer = pf.LanguageModel(model="openai/proposer", api_base="http://127.0.0.1:8000/v1")
        optimizer = pf.optimizers.InstructionOptimizer(language_model=proposer)
        ```
    """

    def __init__(
        self,
        language_model: LanguageModel,
        num_candidates: int = 1,
        num_examples: int = 3,
        population_size: int = 10,
        confidence: float = 0.95,
        max_looks: int = 5,
        max_lm_calls: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            num_candidates=num_candidates,
            population_size=population_size,
            confidence=confidence,
            max_looks=max_looks,
            max_lm_calls=max_lm_calls,
            seed=seed,
        )
        self.language_model = language_model
        self.num_examples = num_examples
        self._system = render_system(_META_INSTRUCTIONS, json_schema_text(InstructionProposal))

    @property
    def language_models(self) -> list[Any]:
        return [self.language_model]

    def _history(self, path: str) -> list[dict[str, Any]]:
        seen: dict[str, float] = {}
        for member in sorted(self.population, key=lambda m: m["score"], reverse=True):
            text = member["variables"].get(path, {}).get("instructions")
            if text is not None and text not in seen:
                seen[text] = round(member["score"], 4)
        return [{"instructions": t, "score": s} for t, s in list(seen.items())[:5]]

    def _examples(self, outcome: BatchOutcome) -> tuple[list[Any], list[Any]]:
        rows = []
        for x, y, pred, reward in zip(
            outcome.x, outcome.y, outcome.predictions, outcome.rewards, strict=False
        ):
            rows.append(
                {
                    "inputs": x.model_dump(mode="json"),
                    "output": pred.model_dump(mode="json") if pred is not None else None,
                    "expected": y,
                    "reward": reward,
                }
            )
        good = [r for r in rows if r["reward"] >= 1.0]
        bad = [r for r in rows if r["reward"] < 1.0]
        pick = self.num_examples
        return (
            self.rng.sample(good, min(pick, len(good))),
            self.rng.sample(bad, min(pick, len(bad))),
        )

    async def propose(self, parent: dict[str, Any], outcome: BatchOutcome) -> dict[str, Any] | None:
        candidate = copy.deepcopy(parent)
        changed = False
        good, bad = self._examples(outcome)
        for path, value in candidate.items():
            if "instructions" not in value:
                continue
            payload = {
                "step": path.split("/", 1)[0],
                "current_instructions": value["instructions"],
                "scored_instructions": self._history(path),
                "good_examples": good,
                "bad_examples": bad,
            }
            generation = await self.language_model.generate(
                build_messages(self._system, [], payload), InstructionProposal
            )
            if generation.value is None:
                continue
            text = generation.value.instructions.strip()  # type: ignore[attr-defined]
            if text and text != value["instructions"]:
                value["instructions"] = text
                changed = True
        return candidate if changed else None

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "language_model": self.language_model.get_config(),
            "num_examples": self.num_examples,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InstructionOptimizer:
        config = dict(config)
        lm = LanguageModel.from_config(config.pop("language_model"))
        return cls(language_model=lm, **config)
