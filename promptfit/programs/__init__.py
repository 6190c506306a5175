"""Programs: trainable graphs of modules."""

from promptfit.programs.program import Program, Sequential

__all__ = ["Program", "Sequential"]
