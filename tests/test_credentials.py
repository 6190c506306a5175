"""Credential-bearing litellm arguments never reach a file (issue 11, item 5).

A fit writes program checkpoints, a backup, a manifest, a CSV log and log records; the program
is saved too. None of them may hold a header token, a cloud credential or a token in a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data

SECRETS = {
    "header": "Bearer hdr-SECRET-0001abcdef",
    "x-api-key": "xkey-SECRET-0002",
    "aws": "aws-SECRET-0003",
    "nested": "nested-SECRET-0004",
    "vertex": "vertex-SECRET-0005",
    "azure": "azure-SECRET-0006",
    "url": "url-SECRET-0007",
    "api_key": "sk-test-secret-key",
}


def _credential_kwargs() -> dict[str, Any]:
    return {
        "extra_headers": {
            "Authorization": SECRETS["header"],
            "X-Api-Key": SECRETS["x-api-key"],
            "X-Trace": "kept",
        },
        "aws_secret_access_key": SECRETS["aws"],
        "extra_body": {"team": "kept", "nested": {"api_key": SECRETS["nested"]}},
    }


def _assert_no_secret(directory: Path) -> list[Path]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} credential written to {path}"
            assert secret.split()[-1] not in text, f"{name} credential written to {path}"
    return files


def test_a_fit_writes_no_credential_anywhere(
    llm_server: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_file = tmp_path / "promptfit.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("promptfit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith"),
        api_base=llm_server.base_url,
        api_key=SECRETS["api_key"],
        **_credential_kwargs(),
    )

    async def run() -> pf.Program:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm, name="g")(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        program.compile(reward=pf.rewards.ExactMatch(), optimizer=pf.optimizers.RandomFewShot(k=1))
        x, y = arithmetic_data(4)
        await program.fit(
            x,
            y,
            epochs=2,
            batch_size=2,
            verbose=0,
            seed=1,
            callbacks=[
                pf.callbacks.ProgramCheckpoint(
                    str(tmp_path / "ckpt" / "e{epoch}.json"), monitor="reward"
                ),
                pf.callbacks.CSVLogger(tmp_path / "log.csv"),
                BackupAndRestore(tmp_path / "backup", delete_checkpoint=False),
            ],
        )
        return program

    try:
        program = asyncio.run(run())
        program.save(tmp_path / "program.json")
        # A log line quoting the key (an error message, say) is scrubbed by the logger.
        logger.warning("request failed with key %s and %s", SECRETS["api_key"], SECRETS["header"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    files = _assert_no_secret(tmp_path)
    assert {p.name for p in files} >= {"program.json", "e2.json", "backup.json", "log.csv"}
    saved = json.loads((tmp_path / "program.json").read_text())
    lm_config = saved["config"]["modules"]["g"]["config"]["language_model"]
    # Harmless arguments survive, so the file still describes the client.
    assert lm_config["extra_headers"] == {"X-Trace": "kept"}
    assert lm_config["extra_body"] == {"team": "kept", "nested": {}}
    assert "aws_secret_access_key" not in lm_config
    assert "***" in log_file.read_text()


@pytest.mark.parametrize(
    ("kwargs", "gone"),
    [
        ({"vertex_credentials": json.dumps({"private_key": "vertex-SECRET-0005"})}, "vertex"),
        ({"azure_ad_token": "azure-SECRET-0006"}, "azure"),
        ({"aws_access_key_id": "AKIAABCDEFGHIJKLMNOP"}, "AKIA"),
        ({"aws_session_token": "aws-SECRET-0003"}, "aws"),
        ({"client_secret": "azure-SECRET-0006"}, "azure"),
    ],
)
def test_cloud_credentials_are_not_saved(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path, kwargs: dict[str, Any], gone: str
) -> None:
    lm = make_lm("arith", lm_kwargs=kwargs)
    inputs = pf.Input(data_model=Query)
    outputs = asyncio.run(pf.Generator(data_model=Answer, language_model=lm, name="g")(inputs))
    path = pf.Program(inputs=inputs, outputs=outputs, name="p").save(tmp_path / "p.json")
    text = path.read_text()
    for name in kwargs:
        assert name not in text
    assert "SECRET" not in text and "AKIAABCDEFGHIJKLMNOP" not in text, gone


def test_tokens_in_urls_are_scrubbed() -> None:
    from promptfit.saving.secrets import scrub_credentials

    cleaned = scrub_credentials(
        {
            "api_base": "https://user:url-SECRET-0007@host.example/v1?api_key=url-SECRET-0007&x=1",
            "max_tokens": 5,
            "tokens": 12,
        }
    )
    assert "url-SECRET-0007" not in json.dumps(cleaned)
    assert cleaned["max_tokens"] == 5 and cleaned["tokens"] == 12
    assert cleaned["api_base"].endswith("&x=1")


def test_mlflow_scrubber_drops_the_same_credentials() -> None:
    from promptfit.observability.mlflow_backend import scrub_secrets

    payload = {"azure_ad_token": "azure-SECRET-0006", "aws_access_key_id": "key-id-SECRET-0008"}
    assert "SECRET" not in json.dumps(scrub_secrets(payload))


def test_credentials_in_the_api_base_are_masked_in_repr_logs_and_errors(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """A password or token inside ``api_base`` is scrubbed from files; it was still shown by
    ``repr(lm)``, in the negotiation log line and in LMCallsFailingError (which users log)."""
    base = llm_server.base_url.replace("http://", "http://user:pw-SECRET-0009@")
    base += "?api_key=qs-SECRET-0010"
    log_file = tmp_path / "promptfit.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("promptfit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith", error_rate=1.0, tag="url-creds"),
        api_base=[base, llm_server.base_url],
        api_key="k",
        cache=False,
        max_retries=0,
    )

    async def run() -> None:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm, name="g")(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        program.compile(reward=pf.rewards.ExactMatch())
        await program.evaluate(*arithmetic_data(6), verbose=0)

    try:
        with pytest.raises(pf.errors.LMCallsFailingError) as caught:
            asyncio.run(run())
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)
    shown = [repr(lm), str(caught.value), log_file.read_text()]
    assert "127.0.0.1" in str(caught.value)  # the endpoint is still named
    for text in shown:
        assert "SECRET" not in text, text[:500]


def test_the_url_patterns_of_files_and_displays_are_the_same() -> None:
    from promptfit.language_models import redact
    from promptfit.saving import secrets

    assert secrets._URL_USERINFO.pattern == redact.URL_USERINFO.pattern
    assert secrets._URL_TOKEN_PARAM.pattern == redact.URL_TOKEN_PARAM.pattern
    assert secrets.REDACTED == redact.REDACTED
