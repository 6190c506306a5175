"""Data models: the typed inputs and outputs that flow between modules.

A :class:`DataModel` is a pydantic v2 model. Its JSON schema is what a generator asks the
language model to produce, and validation of the reply against it is what turns free text into
a typed result. Subclasses register themselves by qualified name so that a saved program can be
loaded back without importing any module named in the file.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pydantic
from pydantic import ConfigDict, Field

__all__ = ["DataModel", "Field", "data_model_registry", "json_schema_of"]

_REGISTRY: dict[str, type[DataModel]] = {}


class DataModel(pydantic.BaseModel):
    """Base class of every promptfit data model.

    Example:
        ```python
        import promptfit as pf

        class Query(pf.DataModel):
            question: str = pf.Field(description="An arithmetic question")

        Query(question="What is 2 + 3?").model_dump()
        ```
    """

    model_config = ConfigDict(extra="ignore", frozen=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _REGISTRY[registry_name(cls)] = cls


def registry_name(cls: type[pydantic.BaseModel]) -> str:
    """The stable name a data model class is saved under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def data_model_registry() -> dict[str, type[DataModel]]:
    """A read-only view (copy) of the registered data model classes."""
    return dict(_REGISTRY)


@functools.lru_cache(maxsize=1024)
def json_schema_of(cls: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``cls``, computed once per class (schemas are costly to build)."""
    return cls.model_json_schema()


@functools.lru_cache(maxsize=1024)
def json_schema_text(cls: type[pydantic.BaseModel]) -> str:
    """The JSON schema of ``cls`` as compact text, computed once per class."""
    return json.dumps(json_schema_of(cls), ensure_ascii=False)


def lookup_data_model(name: str) -> type[DataModel] | None:
    """The registered class saved under ``name``, if any."""
    return _REGISTRY.get(name)
