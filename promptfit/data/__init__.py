"""Data models and data adapters."""

from promptfit.data.adapters import to_data_models
from promptfit.data.data_model import DataModel, Field, json_schema_of
from promptfit.data.schema import data_model_from_schema

__all__ = ["DataModel", "Field", "data_model_from_schema", "json_schema_of", "to_data_models"]
