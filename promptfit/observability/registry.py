"""Trained prompts in MLflow's Prompt Registry, and programs that read them back.

A generator's trainable ``prompt`` variable (``{"instructions": ..., "examples": [...]}``) is
stored as a registry *chat* prompt that an application can use without promptfit::

    [{"role": "system", "content": <instructions>},
     {"role": "user", "content": <example inputs as JSON>},
     {"role": "assistant", "content": <example outputs as JSON>},  # one pair per example
     {"role": "user", "content": "{{inputs}}"}]

so ``mlflow.genai.load_prompt("prompts:/calc.answer@best").format(inputs=...)`` gives ready
messages. The same layout is parsed back exactly by :func:`load_prompts`, so a deployed program
picks up a newly trained prompt by alias without a code change.

What the registry returns is treated as untrusted input, as a program file is under
``safe_mode``: only the prompt's messages are read (never its ``model_config`` or
``response_format``, which could otherwise choose a model or an endpoint), templates are never
rendered, sizes are bounded, JSON is parsed with a depth limit, and the value is validated
against the generator's own schema before anything is assigned. Any problem is a
:class:`~promptfit.errors.SerializationError` naming the URI and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfit.errors import SerializationError, VariableValidationError

if TYPE_CHECKING:
    from promptfit.modules.module import Module
    from promptfit.variables.variable import Variable

__all__ = [
    "DEFAULT_BEST_ALIAS",
    "DEFAULT_PROMPT_ALIAS",
    "PromptJob",
    "default_prompt_name",
    "load_prompts",
    "prompt_registry_name",
    "prompt_template",
    "prompt_value_from_template",
    "register_prompt_version",
    "trainable_prompts",
]

logger = logging.getLogger("promptfit")

DEFAULT_PROMPT_ALIAS = "latest-trained"
DEFAULT_BEST_ALIAS = "best"
FORMAT_TAG = "promptfit.format"
FORMAT = "chat-v1"
INPUTS_PLACEHOLDER = "{{inputs}}"
# Bounds on what a registry may hand us (a prompt is text, not a data set).
_MAX_TEMPLATE_CHARS = 2_000_000
_MAX_MESSAGES = 2_001
_MAX_JSON_DEPTH = 64
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.\-]")
_ALIAS = re.compile(r"^[a-zA-Z0-9_\-]{1,255}$")


def prompt_registry_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in prompt names replaced by ``_``."""
    return _NAME_CHARS.sub("_", name)[:255] or "_"


def default_prompt_name(program_name: str, module_name: str) -> str:
    """``"<program>.<module>"``: the registry name the Monitor gives a generator's prompt."""
    return prompt_registry_name(f"{program_name}.{module_name}")


def check_alias(alias: str, argument: str) -> str:
    """An alias MLflow accepts, or a ConfigurationError naming ``argument``."""
    from promptfit.errors import ConfigurationError

    if not isinstance(alias, str) or not _ALIAS.match(alias) or alias.isdigit():
        raise ConfigurationError(
            f"Monitor: `{argument}` must be a registry alias (letters, digits, '-' and '_', "
            f"not only digits), got {alias!r}."
        )
    return alias


def _is_prompt_variable(variable: Variable) -> bool:
    fields = getattr(variable.schema, "model_fields", {})
    return variable.name == "prompt" and {"instructions", "examples"} <= set(fields)


def trainable_prompts(program: Module) -> dict[str, Variable]:
    """``{module_name: prompt variable}`` for every trainable generator-style prompt."""
    found: dict[str, Variable] = {}
    for variable in program.trainable_variables:
        if _is_prompt_variable(variable):
            module = variable.path.rsplit("/", 1)[0]
            found[module] = variable
    return found


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def prompt_template(value: Mapping[str, Any]) -> list[dict[str, str]]:
    """The registry chat template of a prompt variable's value (see module docstring)."""
    messages = [{"role": "system", "content": str(value.get("instructions", ""))}]
    for example in value.get("examples", []):
        messages.append({"role": "user", "content": _dumps(example["inputs"])})
        messages.append({"role": "assistant", "content": _dumps(example["outputs"])})
    messages.append({"role": "user", "content": INPUTS_PLACEHOLDER})
    return messages


