"""Counting and measuring what a training step costs."""
from . import flop_formulas  # noqa: F401  (registers CPU attention)
