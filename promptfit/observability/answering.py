"""An ``MlflowClient`` that tells the Monitor's uploader whether the tracking store answers.

Why a wrapper: the end of a fit (:meth:`~promptfit.observability.uploader.RunUploader.close`)
and the first backup (``wait_run_known``) must wait for a slow store but not for a hung one;
what tells them apart is whether the call now in flight has been waiting long, not how long
the whole upload has taken (one upload step can be many calls, each slow on a busy machine).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptfit.observability.uploader import RunUploader

__all__ = ["AnsweringClient"]


class AnsweringClient:
    """Every method of ``client``, recording on ``uploader`` when the call now in flight began
    (``call_started_at``, None between calls) and whether the last call got an answer
    (``answering``; an error reply from the server is an answer too)."""

    def __init__(self, client: Any, uploader: RunUploader) -> None:
        self._client = client
        self._uploader = uploader

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            from mlflow.exceptions import RestException

            uploader = self._uploader
            uploader.call_started_at = time.monotonic()
            try:
                result = attribute(*args, **kwargs)
            except RestException:  # an error reply is an answer too
                uploader.answering = True
                raise
            except Exception:
                uploader.answering = False
                raise
            finally:
                uploader.call_started_at = None
            uploader.answering = True
            return result

        return call
