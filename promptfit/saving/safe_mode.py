"""``load_program(safe_mode=True)``: judge where a file's language model would send requests.

A program file rebuilds each generator's :class:`~promptfit.LanguageModel` from data, and that
data decides where prompts, user inputs and (through litellm's environment lookup) API keys
go. Checking only an ``api_base`` field is not enough: litellm routes on the whole model
string (``oobabooga/http://HOST:PORT`` sends everything to HOST, ``huggingface/...`` to a
hosted API), on provider defaults and on environment variables. So this module asks litellm
itself (:func:`litellm.get_llm_provider`) which provider and base URL a model string resolves
to, and allows only:

* requests whose every endpoint is a loopback address (a file cannot put a server on your
  machine; vLLM, llama.cpp, Ollama and the test server live there); with a list of replicas
  in ``api_base``, every replica is judged by the same rules and one bad entry refuses the
  file;
* the embedded offline model (``local/...``), which makes no request at all;
* providers the caller named in ``allowed_providers`` (``openai``, ``huggingface``...), and
  then only at the provider's own endpoint, never at an endpoint the file chooses.

Anything litellm cannot place (an unknown provider) is refused: unknown is not safe.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit

from promptfit.errors import ConfigurationError, UnsafeFileError
from promptfit.language_models._litellm import authenticating_provider

__all__ = [
    "SAFE_LITELLM_KWARGS",
    "check_file_language_model",
    "is_loopback_url",
    "normalize_allowed_providers",
    "resolve_route",
]

# Generation parameters a file may set in safe mode: they change answers and cost, never where
# a request (and its key) goes. Anything else litellm accepts (``base_url``, ``extra_headers``,
# ``api_version``, cloud credentials...) can redirect traffic or carry secrets.
SAFE_LITELLM_KWARGS = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "logit_bias",
        "reasoning_effort",
    }
)

# Providers that sign requests with ambient cloud credentials (AWS profile, gcloud login, Azure
# identity) and pick their endpoints from them: a loopback ``api_base`` does not make such a
# model local, so they always need the caller's explicit permission.
_CLOUD_CREDENTIAL_PROVIDERS = frozenset(
    {
        "azure",
        "azure_ai",
        "azure_text",
        "bedrock",
        "sagemaker",
        "sagemaker_chat",
        "vertex_ai",
        "vertex_ai_beta",
        "watsonx",
        "watsonx_text",
    }
)

# The embedded model: served in-process by promptfit's own litellm handler, no network.
_OFFLINE_PROVIDERS = frozenset({"local"})

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]*")


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is ``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_allowed_providers(allowed: Iterable[str] | None) -> frozenset[str]:
    """Check ``load_program``'s ``allowed_providers`` and return it as a set of names."""
    if allowed is None:
        return frozenset()
    if isinstance(allowed, str):
        raise ConfigurationError(
            f"`allowed_providers` must be a list of litellm provider names, e.g. "
            f"['{allowed}'], not a single string."
        )
    names: set[str] = set()
    for name in allowed:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f"`allowed_providers` must hold litellm provider names like 'openai', got {name!r}."
            )
        names.add(name.strip().lower())
    return frozenset(names)


def resolve_route(model: str, api_base: str | None) -> tuple[str, list[str]]:
    """``(provider, endpoints)`` litellm would use for ``model`` with ``api_base``.

    ``endpoints`` lists every URL the request could go to that litellm knows of (the given
    ``api_base``, a base URL litellm derives from the provider or the environment, URLs
    embedded in the model string); an empty list means "the provider's default endpoint".

    Raises:
        UnsafeFileError: litellm cannot tell which provider serves ``model``.
    """
    from promptfit.language_models._litellm import litellm

    endpoints: list[str] = []
    if api_base is not None:
        endpoints.append(api_base)
    # A URL anywhere in the model string may become the endpoint (``oobabooga/http://host``,
    # ``openai/https://host/...``, Hugging Face endpoint URLs): all of them are judged.
    endpoints += _URL.findall(model)
    provider = model.split("/", 1)[0].lower() if "/" in model else ""
    if provider in _OFFLINE_PROVIDERS:
        return provider, endpoints
    logs_in = authenticating_provider(model)
    if logs_in is not None:
        # Resolving it would run the provider's OAuth device flow (a request to its login
        # server, then minutes of polling): judging a file must send nothing anywhere.
        return logs_in, endpoints
    try:
        _name, provider, _key, dynamic_base = litellm.get_llm_provider(
            model=model, api_base=api_base
        )
    except Exception as error:  # litellm raises its own BadRequestError subclasses
        raise UnsafeFileError(
            f"litellm cannot tell which provider serves the model {model!r} ({type(error).__name__}"
            "), so safe mode cannot tell where its requests would go"
        ) from None
    if isinstance(dynamic_base, str) and dynamic_base:
        endpoints.append(dynamic_base)
    return str(provider).lower(), endpoints


