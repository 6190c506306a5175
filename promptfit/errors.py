"""Typed errors raised by promptfit.

Every error names the problem and, where one exists, the fix. They all derive from
:class:`PromptfitError` so callers can catch the library's errors in one place, and from the
matching builtin (``ValueError``, ``TypeError``...) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "BackupLockedError",
    "BackupMismatchError",
    "CheckpointError",
    "ConfigurationError",
    "DataError",
    "LMCallsFailingError",
    "LMConfigurationError",
    "MonitorKeyError",
    "PromptfitError",
    "RewardError",
    "SerializationError",
    "UnsafeFileError",
    "VariableValidationError",
]


class PromptfitError(Exception):
    """Base class of every error promptfit raises on purpose."""


class ConfigurationError(PromptfitError, ValueError):
    """An argument or combination of arguments is invalid."""


class DataError(PromptfitError, ValueError):
    """Training or evaluation data does not fit the program's data models."""


class VariableValidationError(PromptfitError, ValueError):
    """A value assigned to a trainable variable does not match the variable's schema."""


class SerializationError(PromptfitError, ValueError):
    """A saved file cannot be read safely (bad format, unknown class, wrong version)."""


class UnsafeFileError(SerializationError):
    """A saved file asks for something that could leak credentials or touch the file system
    outside the working directory (a remote endpoint, extra litellm arguments, a cache path),
    and the loader runs in ``safe_mode``."""


class LMConfigurationError(PromptfitError, RuntimeError):
    """The language model rejected the request for a reason retrying cannot fix.

    Authentication failures, unknown models and permission errors end the run at once
    instead of turning every example into a recorded failure.
    """


class LMCallsFailingError(LMConfigurationError):
    """Every LM call at the start of a ``fit``/``evaluate`` failed the same way.

    Raised before the rest of the data is spent (``fail_fast=True``, the default), quoting the
    server's own message and what to try; with ``fail_fast=False`` it is a warning instead.
    """


class MonitorKeyError(PromptfitError, KeyError):
    """A callback monitors a log key that the run does not produce (``strict=True``)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class CheckpointError(PromptfitError, RuntimeError):
    """A checkpoint or backup is missing, corrupt or cannot be written."""


class BackupMismatchError(CheckpointError):
    """A backup was made by a different program, data set or fit configuration."""


class BackupLockedError(CheckpointError):
    """Another fit (in this or another process) is using the same backup directory."""


class RewardError(PromptfitError, ValueError):
    """A reward raised, or returned something that is not a number in [0, 1]."""
