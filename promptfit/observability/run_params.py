"""What a fit's MLflow run records as params and tags: its configuration, flattened.

MLflow params are flat ``key -> string`` pairs with bounded keys and values, while a fit's
configuration is nested JSON (the compile config, every callback's and language model's
``get_config()``). This module turns one into the other, the same way for every run, so runs
compare column by column in the MLflow UI. It is pure data work (no MLflow calls, no threads):
the :class:`~promptfit.callbacks.Monitor` builds the payload on the event loop and the
uploader (:mod:`promptfit.observability.uploader`) only sends it.

Credentials never reach a param or tag: the payload goes through
:func:`~promptfit.observability.mlflow_backend.scrub_secrets`, which applies promptfit's one
scrubber (:mod:`promptfit.saving.secrets`) and *masks* a credential-named value as ``***``
rather than dropping it, so the run page shows that one was set.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from promptfit.observability.mlflow_backend import scrub_secrets

__all__ = [
    "MAX_PARAM_VALUE",
    "describe_fit",
    "flatten",
    "mlflow_key",
    "model_params",
    "number",
    "params_and_tags",
]

# MLflow's limits (mlflow.utils.validation): keys up to 250 characters, param values up to
# 6000, tag values up to 8000.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


def mlflow_key(name: str) -> str:
    """A valid MLflow param/metric key (letters, digits, ``_ - . / space``; no path tricks)."""
    key = _BAD_KEY_CHARS.sub("_", str(name)).strip("/ ")
    key = re.sub(r"/{2,}", "/", key)
    parts = ["_" if part in (".", "..") else part for part in key.split("/")]
    return "/".join(parts)[:MAX_KEY] or "_"


def flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    """Write ``value`` into ``out`` as dotted keys; lists stay whole, as JSON text.

    Why lists are not expanded: ``metrics=[...]`` as one param reads better than
    ``metrics.0.class_name``, and keeps the param count (MLflow caps a batch at 100) small.
    """
    if isinstance(value, dict) and value:
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple | dict):
        out[prefix] = json.dumps(value, default=str, ensure_ascii=False)
    else:
        out[prefix] = "None" if value is None else str(value)


def number(value: Any) -> float | None:
    """``value`` as a metric value, or ``None`` when it is not a number (or is NaN)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        result = float(value)
        return result if not math.isnan(result) else None
    return None


def describe_fit(
    *,
    program: Any,
    callbacks: Iterable[Any],
    language_models: Iterable[Any],
    fit_params: Mapping[str, Any],
    secrets: Sequence[str],
) -> dict[str, Any]:
    """The fit's configuration as one JSON document (also uploaded as ``fit_config.json``).

    A callback or language model whose ``get_config`` fails is described by its name only:
    describing a run must never stop it.
    """
    callback_configs = []
    for callback in callbacks:
        try:
            config = callback.get_config()
        except Exception:
            config = {}
        callback_configs.append({"class_name": type(callback).__name__, "config": config})
    lm_configs = []
    for lm in language_models:
        try:
            lm_configs.append(lm.get_config())
        except Exception:
            lm_configs.append({"name": getattr(lm, "name", repr(lm))})
    payload = {
        "program": {"name": program.name, "class_name": type(program).__name__},
        "fit": dict(fit_params),
        "compile": program.get_compile_config(),
        "callbacks": callback_configs,
        "language_models": lm_configs,
    }
    scrubbed: dict[str, Any] = scrub_secrets(payload, secrets)
    return scrubbed


def params_and_tags(
    payload: Mapping[str, Any], user_tags: Mapping[str, Any], secrets: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """``(params, tags)`` of a run described by :func:`describe_fit`, within MLflow's limits.

    Two callbacks of one class are ``callback.<Class>`` and ``callback.<Class>_2``; each
    language model is ``lm.<name>``.
    """
    params: dict[str, str] = {}
    flatten("", payload["fit"], params)
    flatten("program", payload["program"], params)
    flatten("compile", payload["compile"], params)
    params["callbacks"] = ",".join(c["class_name"] for c in payload["callbacks"])
    seen: dict[str, int] = {}
    for entry in payload["callbacks"]:
        name = entry["class_name"]
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}_{seen[name]}"
        flatten(f"callback.{label}", entry["config"] or {}, params)
    for config in payload["language_models"]:
        flatten(f"lm.{config.get('name', 'lm')}", config, params)
    tags = {
        "promptfit.program": payload["program"]["name"],
        "promptfit.version": _promptfit_version(),
        **{str(k): str(v) for k, v in user_tags.items()},
    }
    tags = scrub_secrets(tags, secrets)
    return (
        {mlflow_key(k): v[:MAX_PARAM_VALUE] for k, v in params.items()},
        {mlflow_key(k): str(v)[:MAX_TAG_VALUE] for k, v in tags.items()},
    )


def model_params(params: Mapping[str, str]) -> dict[str, str]:
    """The params worth repeating on the logged model: the fit's own and program/compile."""
    return {
        k: v for k, v in params.items() if "." not in k or k.startswith(("program.", "compile."))
    }


def _promptfit_version() -> str:
    try:
        from promptfit._version import __version__

        return __version__
    except Exception:
        return "unknown"
