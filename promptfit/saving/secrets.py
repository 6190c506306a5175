"""The one credential scrubber used by every promptfit writer.

A key given to ``LanguageModel(api_key=...)`` is never part of a configuration, but litellm
accepts credentials through many other doors: ``extra_headers={"Authorization": "Bearer ..."}``,
``aws_secret_access_key``, ``vertex_credentials``, ``azure_ad_token``, an ``api_key`` nested in
some provider dict, a token in a URL (``https://user:pass@host``, ``?api_key=...``). Any of them
would otherwise be copied verbatim into program files, checkpoints, backups, CSV rows or log
messages. :func:`scrub_credentials` is the single place that knows what a credential looks like,
so every writer (``save_program``, ``ProgramCheckpoint``, ``BackupAndRestore``, ``CSVLogger``,
the ``promptfit`` logger) removes the same things.

Dict entries under a credential-like name are *dropped* (not masked): a masked header would be
sent as ``Authorization: ***`` by a program loaded from the file, while a missing one makes the
provider answer with a clear authentication error. Inside strings, known secrets, key-shaped
values and URL credentials are replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = [
    "REDACTED",
    "CredentialLogFilter",
    "is_credential_name",
    "register_secret",
    "scrub_credentials",
    "scrub_text",
]

REDACTED = "***"

# Names whose values are credentials. Usage counts (``tokens``, ``max_tokens``,
# ``prompt_tokens``) are not: only a name that *ends* in "token" (``access_token``,
# ``azure_ad_token``, ``aws_session_token``, ``token``) counts.
_CREDENTIAL_NAME = re.compile(
    r"(api[_-]?key|secret|passw(or)?d|passwd|authori[sz]ation|credential|bearer|"
    r"private[_-]?key|access[_-]?key|aws_access_key_id|cookie|"
    r"(^|[_\-])token$|^x[_-]?api[_-]?key$|^ocp-apim-subscription-key$|[_-]sig(nature)?$)",
    re.IGNORECASE,
)
# Shapes of common provider keys, for values under an innocent name.
_KEY_SHAPE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|sk_(live|test)_[A-Za-z0-9]{8,}|Bearer\s+[A-Za-z0-9._~+/\-]{8,}=*"
    r"|Basic\s+[A-Za-z0-9+/]{8,}=*|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abpr]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{20,}|hf_[A-Za-z0-9]{20,}"
    r"|ya29\.[0-9A-Za-z_\-]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----[^-]*)"
)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")
_URL_TOKEN_PARAM = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|sig|signature|password|secret|"
    r"code|x-amz-security-token|x-amz-signature)=)[^&#\s\"']+"
)

# Exact secrets known in this process (the api_key of every LanguageModel built so far is
# registered by the writers that see it), held as plain strings.
_known: set[str] = set()
_seen_lms: weakref.WeakSet[Any] = weakref.WeakSet()


def is_credential_name(name: Any) -> bool:
    """Whether a dict key / argument / header name carries a credential."""
    return isinstance(name, str) and bool(_CREDENTIAL_NAME.search(name))


def register_secret(secret: str | None) -> None:
    """Remember an exact secret so :func:`scrub_text` removes it wherever it appears."""
    if isinstance(secret, str) and len(secret) >= 4:
        _known.add(secret)


def register_language_models(lms: Iterable[Any]) -> None:
    """Register the API keys of these clients (read from their private attribute)."""
    for lm in lms:
        try:
            if lm in _seen_lms:
                continue
            _seen_lms.add(lm)
        except TypeError:
            pass
        register_secret(getattr(lm, "_api_key", None))


def _secrets() -> list[str]:
    env = {
        value
        for name, value in os.environ.items()
        if is_credential_name(name) and isinstance(value, str) and len(value) >= 8
    }
    return sorted(_known | env, key=len, reverse=True)  # longest first: remove whole secrets


def scrub_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with known secrets, key-shaped values and URL credentials replaced by ``***``."""
    for secret in _secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _KEY_SHAPE.sub(REDACTED, text)
    if "://" in text:
        text = _URL_USERINFO.sub(f"{REDACTED}@", text)
    if "=" in text:
        text = _URL_TOKEN_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def scrub_credentials(value: Any, *, keep: Iterable[str] = ()) -> Any:
    """A copy of ``value`` with every credential removed (see the module docstring).

    Args:
        value: Any JSON-like structure (dicts, lists, tuples, strings, numbers).
        keep: Top-level keys of a dict ``value`` copied unchanged (user data such as trained
            variables, which are not configuration and must round-trip exactly).

    Example:
        ```python
        from promptfit.saving.secrets import scrub_credentials

        scrub_credentials({"model": "openai/x", "extra_headers": {"Authorization": "Bearer abc"}})
        # {'model': 'openai/x', 'extra_headers': {}}
        ```
    """
    secrets = _secrets()
    kept = set(keep)
    if isinstance(value, dict) and kept:
        return {
            k: v if k in kept else _scrub(v, secrets)
            for k, v in value.items()
            if k in kept or not is_credential_name(k)
        }
    return _scrub(value, secrets)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items() if not is_credential_name(k)}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item, secrets) for item in value)
    return value


class CredentialLogFilter(logging.Filter):
    """Scrub every record of the ``promptfit`` logger (message and arguments) before output."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the logging module's business
            return True
        cleaned = scrub_text(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        return True


def install_log_filter() -> None:
    """Attach :class:`CredentialLogFilter` to the ``promptfit`` logger (once)."""
    logger = logging.getLogger("promptfit")
    if not any(isinstance(f, CredentialLogFilter) for f in logger.filters):
        logger.addFilter(CredentialLogFilter())
