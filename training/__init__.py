"""Training: data splits, Optuna study over CatBoost, evaluation, MLflow logging and registration."""
