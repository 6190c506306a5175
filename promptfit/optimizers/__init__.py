"""Optimizers: searches over a program's trainable variables."""

from promptfit.optimizers.bootstrap_few_shot import BootstrapFewShot
from promptfit.optimizers.instruction_optimizer import InstructionOptimizer
from promptfit.optimizers.optimizer import Optimizer, PopulationOptimizer
from promptfit.optimizers.random_few_shot import RandomFewShot

__all__ = [
    "BootstrapFewShot",
    "InstructionOptimizer",
    "Optimizer",
    "PopulationOptimizer",
    "RandomFewShot",
]
