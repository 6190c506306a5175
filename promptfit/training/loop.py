"""The loops of ``fit`` and ``evaluate``: batches, hooks, the optimizer's calls, the logs.

:class:`~promptfit.training.trainer.Trainer` checks the arguments, reads the data and builds the
run's :class:`~promptfit.training.context.FitContext`; the functions here run it. Everything a
loop changes that a resume needs is in ``context.progress``; everything callbacks read is on
the context, so the hook order below is the whole contract between the loop and callbacks.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from promptfit.language_models.cache import call_origin
from promptfit.training.outcome import RewardAccumulator

if TYPE_CHECKING:
    from promptfit.callbacks.callback_list import CallbackList
    from promptfit.language_models.usage import Usage
    from promptfit.programs.program import Program
    from promptfit.training.context import FitContext, RunContext

__all__ = ["USAGE_KEYS", "evaluate_loop", "fit_loop", "run_logs", "split_batches", "usage_logs"]

USAGE_KEYS = ("lm_calls", "tokens", "cost", "failed_calls", "retries")


def split_batches(n: int, batch_size: int) -> list[range]:
    """Index ranges of consecutive batches of ``batch_size`` over ``n`` examples."""
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def usage_logs(before: Usage, after: Usage) -> dict[str, float]:
    """The usage keys of logs: what was used between ``before`` and ``after``."""
    return {
        "lm_calls": after.calls - before.calls,
        "tokens": after.tokens - before.tokens,
        "cost": round(after.cost - before.cost, 10),
        "failed_calls": after.failed_calls - before.failed_calls,
        "retries": after.retries - before.retries,
    }


def run_logs(program: Program, rewards: RewardAccumulator, usage_start: Usage) -> dict[str, float]:
    """Reward, metrics and usage since ``usage_start``: the logs of every fit/evaluate hook."""
    logs = rewards.results()
    logs.update(usage_logs(usage_start, program.usage_totals()))
    return logs


async def evaluate_loop(
    program: Program,
    xs: list[Any],
    ys: list[Any],
    batches: list[range],
    cbs: CallbackList,
    context: RunContext | None = None,
) -> dict[str, float]:
    """The batches of an evaluation (``context``: a standalone one's, to keep up to date;
    ``None`` for fit's validation, which must not move the fit's step or last batch)."""
    before = program.usage_totals()
    rewards = RewardAccumulator(program.metrics)
    rewards.reset()
    await cbs.call("on_test_begin", {})
    logs: dict[str, float] = {}
    for step, indices in enumerate(batches):
        await cbs.call("on_test_batch_begin", step, {})
        outcome = await program.run_batch([xs[i] for i in indices], [ys[i] for i in indices])
        rewards.add(outcome)
        if context is not None:
            context.step, context.last_batch = step + 1, outcome
        logs = run_logs(program, rewards, before)
        await cbs.call("on_test_batch_end", step, logs)
    logs = run_logs(program, rewards, before)
    await cbs.call("on_test_end", logs)
    return logs


async def fit_loop(
    context: FitContext, shuffle: bool, batch_size: int, val_batches: list[range]
) -> None:
    """The hooks of a fit, from ``on_train_begin`` to ``on_train_end`` (always called)."""
    program, cbs, state = context.program, context.callbacks, context.progress
    epoch_logs: dict[str, Any] = {}
    origin_token = call_origin.set(None)
    try:
        await cbs.on_train_begin({})
        epoch = state.epoch  # after on_train_begin: a restored backup moved it
        while epoch < state.epochs and not program.stop_training:
            epoch_logs = await _fit_epoch(context, epoch, shuffle, batch_size, val_batches)
            await cbs.on_epoch_end(epoch, epoch_logs)
            epoch += 1
    except BaseException as error:
        try:
            await cbs.on_train_error(error)
        finally:
            call_origin.reset(origin_token)
            await cbs.on_train_end(epoch_logs)
        raise
    call_origin.reset(origin_token)
    await cbs.on_train_end(epoch_logs)


async def _fit_epoch(
    context: FitContext, epoch: int, shuffle: bool, batch_size: int, val_batches: list[range]
) -> dict[str, Any]:
    """One epoch of ``fit`` up to (not including) ``on_epoch_end``: its batches from the
    restored step on, the optimizer's epoch end and validation; returns the epoch's logs."""
    program, state, cbs = context.program, context.progress, context.callbacks
    optimizer = context.optimizer
    assert optimizer is not None
    xs, ys = context.xs, context.ys
    state.epoch = context.epoch = epoch
    order = list(range(len(xs)))
    if shuffle:
        # state.seed, not fit's seed argument: a restored backup brings its own seed.
        random.Random(f"{state.seed}:{epoch}").shuffle(order)
    batches = split_batches(len(order), batch_size)
    context.step = state.step
    if state.step == 0:  # not resuming mid-epoch
        state.begin_epoch(program.metrics, program.usage_totals())
        await cbs.on_epoch_begin(epoch, {})
    for step in range(state.step, len(batches)):
        indices = [order[i] for i in batches[step]]
        call_origin.set(state.origin(epoch, step))
        await cbs.call("on_train_batch_begin", step, {})
        outcome = await program.run_batch(
            [xs[i] for i in indices], [ys[i] for i in indices], trace=True
        )
        state.rewards.add(outcome)
        context.last_batch = outcome
        await optimizer.on_batch_end(outcome)
        state.step = context.step = step + 1
        batch_logs = run_logs(program, state.rewards, state.epoch_usage_start)
        await cbs.call("on_train_batch_end", step, batch_logs)
        if program.stop_training:
            break
    call_origin.set(state.origin(epoch, "end"))
    await optimizer.on_epoch_end(epoch)
    epoch_logs = run_logs(program, state.rewards, state.epoch_usage_start)
    if context.val_xs:
        call_origin.set(state.origin(epoch, "val"))
        # The fit's callbacks see validation as Keras shows it: on_test_* hooks.
        val_logs = await evaluate_loop(program, context.val_xs, context.val_ys, val_batches, cbs)
        await optimizer.on_validation_end(val_logs)  # selection on validation
        epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        for key in USAGE_KEYS:
            epoch_logs[key] += val_logs[key]
    # The resume position moves on before on_epoch_end, so an epoch-end backup resumes at
    # the next epoch; context.epoch stays this epoch for the callbacks.
    state.step = 0
    state.epoch = epoch + 1
    return epoch_logs
