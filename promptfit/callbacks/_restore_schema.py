"""Schemas of a backup's contents, checked before anything is restored (or any LM call).

A backup is a file: it can be edited, truncated by a bad disk or written by another version.
``FitContext.load_state_dict`` and the callbacks' ``load_state_dict`` trust their input, so an
unchecked backup could silently run extra epochs (``epoch: -5``), skip training (``step`` or
``epoch`` of 10**6), stop at once (``stop_training: "no"`` is truthy), rewrite a CSV log with
the columns ``a,b,c`` (a header ``"abc"``), rename a metric, or raise a raw ``TypeError`` only
after a batch of LM calls was paid. Every value is checked here against a pydantic model (and
against the current fit: epochs, batches per epoch), and the first problem becomes a
:class:`~promptfit.errors.CheckpointError` that names the file and says to delete it.

Callbacks and optimizers promptfit does not know are checked only for being JSON objects; their
own ``load_state_dict`` runs inside the same guard (see ``BackupAndRestore``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from promptfit.callbacks._run_fingerprint import check_run_fingerprint
from promptfit.errors import BackupMismatchError, CheckpointError
from promptfit.saving.paths import is_safe_relative

if TYPE_CHECKING:
    from promptfit.programs.program import Program
    from promptfit.training.context import FitContext

__all__ = ["validate_backup"]

# Far beyond any real run, far below what would make arithmetic on it misbehave.
_BIG = 10**12


def _finite(value: float) -> float:
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _relative(value: str) -> str:
    if not is_safe_relative(value):
        raise ValueError("must be a relative path inside the checkpoint directory")
    return value


Count = Annotated[StrictInt, Field(ge=0, le=_BIG)]
Number = Annotated[float, Field(strict=False), AfterValidator(_finite)]
NonNegative = Annotated[float, Field(ge=0), AfterValidator(_finite)]
RelPath = Annotated[StrictStr, AfterValidator(_relative)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    """For states that may grow fields in later versions: known fields checked, others kept."""

    model_config = ConfigDict(extra="allow", strict=True)


class UsageState(_Model):
    calls: Count = 0
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cost: NonNegative = 0.0
    cache_hits: Count = 0
    failed_calls: Count = 0
    retries: Count = 0


class FitStateSchema(_Model):
    # The fit's identity across a crash: it keys the call origins of cached replies.
    run_id: (
        Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")] | None
    ) = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**63)]
    epochs: Annotated[StrictInt, Field(ge=1, le=_BIG)] | None = None
    epoch: Count
    step: Count
    fingerprint: dict[StrictStr, Any]
    reward_total: Number
    reward_count: Count
    metrics: dict[StrictStr, dict[StrictStr, Any]] = {}
    epoch_usage_start: UsageState
    usage: dict[StrictStr, UsageState] = {}
    variables: dict[StrictStr, Any]
    optimizer: dict[StrictStr, Any] | None = None
    callbacks: dict[StrictStr, dict[StrictStr, Any]] = {}
    stop_training: StrictBool = False


class CSVLoggerState(_Model):
    rows_written: Count
    header: list[StrictStr] | None


class HistoryState(_Model):
    history: dict[StrictStr, list[Any]]
    epoch: list[Count]


class EarlyStoppingState(_Open):
    wait: Count
    best: Number | None = None
    best_epoch: Annotated[StrictInt, Field(ge=-1, le=_BIG)]
    stopped_epoch: Count
    best_variables: dict[StrictStr, Any] | None = None


class ToleranceState(_Model):
    epochs_since_improvement: Count
    exhausted: StrictBool
    path: RelPath | None = None


class ProgramCheckpointState(_Open):
    best: Number | None = None
    best_path: RelPath | None = None
    tolerances: dict[StrictStr, ToleranceState] = {}
    batches_seen: Count = 0
    last_batch: Count | None = None
    current_epoch: Count = 0
    saved: list[RelPath] = []
    on_best: list[dict[StrictStr, Any]] = []


class BudgetConsumed(_Model):
    cost: NonNegative = 0.0
    tokens: Count = 0
    calls: Count = 0


class BudgetStoppingState(_Open):
    consumed: BudgetConsumed
    stopped_reason: StrictStr | None = None
    stopped_epoch: Count | None = None


class PredictionLoggerState(_Open):
    epochs_logged: list[Count] = []
    lines: Count | None = None


class MonitorState(_Open):
    run_id: Annotated[StrictStr, Field(max_length=256)] | None = None


class OptimizerState(_Open):
    rng: list[Any] | None = None


class PopulationMember(_Model):
    key: StrictStr
    variables: dict[StrictStr, Any]
    score: Number
    evals: Annotated[StrictInt, Field(ge=1, le=_BIG)]


class ValidatedCandidate(_Open):
    variables: dict[StrictStr, Any]
    val_reward: Number


class RaceState(_Open):
    variables: dict[StrictStr, Any]


class PopulationState(OptimizerState):
    population: list[PopulationMember] = []
    # Candidates an epoch end installs as the program's variables: checked like the population.
    races: list[RaceState] = []
    validated: dict[StrictStr, ValidatedCandidate] = {}
    epoch_incumbents: dict[StrictStr, dict[StrictStr, Any]] = {}
    moves: Count = 0
    # The budget's bookkeeping: a resumed search divides and compares these at once.
    calls_start: Count = 0
    calls_measured: Count = 0
    examples_measured: Count = 0


class Demonstration(_Model):
    inputs: dict[StrictStr, Any]
    outputs: dict[StrictStr, Any]


class RandomFewShotState(PopulationState):
    pool: dict[StrictStr, list[Demonstration]] = {}


_OPTIMIZER_SCHEMAS: dict[str, type[BaseModel]] = {
    "Optimizer": OptimizerState,
    "PopulationOptimizer": PopulationState,
    "RandomFewShot": RandomFewShotState,
}

_CALLBACK_SCHEMAS: dict[str, type[BaseModel]] = {
    "CSVLogger": CSVLoggerState,
    "History": HistoryState,
    "EarlyStopping": EarlyStoppingState,
    "ProgramCheckpoint": ProgramCheckpointState,
    "BudgetStopping": BudgetStoppingState,
    "PredictionLogger": PredictionLoggerState,
    "Monitor": MonitorState,
}


def _schema_for(obj: Any, schemas: dict[str, type[BaseModel]]) -> type[BaseModel] | None:
    """The schema of a promptfit callback or optimizer (subclasses included), else ``None``."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("promptfit.") and cls.__name__ in schemas:
            return schemas[cls.__name__]
    return None


