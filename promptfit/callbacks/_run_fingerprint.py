"""What a backup must share with the fit that resumes it, beyond the data: the training setup.

Why: ``FitProgress``'s fingerprint covers the program structure, ``epochs``, ``batch_size`` and
the training and validation data. A resume with another optimizer (``RandomFewShot`` swapped
for ``InstructionOptimizer``), other optimizer settings, another explicit ``seed`` or other
language models used to go through silently: the backup's optimizer state and seed were
applied to a run configured differently, mixing two experiments in one history.
``BackupAndRestore`` adds these components to every backup's ``fingerprint`` and refuses a
resume that differs with :class:`~promptfit.errors.BackupMismatchError` naming each difference
and the two fixes (restore the setting, or delete the backup).

* **optimizer**: its class name, and its ``get_config()`` with every nested language model
  reduced to its model string (endpoints, keys and concurrency may change between a crash
  and its resume; credentials are scrubbed before anything is written).
* **language models**: the model strings of the program's and the reward's language models,
  in that order (the optimizer's are part of its settings, above).
* **seed**: a backup always records the seed it ran with; only a ``seed`` passed to ``fit``
  that differs is a mismatch (with ``seed=None`` the backup's seed is used, as before).

Backups written before these fields existed still resume, with a ``RuntimeWarning`` saying
what could not be compared.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfit.errors import BackupMismatchError
from promptfit.saving.secrets import scrub_credentials

if TYPE_CHECKING:
    from promptfit.programs.program import Program
    from promptfit.training.context import FitContext

__all__ = ["RUN_KEYS", "check_run_fingerprint", "run_fingerprint"]

OPTIMIZER = "optimizer"
OPTIMIZER_CONFIG = "optimizer config"
LANGUAGE_MODELS = "language models"
#: The fingerprint keys this module adds (a backup without them is from an older promptfit).
RUN_KEYS = (OPTIMIZER, OPTIMIZER_CONFIG, LANGUAGE_MODELS)


def _is_language_model_config(value: Mapping[str, Any]) -> bool:
    return isinstance(value.get("model"), str) and "api_base" in value


def _settings(value: Any) -> Any:
    """``value`` with each nested language-model config replaced by its model string."""
    if isinstance(value, Mapping):
        if _is_language_model_config(value):
            return value["model"]
        return {str(k): _settings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_settings(v) for v in value]
    return value


def _language_models(program: Program) -> list[Any]:
    """The program's and the reward's language models (each once, in that order); the
    optimizer's are part of its settings."""
    reward = getattr(program, "reward", None)
    sources = [*program.language_models, *(reward.language_models if reward is not None else [])]
    return list({id(lm): lm for lm in sources}.values())


def run_fingerprint(program: Program, optimizer: Any) -> dict[str, Any]:
    """The training-setup part of a backup's fingerprint, as plain JSON."""
    config: Any = {}
    if optimizer is not None:
        try:
            config = optimizer.get_config()
        except Exception as error:  # an optimizer that cannot describe itself still resumes
            config = {"unavailable": type(error).__name__}
    plain = json.loads(json.dumps(_settings(config), default=str, allow_nan=True))
    return {
        OPTIMIZER: None if optimizer is None else type(optimizer).__name__,
        OPTIMIZER_CONFIG: scrub_credentials(plain),
        LANGUAGE_MODELS: [str(lm.model) for lm in _language_models(program)],
    }


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _config_differences(theirs: Any, ours: Any) -> list[str]:
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return [f"(backup: {theirs!r:.120}, now: {ours!r:.120})"]
    return [
        f"{key} (backup: {theirs.get(key)!r:.80}, now: {ours.get(key)!r:.80})"
        for key in sorted(set(theirs) | set(ours))
        if not _same(theirs.get(key), ours.get(key))
    ]


def check_run_fingerprint(
    path: Path, saved: Mapping[str, Any], state: FitContext, program: Program
) -> None:
    """Refuse a backup whose optimizer, optimizer settings, seed or language models differ.

    Args:
        path: The backup file (named in the messages).
        saved: The backup's ``fit_state`` (already checked against its schema).
        state: The fit that would resume.
        program: The program being trained.

    Raises:
        BackupMismatchError: naming every component that differs, the backup, and the fixes.
    """
    theirs = saved.get("fingerprint") or {}
    ours = run_fingerprint(program, state.optimizer)
    differences: list[str] = []
    if (
        state.progress.requested_seed is not None
        and saved.get("seed") != state.progress.requested_seed
    ):
        differences.append(
            f"seed (backup: {saved.get('seed')!r}, now: {state.progress.requested_seed!r})"
        )
    missing = [key for key in RUN_KEYS if key not in theirs]
    if theirs.get(OPTIMIZER, ours[OPTIMIZER]) != ours[OPTIMIZER]:
        differences.append(f"optimizer (backup: {theirs[OPTIMIZER]}, now: {ours[OPTIMIZER]})")
    elif OPTIMIZER_CONFIG in theirs and not _same(theirs[OPTIMIZER_CONFIG], ours[OPTIMIZER_CONFIG]):
        changed = _config_differences(theirs[OPTIMIZER_CONFIG], ours[OPTIMIZER_CONFIG])
        differences.append(f"{ours[OPTIMIZER]} settings: {', '.join(changed)}")
    if LANGUAGE_MODELS in theirs and not _same(theirs[LANGUAGE_MODELS], ours[LANGUAGE_MODELS]):
        differences.append(
            f"language models (backup: {theirs[LANGUAGE_MODELS]!r}, now: {ours[LANGUAGE_MODELS]!r})"
        )
    if differences:
        raise BackupMismatchError(
            f"Cannot resume from the backup {path}: it was made by a run set up differently: "
            f"{'; '.join(differences)}. Restore the setting to resume that run, or delete "
            f"{path.parent} to start training from scratch."
        )
    if missing:
        warnings.warn(
            f"BackupAndRestore: the backup {path} was written by an older promptfit and does not "
            f"record the {', '.join(missing)} it ran with; resuming without checking them. "
            "Make sure they are the ones of the interrupted run.",
            RuntimeWarning,
            stacklevel=4,
        )
