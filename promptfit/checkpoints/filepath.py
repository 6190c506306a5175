"""The rules of a ``ProgramCheckpoint`` ``filepath`` template: check, fill, keep inside.

Why its own module: a template is filled from the logs at the end of a paid-for epoch, so
everything that can be checked is checked at construction (fields, format specs, ``..``), and
what can only be checked at save time (a missing key, a log value that formats to a path
outside the checkpoint directory) fails with a typed error naming the template and the fix.
Templates are only ever filled with :meth:`str.format` and plain field names: no attribute or
index access, no conversions, so a template never reads anything but the logged values.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptfit.errors import CheckpointError, ConfigurationError, MonitorKeyError
from promptfit.saving.paths import PathEscapeError, contained_path

__all__ = [
    "checked_template",
    "fill_template",
    "relative_to",
    "template_directory",
    "template_fields",
]


def checked_template(filepath: Any) -> str:
    """``filepath`` as a string, refused unless it is a non-empty path that stays inside its
    directory (no ``..`` after the fixed part, where a field's value could lead upwards)."""
    if not isinstance(filepath, str | os.PathLike) or not os.fspath(filepath):
        raise ConfigurationError(
            f"ProgramCheckpoint: `filepath` must be a non-empty path, got {filepath!r}."
        )
    text = str(os.fspath(filepath))
    directory = template_directory(text)
    tail = Path(text).parts[len(directory.parts) if str(directory) != "." else 0 :]
    if ".." in tail:
        raise ConfigurationError(
            f"ProgramCheckpoint: `filepath` {text!r} climbs out of its directory "
            f"{str(directory)!r} with '..' after a field; every checkpoint must stay under the "
            "directory that holds checkpoints.json. Remove the '..' or move it before the "
            "first field."
        )
    return text


def template_fields(filepath: str) -> list[str]:
    """The replacement fields of ``filepath``; only plain names are allowed.

    Attribute or index access (``{a.b}``, ``{a[0]}``), conversions (``{a!r}``), positional
    fields (``{}``, ``{0}``) and nested specs (``{a:{w}}``) are refused: the template is
    filled from the logs dict only, and anything richer would either fail at the end of the
    first (paid-for) epoch or read attributes of log values.

    Raises:
        ConfigurationError: the first bad field, with what to write instead.
    """
    try:
        parsed = list(string.Formatter().parse(filepath))
    except ValueError as exc:
        raise ConfigurationError(
            f"ProgramCheckpoint: `filepath` {filepath!r} is not a valid format string ({exc}). "
            "Write literal braces as '{{' and '}}'."
        ) from exc
    fields: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        problem = None
        if name == "" or name.isdigit():
            problem = "positional fields are not allowed; name a log key, e.g. {epoch:02d}"
        elif "." in name or "[" in name:
            problem = "attribute and index access are not allowed; use a plain log key"
        elif conversion:
            problem = f"conversions like !{conversion} are not allowed; use a format spec"
        elif spec and ("{" in spec or "}" in spec):
            problem = "nested fields in format specs are not allowed"
        if problem:
            raise ConfigurationError(
                f"ProgramCheckpoint: bad field {{{name}}} in `filepath` {filepath!r}: {problem}."
            )
        if name in ("epoch", "batch") and spec:
            try:
                format(1, spec)
            except ValueError as exc:
                raise ConfigurationError(
                    f"ProgramCheckpoint: format spec {spec!r} of {{{name}}} in `filepath` "
                    f"{filepath!r} does not apply to an integer ({exc})."
                ) from None
        fields.append(name)
    return fields


def template_directory(filepath: str) -> Path:
    """The deepest directory of ``filepath`` that does not depend on a field.

    This is where ``checkpoints.json`` lives, and every checkpoint must stay under it.
    """
    fixed: list[str] = []
    for part in Path(filepath).parts[:-1]:
        if "{" in part or "}" in part:
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def fill_template(
    filepath: str,
    fields: list[str],
    epoch: int,
    batch: int | None,
    logs: Mapping[str, Any],
) -> str:
    """``filepath`` filled from ``logs``, with 1-based ``{epoch}`` and ``{batch}``.

    Raises:
        MonitorKeyError: a field names a key the logs lack (the available keys are listed).
        ConfigurationError: a value does not fit its format spec.
    """
    values: dict[str, Any] = dict(logs)
    values["epoch"] = epoch + 1
    if batch is not None:
        values["batch"] = batch + 1
    missing = [name for name in fields if name not in values]
    if missing:
        raise MonitorKeyError(
            f"ProgramCheckpoint cannot fill {{{missing[0]}}} in filepath {filepath!r}: "
            f"the logs have no key {missing[0]!r}. Available keys: {sorted(values)}. Use one "
            "of them ('val_' keys need validation data in fit(); per-batch saves only see "
            "training keys)."
        )
    try:
        return filepath.format(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"ProgramCheckpoint cannot format filepath {filepath!r} with the logs: "
            f"{exc}. Check the format specs, e.g. {{val_reward:.3f}} for a float."
        ) from exc


def relative_to(directory: Path, path: str) -> str:
    """``path`` relative to ``directory`` (POSIX slashes), refused when it lies outside.

    Real paths are compared (a symlinked sub-directory counts where it leads), because
    ``keep_top_k`` later deletes through these paths.

    Raises:
        CheckpointError: ``path`` is outside ``directory`` (a log value with ``/`` or ``..``,
            or a symlink), naming both and the fix.
    """
    rel = Path(os.path.relpath(path, directory)).as_posix()
    problem = None
    try:
        # Refuses '..' (a log value with a separator) and real paths outside (a symlink).
        contained_path(directory, rel, follow_last=False)
    except PathEscapeError as error:
        problem = str(error)
    if problem:
        raise CheckpointError(
            f"ProgramCheckpoint: the checkpoint path {path!r} lies outside its directory "
            f"{str(directory)!r} ({problem}). A log value used in the template must not contain "
            "path separators or '..', and a sub-directory must not be a symlink that leads "
            "elsewhere; change the template or the value so every checkpoint stays inside."
        )
    return rel
