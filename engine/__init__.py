"""retain: a churn-retention decision engine for telecom operators.

The package is a library first; `engine.cli.main` is a thin Typer layer on top. Stages:
schema -> features -> model (scoring + reasons) -> segments -> policy -> decide -> actions,
with drift watching the inputs and outputs.
"""

__version__ = "0.1.0"

import os as _os

# Library noise users cannot act on (MLflow registration chatter, artefact progress bars) stays off
# unless the user asks for it through the same environment variables.
_os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
