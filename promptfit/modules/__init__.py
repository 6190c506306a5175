"""Modules: the steps of a program."""

from promptfit.modules.chain_of_thought import ChainOfThought
from promptfit.modules.function_module import FunctionModule
from promptfit.modules.generator import Generator
from promptfit.modules.input import Input, InputModule
from promptfit.modules.module import Module, SymbolicDataModel

__all__ = [
    "ChainOfThought",
    "FunctionModule",
    "Generator",
    "Input",
    "InputModule",
    "Module",
    "SymbolicDataModel",
]
