"""Small labelled data sets shipped with promptfit (for the quickstart, guides and tests)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Literal

from promptfit.data.data_model import DataModel, Field

__all__ = ["Review", "Sentiment", "load_reviews"]


class Review(DataModel):
    review: str = Field(description="A short product or movie review")


class Sentiment(DataModel):
    label: Literal["positive", "negative"] = Field(
        description="Whether the review is positive or negative"
    )


def load_reviews() -> tuple[list[Review], list[Sentiment]]:
    """The 60 labelled reviews of ``reviews.jsonl`` as ``(x, y)``, balanced and shuffled."""
    text = files("promptfit.datasets").joinpath("reviews.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return (
        [Review(review=r["review"]) for r in rows],
        [Sentiment(label=r["label"]) for r in rows],
    )
