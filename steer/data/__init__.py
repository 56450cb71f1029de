"""Training and evaluation problems: the embedded reasoning-gym task and loaders for hub or local datasets."""

from steer.data.embedded import ArithmeticTask, Problem, generate_problems, heldout_problems, train_problems
from steer.data.loaders import ColumnMap, load_problems

__all__ = [
    "ArithmeticTask",
    "ColumnMap",
    "Problem",
    "generate_problems",
    "heldout_problems",
    "load_problems",
    "train_problems",
]