def _check_variables(path: Path, program: Program, where: str, variables: Any) -> None:
    """Dry-run ``set_variables`` (then put the current values back): a candidate the optimizer
    would apply mid-epoch must not fail there, after LM calls were paid."""
    current = program.get_variables()
    try:
        program.set_variables(variables)
    except Exception as error:
        raise _invalid(path, f"{where}: {str(error)[:200]}") from None
    finally:
        program.set_variables(current)


def _check_optimizer(path: Path, state: Any, optimizer: Any, program: Program) -> None:
    schema = _schema_for(optimizer, _OPTIMIZER_SCHEMAS) if optimizer is not None else None
    if schema is None or state is None:
        return
    checked = _check(path, "optimizer.", schema, state)
    for index, member in enumerate(getattr(checked, "population", [])):
        _check_variables(path, program, f"optimizer.population.{index}", member.variables)
    for index, race in enumerate(getattr(checked, "races", [])):
        _check_variables(path, program, f"optimizer.races.{index}", race.variables)
    for key, entry in getattr(checked, "validated", {}).items():
        _check_variables(path, program, f"optimizer.validated[{key[:40]!r}]", entry.variables)
    for key, variables in getattr(checked, "epoch_incumbents", {}).items():
        _check_variables(path, program, f"optimizer.epoch_incumbents[{key[:40]!r}]", variables)
    pool = getattr(checked, "pool", {})
    if pool:
        variables = program.get_variables()
        for module, demos in pool.items():
            target = next((p for p, v in variables.items() if p.split("/", 1)[0] == module), None)
            if target is None or not isinstance(variables[target], dict):
                raise _invalid(path, f"optimizer.pool names {module!r}, not a generator")
            if "examples" not in variables[target]:
                continue
            for index, demo in enumerate(demos):
                candidate = {**variables[target], "examples": [demo.model_dump()]}
                _check_variables(
                    path, program, f"optimizer.pool.{module}.{index}", {target: candidate}
                )


