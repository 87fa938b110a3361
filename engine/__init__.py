"""retain: a churn-retention decision engine for telecom operators.

The package is a library first; `engine.cli` is a thin Typer layer on top. Stages:
schema -> features -> model (scoring + reasons) -> segments -> policy -> decide -> actions,
with drift watching the inputs and outputs.
"""

__version__ = "0.1.0"