def _file_api_bases(api_base: Any) -> list[str | None] | str:
    """The file's ``api_base`` as the list of endpoints to judge, or why it cannot be judged.

    ``None`` (no endpoint: the provider's default), one URL, or a list of replica URLs, as
    :class:`~promptfit.LanguageModel` accepts; every replica receives the same prompts and
    key, so each one is judged on its own.
    """
    if api_base is None:
        return [None]
    if isinstance(api_base, str):
        return [api_base]
    if isinstance(api_base, list) and api_base and all(isinstance(b, str) for b in api_base):
        return list(dict.fromkeys(api_base))
    return f"its api_base {api_base!r} is not a URL nor a non-empty list of URLs (one per replica)"


def _route_problems(config: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    model = config.get("model")
    if not isinstance(model, str) or not model:
        return [f"its model {model!r} is not a litellm model string"]
    bases = _file_api_bases(config.get("api_base"))
    if isinstance(bases, str):
        return [bases]
    problems: list[str] = []
    for base in bases:
        for problem in _one_route_problems(model, base, allowed):
            if problem not in problems:
                problems.append(problem)
    return problems


def _one_route_problems(model: str, api_base: str | None, allowed: frozenset[str]) -> list[str]:
    """What is wrong with sending ``model``'s requests to ``api_base`` (one replica)."""
    try:
        provider, endpoints = resolve_route(model, api_base)
    except UnsafeFileError as error:
        return [str(error)]
    if provider in _OFFLINE_PROVIDERS:
        name = model.split("/", 1)[1]
        if "/" in name or "\\" in name or name.lower().endswith(".gguf") or ".." in name:
            # A path would make the loader read (and parse) any file the file names.
            return [f"it loads the model weights from the path {name!r}"]
        remote = [url for url in endpoints if not is_loopback_url(url)]
        return [f"it sends requests to {url!r}" for url in remote]
    remote = [url for url in endpoints if not is_loopback_url(url)]
    if remote:
        # Never, even for an allowed provider: the provider is trusted at its own endpoint,
        # not at one the file picked (which would receive the provider's key).
        where = ", ".join(
            f"api_base={url!r}" if url == api_base else repr(url) for url in dict.fromkeys(remote)
        )
        return [f"it sends requests to {where} (provider {provider!r})"]
    if provider in allowed:
        return []
    # A provider that logs in first (an OAuth device flow against its own login server) is
    # never local, whatever api_base says.
    logs_in = authenticating_provider(model) is not None
    if endpoints and provider not in _CLOUD_CREDENTIAL_PROVIDERS and not logs_in:
        return []  # every endpoint is loopback
    return [
        f"it sends requests to the hosted provider {provider!r}, which you did not allow "
        f"(pass allowed_providers=[{provider!r}] if you meant to)"
    ]


def _inside_cwd(path: str) -> bool:
    """Whether ``path`` stays in the working directory, symlinks followed (a relative path
    through a link to ``/etc`` is as far outside as ``/etc`` itself)."""
    if PurePath(path).is_absolute() or ".." in PurePath(path).parts:
        return False
    try:
        return Path(path).resolve().is_relative_to(Path.cwd().resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a path too long
        return False


@functools.cache
def _lm_config_fields() -> frozenset[str]:
    """The client's own settings (everything ``LanguageModel.get_config()`` writes besides
    extra litellm arguments); read from the signature on first use, so importing this module
    does not import the client."""
    from promptfit.language_models.language_model import LanguageModel

    return frozenset(inspect.signature(LanguageModel).parameters) - {"api_key", "litellm_kwargs"}


def check_file_language_model(config: Any, allowed_providers: frozenset[str]) -> None:
    """Refuse, in safe mode, what a file could use to steer traffic or write elsewhere.

    Raises:
        UnsafeFileError: the message names every problem and the ways on.
    """
    if not isinstance(config, dict):
        raise UnsafeFileError(
            f"The file's language model configuration must be an object, got "
            f"{type(config).__name__}."
        )
    name = config.get("name") or config.get("model")
    problems = _route_problems(config, allowed_providers)
    unsafe = sorted(str(k) for k in set(config) - _lm_config_fields() - SAFE_LITELLM_KWARGS)
    if unsafe:
        problems.append(f"it sets the litellm arguments {unsafe}")
    cache = config.get("cache")
    if isinstance(cache, str) and not _inside_cwd(cache):
        problems.append(f"it writes its response cache to {cache!r}")
    if problems:
        raise UnsafeFileError(
            f"The file's language model {name!r} is refused in safe mode: {'; and '.join(problems)}"
            ". A file from someone else could use this to send your prompts and your API key (or "
            "one litellm finds in your environment) to a server of its choice. If you trust the "
            "file, load it with safe_mode=False; to allow a hosted provider at its own endpoint, "
            "pass allowed_providers=[...]; or pass your own client: "
            f"language_models={{{name!r}: lm}}."
        )
