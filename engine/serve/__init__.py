"""`retain serve`: real-time decisions over HTTP for the front desk, the app and the call centre.

The service is an entry point over `engine.decision.decide.decide_frame`, the function `retain decide`
runs: it adds HTTP, a daily allowance and contact history kept in the decision store, background
recording, hot reload and probes, never decision logic of its own. See README_SECTION.md.
"""

from engine.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
