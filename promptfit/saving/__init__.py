"""Saving and loading: atomic JSON files and the class registry."""

from promptfit.saving.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from promptfit.saving.registry import (
    get_registered_object,
    register_serializable,
    registered_name,
)

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "get_registered_object",
    "register_serializable",
    "registered_name",
]
