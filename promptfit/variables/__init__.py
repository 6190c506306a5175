"""Trainable JSON variables."""

from promptfit.variables.variable import Variable

__all__ = ["Variable"]
