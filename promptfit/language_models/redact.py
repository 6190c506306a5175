"""Credentials inside endpoint URLs, masked wherever a URL is shown.

An ``api_base`` may carry a password (``https://user:pw@host/v1``) or a token in its query
(``?api_key=...``). Files never hold them (``promptfit.saving.secrets`` scrubs every document
with these same patterns), but a client also shows its URL in ``repr``, in log lines and in
error messages that users log to files. This module sits in ``language_models`` so the client
can mask them itself. ``saving.secrets`` keeps its own copy of the two patterns (importing
them from here would import the client package while ``saving`` is still initialising);
``tests/test_credentials.py`` checks that the copies are the same.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "URL_TOKEN_PARAM", "URL_USERINFO", "redact_url"]

REDACTED = "***"
URL_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")
URL_TOKEN_PARAM = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|sig|signature|password|secret|"
    r"code|x-amz-security-token|x-amz-signature)=)[^&#\s\"']+"
)


def redact_url(url: Any) -> Any:
    """``url`` (or each URL of a replica list) with user info and token parameters masked."""
    if isinstance(url, list | tuple):
        return [redact_url(item) for item in url]
    if not isinstance(url, str):
        return url
    if "://" in url:
        url = URL_USERINFO.sub(f"{REDACTED}@", url)
    if "=" in url:
        url = URL_TOKEN_PARAM.sub(lambda m: m.group(1) + REDACTED, url)
    return url
