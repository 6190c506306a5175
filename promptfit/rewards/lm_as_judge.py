"""``LMAsJudge``: a language model scores the prediction against the ground truth."""

from __future__ import annotations

from typing import Any

from promptfit.data.data_model import DataModel, Field, json_schema_text
from promptfit.language_models.language_model import LanguageModel
from promptfit.language_models.request import build_messages, render_system
from promptfit.rewards.reward import Reward, masked

__all__ = ["JudgeVerdict", "LMAsJudge"]

_DEFAULT_INSTRUCTIONS = (
    "You grade a prediction against the ground truth. Give `score` 1.0 when the prediction is "
    "fully correct, 0.0 when it is wrong, values in between for partial credit, and a short "
    "critique."
)


class JudgeVerdict(DataModel):
    critique: str = Field(description="One or two sentences on what is right or wrong.")
    score: float = Field(description="Between 0.0 (wrong) and 1.0 (fully correct).")


class LMAsJudge(Reward):
    """Ask a language model to grade each prediction; the score is clipped to [0, 1].

    A failed judge call scores 0 and is counted in the judge LM's ``failed_calls``.

    Args:
        language_model: The judge.
        instructions: Grading instructions.
        in_mask: Fields shown to the judge.
        out_mask: Fields hidden from the judge.

    Example:
        ```python
        import promptfit as pf

        judge_lm = pf.LanguageModel(model="openai/judge", api_base="http://127.0.0.1:8000/v1")
        reward = pf.rewards.LMAsJudge(language_model=judge_lm)
        ```
    """

    def __init__(
        self,
        language_model: LanguageModel,
        instructions: str = _DEFAULT_INSTRUCTIONS,
        in_mask: list[str] | None = None,
        out_mask: list[str] | None = None,
    ) -> None:
        self.language_model = language_model
        self.instructions = instructions
        self.in_mask = in_mask
        self.out_mask = out_mask
        self._system = render_system(instructions, json_schema_text(JudgeVerdict))

    @property
    def language_models(self) -> list[Any]:
        return [self.language_model]

    async def call(self, y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        payload = {
            "ground_truth": masked(y_true, self.in_mask, self.out_mask),
            "prediction": masked(y_pred, self.in_mask, self.out_mask),
        }
        messages = build_messages(self._system, [], payload)
        generation = await self.language_model.generate(messages, JudgeVerdict)
        if generation.value is None:
            return 0.0
        score = float(generation.value.score)  # type: ignore[attr-defined]
        return min(1.0, max(0.0, score))

    def get_config(self) -> dict[str, Any]:
        return {
            "language_model": self.language_model.get_config(),
            "instructions": self.instructions,
            "in_mask": self.in_mask,
            "out_mask": self.out_mask,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LMAsJudge:
        config = dict(config)
        lm = LanguageModel.from_config(config.pop("language_model"))
        return cls(language_model=lm, **config)
