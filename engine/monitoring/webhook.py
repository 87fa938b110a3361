"""POST the drift summary to a webhook (chat-ops, incident tools, a scheduler's callback).

Why stdlib urllib: one JSON POST with a timeout needs no extra dependency, and every failure mode
(DNS, refused connection, timeout, HTTP error status) must become one readable line and exit code 2.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from engine.errors import ConfigError, RetainError


class WebhookError(RetainError):
    """The webhook receiver could not be reached or refused the summary."""


def check_url(url: str) -> None:
    """Refuse a malformed URL before the check runs, not after a minute of work."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"--webhook '{url}' is not an http(s) URL", hint="e.g. --webhook https://hooks.example/drift")


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> int:
    """POST `payload` as JSON; return the HTTP status. Raise WebhookError on any delivery failure."""
    check_url(url)
    body = json.dumps(payload, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "retain-drift"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook {url} answered HTTP {exc.code} {exc.reason}",
                           hint="check the receiver; no report was published") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc) or type(exc).__name__
        raise WebhookError(f"webhook {url} is unreachable ({reason})",
                           hint=f"check the URL and that the receiver is up (timeout {timeout:g} s); "
                                "no report was published") from None