def _first_error(error: ValidationError) -> str:
    item = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in item["loc"]) or "the state"
    value = repr(item.get("input"))
    if len(value) > 80:
        value = value[:77] + "..."
    return f"{where} = {value}: {item['msg']}"


def _check(path: Path, where: str, model: type[BaseModel], value: Any) -> BaseModel:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise _invalid(path, f"{where}{_first_error(error)}") from None


def _invalid(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"The backup {path} is invalid ({problem}), so training cannot resume from it. Delete "
        f"{path} to start training from scratch."
    )


def _check_callback_contents(path: Path, where: str, checked: BaseModel, program: Program) -> None:
    """What a schema alone cannot say: variables EarlyStopping would install at the end of the
    fit (after every LM call), and a History whose columns line up with its epochs and hold
    numbers where promptfit logs numbers (a returned ``History`` must not carry a backup's
    ``"x"`` as an epoch's reward)."""
    best = getattr(checked, "best_variables", None)
    if best is not None:
        _check_variables(path, program, f"{where}best_variables", best)
    if isinstance(checked, HistoryState):
        numeric = set(program.metrics_names)
        numeric |= {f"val_{name}" for name in numeric}
        for name, column in checked.history.items():
            if len(column) != len(checked.epoch):
                raise _invalid(
                    path,
                    f"{where}history[{name[:40]!r}] has {len(column)} values for "
                    f"{len(checked.epoch)} epochs",
                )
            if name in numeric and not all(_is_number_or_none(v) for v in column):
                raise _invalid(path, f"{where}history[{name!r}] holds a value that is no number")


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def validate_backup(path: Path, saved: Any, state: FitContext, program: Program) -> None:
    """Check a backup's ``fit_state`` against the schemas and against the current fit.

    Raises:
        CheckpointError: the first problem found, naming ``path`` and the fix (delete it).
    """
    fit = _check(path, "fit_state.", FitStateSchema, saved)
    assert isinstance(fit, FitStateSchema)
    try:  # a backup of another run is reported as such, before any detail of its contents
        state.check_compatible(saved)
    except BackupMismatchError as error:
        raise BackupMismatchError(f"Cannot resume from the backup {path}: {error}") from None
    # The training setup too (optimizer, its settings, seed, language models): before the
    # optimizer state below is checked against the schema of an optimizer it may not belong to.
    check_run_fingerprint(path, saved, state, program)
    if fit.epoch > state.epochs:
        raise _invalid(path, f"epoch {fit.epoch} is beyond the fit's {state.epochs} epochs")
    if fit.step > state.steps_per_epoch:
        raise _invalid(
            path, f"step {fit.step} is beyond the {state.steps_per_epoch} batches of an epoch"
        )
    if fit.epoch == state.epochs and fit.step:
        raise _invalid(path, f"step {fit.step} is set although all epochs are done")
    if state.xs and fit.reward_count > len(state.xs):
        raise _invalid(path, f"reward_count {fit.reward_count} exceeds the examples seen")
    _check_optimizer(path, fit.optimizer, state.optimizer, program)
    callbacks = state.callbacks or []
    for index, callback in enumerate(callbacks):
        key = state.callback_key(index, callback)
        if key not in fit.callbacks:
            continue
        schema = _schema_for(callback, _CALLBACK_SCHEMAS)
        if schema is not None:
            checked = _check(path, f"callbacks[{key!r}].", schema, fit.callbacks[key])
            _check_callback_contents(path, f"callbacks[{key!r}].", checked, program)
