"""Rewards and metrics: exact semantics and the names they are logged under."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError


def score(reward: pf.rewards.Reward, y_true: dict, y_pred: dict | None) -> float:
    return asyncio.run(reward(y_true, y_pred))


def test_exact_match_masks() -> None:
    assert score(pf.rewards.ExactMatch(), {"a": "1"}, {"a": "1", "thinking": "x"}) == 1.0
    assert score(pf.rewards.ExactMatch(), {"a": "1", "b": 2}, {"a": "1", "b": 3}) == 0.0
    assert (
        score(pf.rewards.ExactMatch(in_mask=["a"]), {"a": "1", "b": 2}, {"a": "1", "b": 3}) == 1.0
    )
    assert score(pf.rewards.ExactMatch(out_mask=["b"]), {"a": "1", "b": 2}, {"a": "1"}) == 1.0
    assert score(pf.rewards.ExactMatch(normalize=True), {"a": " Yes"}, {"a": "yes "}) == 1.0
    assert score(pf.rewards.ExactMatch(), {"a": "1"}, None) == 0.0


def test_function_rewards_sync_and_async() -> None:
    async def async_fn(y_true: dict, y_pred: dict) -> float:
        return 0.25

    assert score(pf.rewards.FunctionReward(lambda t, p: 0.5), {}, {}) == 0.5
    assert score(pf.rewards.FunctionReward(async_fn), {}, {}) == 0.25
    with pytest.raises(ConfigurationError):
        pf.rewards.FunctionReward("nope")  # type: ignore[arg-type]


def test_lm_as_judge(make_lm: Callable[..., pf.LanguageModel]) -> None:
    judge = pf.rewards.LMAsJudge(language_model=make_lm("judge"))
    assert score(judge, {"answer": "4"}, {"answer": "4"}) == 1.0
    assert score(judge, {"answer": "4"}, {"answer": "5"}) == 0.0
    assert judge.language_model.usage.calls == 2


def test_accuracy_and_f1() -> None:
    acc = pf.metrics.Accuracy(in_mask=["label"])
    macro = pf.metrics.F1Score(average="macro", in_mask=["label"])
    micro = pf.metrics.F1Score(average="micro", in_mask=["label"])
    binary = pf.metrics.F1Score(average="binary", in_mask=["label"], pos_label="pos", name="f1_pos")
    pairs = [("pos", "pos"), ("pos", "neg"), ("neg", "neg"), ("neg", None)]
    for truth, pred in pairs:
        y_pred = None if pred is None else {"label": pred}
        for m in (acc, macro, micro, binary):
            m.update_state({"label": truth}, y_pred, 0.0)
    assert acc.result() == 0.5
    # pos: tp=1 fp=0 fn=1 -> 2/3 ; neg: tp=1 fp=1 fn=1 -> 1/2
    assert macro.result() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert micro.result() == pytest.approx(0.5)
    assert binary.result() == pytest.approx(2 / 3)
    assert binary.name == "f1_pos"
    state = macro.state_dict()
    macro.reset_state()
    macro.load_state_dict(state)
    assert macro.result() == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_f1_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="average"):
        pf.metrics.F1Score(average="weighted")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pos_label"):
        pf.metrics.F1Score(average="binary")


def test_metric_names_must_be_unique(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith")
    program = pf.Sequential(
        [pf.Input(data_model=pf.DataModel), pf.FunctionModule(lambda x: x, data_model=pf.DataModel)]
    )
    del lm
    with pytest.raises(ConfigurationError, match="named 'accuracy'"):
        program.compile(
            reward=pf.rewards.ExactMatch(), metrics=[pf.metrics.Accuracy(), pf.metrics.Accuracy()]
        )
    with pytest.raises(ConfigurationError, match="lm_calls"):
        program.compile(
            reward=pf.rewards.ExactMatch(), metrics=[pf.metrics.Accuracy(name="lm_calls")]
        )
