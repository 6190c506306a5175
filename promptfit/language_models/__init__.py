"""Language model clients (litellm, or the lean HTTP transport for OpenAI-compatible servers)."""

from promptfit.language_models.cache import ResponseCache
from promptfit.language_models.language_model import Generation, LanguageModel
from promptfit.language_models.usage import Usage

__all__ = ["Generation", "LanguageModel", "ResponseCache", "Usage"]
