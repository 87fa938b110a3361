"""Monitoring around the drift check: the file/registry service, MLflow monitoring runs, history, webhooks.

Why `drift` apart from the rest: the check itself is pure (DataFrames in, a result out) and is
what tests with real statistics exercise; everything here is plumbing with side effects (reading files,
loading models, writing MLflow runs, POSTing alerts) that a scheduled job needs around it.
"""
