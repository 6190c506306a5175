"""Rebuild data model classes from JSON schemas found in saved files.

Loading a saved program must never import code named in the file. When a data model class is
not registered in this process, its class is rebuilt from the saved JSON schema with
:func:`pydantic.create_model`: only plain JSON types are understood, so the file describes data,
never behaviour.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model

from promptfit.data.data_model import DataModel, json_schema_of, lookup_data_model
from promptfit.errors import SerializationError

__all__ = ["data_model_from_schema", "resolve_data_model"]

_SIMPLE: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool}


def _annotation(prop: dict[str, Any], defs: dict[str, Any], name: str) -> Any:
    if "$ref" in prop:
        ref = prop["$ref"].rsplit("/", 1)[-1]
        if ref not in defs:
            raise SerializationError(f"Schema reference {prop['$ref']!r} is not defined.")
        return _annotation(defs[ref], defs, ref)
    if "enum" in prop:
        values = tuple(prop["enum"])
        return Literal[values]  # type: ignore[valid-type]
    if "anyOf" in prop:
        branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
        nullable = len(branches) != len(prop["anyOf"])
        inner = _annotation(branches[0], defs, name) if len(branches) == 1 else Any
        return inner | None if nullable else inner
    kind = prop.get("type")
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "array":
        items = prop.get("items")
        return list[_annotation(items, defs, name)] if items else list[Any]  # type: ignore[misc]
    if kind == "object":
        if "properties" in prop:
            return _model(prop, defs, prop.get("title", name))
        return dict[str, Any]
    return Any


def _model(schema: dict[str, Any], defs: dict[str, Any], title: str) -> type[DataModel]:
    required = set(schema.get("required", []))
    fields: dict[str, Any] = {}
    for field_name, prop in schema.get("properties", {}).items():
        if not isinstance(field_name, str) or not field_name.isidentifier() or field_name[0] == "_":
            # pydantic (and every prompt that names the field) needs a public identifier.
            raise SerializationError(
                f"Field name {field_name!r} in a data model schema is not a public identifier."
            )
        annotation = _annotation(prop, defs, field_name.title())
        kwargs: dict[str, Any] = {}
        if "description" in prop:
            kwargs["description"] = prop["description"]
        if field_name in required:
            fields[field_name] = (annotation, Field(**kwargs))
        else:
            fields[field_name] = (annotation, Field(default=prop.get("default"), **kwargs))
    safe_title = "".join(ch for ch in title if ch.isalnum() or ch == "_") or "DataModel"
    return create_model(safe_title, __base__=DataModel, **fields)


def data_model_from_schema(schema: dict[str, Any]) -> type[DataModel]:
    """Build a :class:`DataModel` class from a JSON schema (data only, no code)."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise SerializationError("A data model schema must be a JSON object schema.")
    model = _model(schema, schema.get("$defs", {}), schema.get("title", "DataModel"))
    try:
        # Every prompt renders the schema back: a schema pydantic cannot render again (odd
        # names, references) must fail here, at load, not in the first LM call.
        model.model_json_schema()
    except Exception as error:
        raise SerializationError(
            f"A data model schema cannot be used ({type(error).__name__}: {str(error)[:200]})."
        ) from error
    return model


def resolve_data_model(name: str, schema: dict[str, Any]) -> type[DataModel]:
    """The registered class ``name`` if its schema matches, else one rebuilt from ``schema``."""
    cls = lookup_data_model(name)
    if cls is not None and json_schema_of(cls) == schema:
        return cls
    return data_model_from_schema(schema)