def content_digest(value: Mapping[str, Any]) -> str:
    """A short digest of a prompt value: the same content in the same run is one version."""
    return hashlib.sha256(_dumps(value).encode("utf-8")).hexdigest()[:16]


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _example_json(text: Any, where: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ValueError(f"{where} is not text")
    if text.count("[") + text.count("{") > _MAX_JSON_DEPTH * 1000:
        raise ValueError(f"{where} is too deeply nested")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where} is not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object")
    if _depth(value, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise ValueError(f"{where} is nested deeper than {_MAX_JSON_DEPTH} levels")
    return value


def prompt_value_from_template(template: Any) -> dict[str, Any]:
    """Parse a registry template back into ``{"instructions", "examples"}`` (never rendered).

    A plain text template (a prompt written by hand in the registry) becomes the instructions
    with no examples; a chat template must have the layout :func:`prompt_template` writes.

    Raises:
        ValueError: the template has another shape (the caller names the URI).
    """
    if isinstance(template, str):
        if len(template) > _MAX_TEMPLATE_CHARS:
            raise ValueError(f"the template is longer than {_MAX_TEMPLATE_CHARS} characters")
        return {"instructions": template, "examples": []}
    if not isinstance(template, list) or not 2 <= len(template) <= _MAX_MESSAGES:
        raise ValueError("the template must be text or a list of 2 to 2001 chat messages")
    total = 0
    for index, message in enumerate(template):
        if (
            not isinstance(message, dict)
            or set(message) - {"role", "content"}
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(f"message {index} must be {{'role': ..., 'content': <text>}}")
        total += len(message["content"])
    if total > _MAX_TEMPLATE_CHARS:
        raise ValueError(f"the template is longer than {_MAX_TEMPLATE_CHARS} characters")
    roles = [message.get("role") for message in template]
    pairs = len(template) - 2
    expected = ["system"] + ["user", "assistant"] * (pairs // 2) + ["user"]
    if pairs % 2 or roles != expected:
        raise ValueError(
            "the messages must be: system, then user/assistant pairs (the few-shot examples), "
            f"then a final user message; got roles {roles[:8]}"
        )
    if template[-1]["content"] != INPUTS_PLACEHOLDER:
        raise ValueError(f"the last message must be {INPUTS_PLACEHOLDER!r}")
    examples = []
    for i in range(1, len(template) - 1, 2):
        examples.append(
            {
                "inputs": _example_json(template[i]["content"], f"message {i}"),
                "outputs": _example_json(template[i + 1]["content"], f"message {i + 1}"),
            }
        )
    return {"instructions": template[0]["content"], "examples": examples}


def _registry_client(tracking_uri: str | None) -> tuple[Any, str]:
    """A client of the registry store, refusing a SQLite file that does not exist.

    Why: MLflow would create an empty database there (a stray ``mlflow.db`` in a deployment's
    working directory, which took tens of seconds on a busy machine) only to answer "not
    found"; the usual cause is that no tracking URI was given at all.
    """
    from promptfit.observability.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        if path != ":memory:" and not Path(path).is_file():
            given = "" if tracking_uri is not None else " (no tracking_uri was given, nor set)"
            raise SerializationError(
                f"There is no prompt registry at {uri}{given}: the file does not exist. Name "
                "the store the prompts were registered in: set MLFLOW_TRACKING_URI (or call "
                "pf.enable_observability(uri)) before pf.load_program(..., prompts=...), or "
                "pass load_prompts(..., tracking_uri=uri)."
            )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def load_prompts(
    program: Module, prompts: Mapping[str, str], tracking_uri: str | None = None
) -> dict[str, str]:
    """Assign generators' prompts from the MLflow Prompt Registry.

    All prompts are fetched and validated against their generator's schema first; nothing is
    assigned unless every one is valid.

    Args:
        program: A program (or a single generator) whose generators to update.
        prompts: ``{module_name: "prompts:/<name>@<alias>"}`` (or ``prompts:/<name>/<version>``).
            For a single generator, its own name.
        tracking_uri: The registry's store; defaults as for ``Monitor`` (the enabled URI, else
            MLflow's configured one, else ``./mlflow.db``).

    Returns:
        ``{module_name: "prompts:/<name>/<version>"}``: the exact versions now in use.

    Raises:
        SerializationError: a URI is malformed, missing from the registry, or its content does
            not fit the generator (the message names the URI and the fix).
        VariableValidationError: a module name is not a trainable generator of ``program``.

    Example:
        ```python
        import promptfit as pf

        # program = pf.load_program("calc.json", prompts={"answer": "prompts:/calc.answer@best"})
        # or, on a program already in memory:
        # pf.observability.load_prompts(program, {"answer": "prompts:/calc.answer@best"})
        ```
    """
    from promptfit.errors import ConfigurationError

    if not isinstance(prompts, Mapping) or not prompts:
        raise ConfigurationError(
            "`prompts` must be a non-empty dict {module_name: 'prompts:/<name>@<alias>'}."
        )
    targets = trainable_prompts(program)
    own = {v.path.rsplit("/", 1)[0]: v for v in program.variables if _is_prompt_variable(v)}
    targets = {**own, **targets}
    for module, uri in prompts.items():
        if module not in targets:
            raise VariableValidationError(
                f"`prompts` names {module!r}, which is not a generator of "
                f"{getattr(program, 'name', 'the program')!r}; generators: {sorted(targets)}."
            )
        if not isinstance(uri, str) or not uri.startswith("prompts:/") or len(uri) > 600:
            raise ConfigurationError(
                f"`prompts[{module!r}]` must be a registry URI like 'prompts:/name@alias' or "
                f"'prompts:/name/3', got {uri!r}."
            )
    from promptfit.observability.tracking import http_defaults

    client, store = _registry_client(tracking_uri)
    values: dict[str, dict[str, Any]] = {}
    used: dict[str, str] = {}
    for module, uri in prompts.items():
        try:
            with http_defaults():  # a server that is down fails in seconds, not minutes
                version = client.load_prompt(uri)
        except Exception as exc:
            raise SerializationError(
                f"Could not load {uri!r} from the prompt registry at {store}: "
                f"{str(exc)[:300]}. Check the name and alias (or version), and that "
                "tracking_uri points at the store the prompt was registered in."
            ) from exc
        if version is None:
            raise SerializationError(f"{uri!r} is not in the prompt registry at {store}.")
        try:
            value = prompt_value_from_template(version.template)
            targets[module]._validate(value)
        except (ValueError, VariableValidationError) as exc:
            raise SerializationError(
                f"The registry prompt {uri!r} (version {version.version}) does not fit "
                f"generator {module!r}: {str(exc)[:500]}. Register a prompt trained for this "
                "generator (a promptfit Monitor does) or fix that version in the registry."
            ) from exc
        values[module] = value
        used[module] = f"prompts:/{version.name}/{version.version}"
    for module, value in values.items():
        targets[module].assign(value)
    logger.info("Prompts loaded from the registry: %s", used)
    return used


@dataclass
class PromptJob:
    """One registration the Monitor's worker owes the registry: a snapshot of the prompts."""

    values: dict[str, dict[str, Any]]
    epoch: int
    score: float | None
    monitor: str | None
    aliases: list[str] = field(default_factory=list)


def _find_version(client: Any, name: str, run_id: str, digest: str) -> Any:
    """An existing version of ``name`` from this run with this content (resume: no duplicate)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_prompt_versions(name, max_results=1000)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for version in getattr(versions, "prompt_versions", versions) or []:
        tags = version.tags or {}
        if tags.get("promptfit.run_id") == run_id and tags.get("promptfit.digest") == digest:
            return version
    return None


def register_prompt_version(
    client: Any,
    name: str,
    value: Mapping[str, Any],
    *,
    run_id: str,
    epoch: int,
    score: float | None,
    monitor: str | None,
    program_name: str,
    module_name: str,
) -> Any:
    """Register ``value`` as a new version of ``name`` unless this run already did.

    Returns the (new or existing) ``PromptVersion``. Tags: ``promptfit.run_id``,
    ``promptfit.epoch`` (1-based, as in the progress bar and the checkpoint manifest),
    ``promptfit.score`` and ``promptfit.monitor`` (the monitored log key), ``promptfit.digest``
    (the content digest that makes a resumed run reuse its versions), ``promptfit.format``.
    """
    digest = content_digest(value)
    existing = _find_version(client, name, run_id, digest)
    if existing is not None:
        return existing
    tags = {
        "promptfit.run_id": run_id,
        "promptfit.epoch": str(epoch + 1),
        "promptfit.digest": digest,
        "promptfit.program": program_name,
        "promptfit.module": module_name,
        FORMAT_TAG: FORMAT,
    }
    if score is not None:
        tags["promptfit.score"] = repr(float(score))
    if monitor:
        tags["promptfit.monitor"] = monitor
    return client.register_prompt(
        name,
        prompt_template(value),
        commit_message=f"promptfit: {program_name}/{module_name} trained in run {run_id}, "
        f"epoch {epoch + 1}",
        tags=tags,
    )


def link_prompts_to_run(client: Any, run_id: str, versions: list[Any]) -> None:
    """Record the versions on the run (the run page's "Registered prompts").

    MLflow's own ``link_prompt_version_to_run`` reads the run through the *global* tracking
    store, which is not the Monitor's store when a fit targets a non-default URI; setting the
    same tag on our own client is equivalent and store-independent.
    """
    from mlflow.tracing.constant import TraceTagKey
    from mlflow.tracing.utils.prompt import update_linked_prompts_tag

    run = client.get_run(run_id)
    current = run.data.tags.get(TraceTagKey.LINKED_PROMPTS)
    updated = update_linked_prompts_tag(current, versions)
    if updated != current:
        client.set_tag(run_id, TraceTagKey.LINKED_PROMPTS, updated)
