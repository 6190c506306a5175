"""Guide 03: rewards and metrics.

In Keras the loss is what training minimises and metrics are what you watch. promptfit keeps
that split, turned around for prompts (higher is better, and nothing is differentiable):

* A **reward** scores *one* prediction against its ground truth, as a float in [0, 1].
  Optimizers compare candidate prompts by their mean reward on a batch, so the reward *is*
  the training signal: whatever it does not measure, training will not improve. A failed
  prediction (``None``) scores 0 without calling the reward.
* **Metrics** accumulate over an epoch or an evaluation (accuracy, F1...) and are only logged.
  They are stateful (``update_state``/``result``/``reset_state``), like Keras metrics, and save
  their state so a resumed run continues a half-finished epoch exactly.

Built-in rewards: ``ExactMatch`` (field-wise equality, with ``in_mask``/``out_mask`` to choose
fields, ``normalize=True`` for case and spaces), ``LMAsJudge`` (an LM grades the prediction:
for open-ended outputs), any plain function ``(y_true: dict, y_pred: dict) -> float``, or a
``Reward`` subclass. Built-in metrics: ``Accuracy``, ``F1Score`` (macro, micro, binary) and
``MeanReward``.

Rewards and metrics receive plain dicts (``model_dump`` of the data models), so they never
depend on your classes.

Run it::

    python guides/03_rewards_and_metrics.py --lm fake
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from _common import cli, describe_backend, language_model, section

import promptfit as pf


class Review(pf.DataModel):
    review: str = pf.Field(description="A short product or movie review")


class Sentiment(pf.DataModel):
    label: Literal["positive", "negative"] = pf.Field(
        description="Whether the review is positive or negative"
    )


REVIEWS = [
    ("A wonderful, moving film. I loved every minute.", "positive"),
    ("Terrible battery life and awful customer support.", "negative"),
    ("The best headphones I have owned: great sound.", "positive"),
    ("Boring plot, dull characters, a waste of time.", "negative"),
    ("Not bad at all, actually rather enjoyable.", "positive"),
    ("I expected great things and got a poor copy.", "negative"),
]
X = [{"review": text} for text, _ in REVIEWS]
Y = [{"label": label} for _, label in REVIEWS]


class StrictLabel(pf.rewards.Reward):
    """A custom reward: 1 for the right label, divided by 1 + the number of extra fields.

    Subclass ``Reward`` when the scoring needs configuration (saved with ``get_config``) or
    async work; ``call`` receives plain dicts and returns a float in [0, 1].
    """

    def __init__(self, field: str = "label") -> None:
        self.field = field

    async def call(self, y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        correct = y_pred.get(self.field) == y_true.get(self.field)
        extra = len(set(y_pred) - set(y_true))
        return float(correct) / (1 + extra)

    def get_config(self) -> dict[str, Any]:
        return {"field": self.field}


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())

    section("1. Calling rewards directly")
    exact = pf.rewards.ExactMatch(in_mask=["label"])
    print("ExactMatch same     :", await exact({"label": "positive"}, {"label": "positive"}))
    print("ExactMatch different:", await exact({"label": "positive"}, {"label": "negative"}))
    loose = pf.rewards.ExactMatch(normalize=True)
    print("normalize=True      :", await loose({"label": "Positive "}, {"label": "positive"}))
    # Only the ground truth's fields are compared: extra predicted fields (a ChainOfThought's
    # `thinking`, say) do not matter unless you say so.
    print(
        "extra field ignored :", await exact({"label": "negative"}, {"label": "negative", "x": 1})
    )
    strict = StrictLabel()
    print(
        "custom reward       :", await strict({"label": "negative"}, {"label": "negative", "x": 1})
    )

    section("2. A plain function is a reward")

    def first_letter(y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        """Half credit for the right first letter: a shaped reward gives optimizers a gradient
        of sorts between 'wrong' and 'right'."""
        if y_pred["label"] == y_true["label"]:
            return 1.0
        return 0.5 if y_pred["label"][:1] == y_true["label"][:1] else 0.0

    lm = language_model("sentiment")
    inputs = pf.Input(data_model=Review)
    outputs = await pf.Generator(
        data_model=Sentiment,
        language_model=lm,
        instructions="Classify the sentiment of the review.",
        name="classifier",
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="sentiment")
    program.compile(reward=first_letter)
    print("evaluate with a function reward:", await program.evaluate(X, Y, verbose=0))

    section("3. Metrics beside the reward")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["label"]),
        metrics=[
            pf.metrics.Accuracy(in_mask=["label"]),
            pf.metrics.F1Score(average="macro", in_mask=["label"]),
            pf.metrics.F1Score(
                average="binary", pos_label="negative", in_mask=["label"], name="f1_negative"
            ),
        ],
    )
    logs = await program.evaluate(X, Y, verbose=0)
    for key, value in logs.items():
        print(f"  {key:<13} {value}")
    # lm_calls is 0: the same requests were made in step 2, so every answer came from the
    # response cache. Re-scoring with a new reward or metric costs nothing.

    section("4. Metrics are stateful: update_state / result / reset_state")
    f1 = pf.metrics.F1Score(average="macro", in_mask=["label"])
    predictions = await program.predict(X, verbose=0)
    for y_true, y_pred in zip(Y, predictions, strict=True):
        f1.update_state(y_true, y_pred, reward=0.0)
    print("macro F1 over the predictions:", round(f1.result(), 3))
    print("state (what a backup saves)  :", f1.state_dict())
    f1.reset_state()
    print("after reset_state            :", f1.result())

    section("5. An LM as the judge")
    # For outputs with many right answers (summaries, explanations), let a model grade them.
    # The judge is just another LanguageModel: its calls are counted in the run's usage.
    judge = pf.rewards.LMAsJudge(language_model=language_model("judge"))
    print("judge, same label     :", await judge({"label": "positive"}, {"label": "positive"}))
    print("judge, different label:", await judge({"label": "positive"}, {"label": "negative"}))
    program.compile(reward=judge, metrics=[pf.metrics.Accuracy(in_mask=["label"])])
    logs = await program.evaluate(X, Y, verbose=0)
    print("evaluate with the judge:", logs)
    print("usage includes the judge:", program.usage_totals().calls, "calls in total")


if __name__ == "__main__":
    asyncio.run(main())
