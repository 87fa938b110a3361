"""User-facing errors.

Every mistake a user can make (bad file, bad column, bad policy, missing model alias) is raised
as a `RetainError` carrying a one-line message and a hint, so the CLI can print it without a
traceback and exit non-zero. Anything else escaping is a bug in retain, not the user's fault.
"""

from __future__ import annotations

import re

#: user:password@ in a URL, and token-like query parameters.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^/@:\s]*)(?::[^/@\s]*)?@")
_SECRET_PARAMS = re.compile(r"(?i)([?&](?:token|access_token|api_key|apikey|key|password|secret|sig)=)[^&\s]+")


def mask_secrets(text: str) -> str:
    """Any URL in `text` with its password and secret query parameters replaced by '***'.

    Why here, at the bottom: every message and log line that may show a URL (tracking server, decision
    store, webhook) passes through one function, so a credential never reaches a terminal or a log.
    """
    masked = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["user"] else f"{m['scheme']}***@",
                              str(text))
    return _SECRET_PARAMS.sub(r"\1***", masked)


class RetainError(Exception):
    """A problem the user can fix. `str()` is the one-line message shown by the CLI."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        message = mask_secrets(message)
        super().__init__(message)
        self.message = message
        self.hint = mask_secrets(hint) if hint else hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class DataError(RetainError):
    """An input table is unreadable, empty, or does not match the schema."""


class ConfigError(RetainError):
    """A configuration file or option is invalid."""


class PolicyError(RetainError):
    """A policy set failed to load or validate. `problems` holds every finding, not just the first."""

    def __init__(self, message: str, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.problems = problems or [message]


class ModelError(RetainError):
    """The model registry or a model version cannot serve the request."""
