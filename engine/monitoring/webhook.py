"""POST the drift summary to a webhook (chat-ops, incident tools, a scheduler's callback).

Why stdlib http.client: one JSON POST needs no extra dependency, and every failure mode (DNS, refused
connection, timeout, HTTP error status) must become one readable line and exit code 2.

Why a total deadline and not only a socket timeout: a socket timeout bounds each read, so a receiver that
sends one byte per second never trips it and keeps a nightly job alive for as long as it likes. The POST
runs in a worker thread; the caller waits at most `deadline` seconds, then shuts the socket down (which
ends the worker's blocked read at once) and raises. Name resolution cannot be interrupted, but the caller
does not wait for it past the deadline either (the worker is a daemon thread).

Every URL shown in a message goes through `engine.errors.mask_secrets` (RetainError does it): a receiver
URL may carry credentials (`https://user:token@hooks.example/...`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from typing import Any

from engine.errors import ConfigError, RetainError, mask_secrets

#: The receiver's answer is not used; reading more of it than this would only give a slow receiver time.
MAX_RESPONSE_BYTES = 64 * 1024


class WebhookError(RetainError):
    """The webhook receiver could not be reached, refused the summary, or did not answer in time."""


def check_url(url: str) -> None:
    """Refuse a malformed URL before the check runs, not after a minute of work."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--webhook '{mask_secrets(url)}' is not an http(s) URL",
                          hint="e.g. --webhook https://hooks.example/drift")


class _Delivery:
    """One POST, run in a worker thread; `abort()` shuts its socket down from another thread."""

    def __init__(self, url: str, body: bytes, timeout: float) -> None:
        self.url, self.body, self.timeout = url, body, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.status: int | None = None
        self.reason: str = ""
        self.error: BaseException | None = None
        self.aborted = threading.Event()

    def run(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
        headers = {"Content-Type": "application/json", "User-Agent": "retain-drift", "Connection": "close"}
        if parsed.username is not None:  # credentials in the URL: HTTP basic authentication, as urllib does
            import base64

            token = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode("ascii")
        try:
            self.conn = cls(parsed.hostname, parsed.port, timeout=self.timeout)
            if self.aborted.is_set():
                return
            self.conn.request("POST", path, body=self.body, headers=headers)
            response = self.conn.getresponse()
            self.status, self.reason = int(response.status), str(response.reason or "")
            response.read(MAX_RESPONSE_BYTES)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which words it
            self.error = exc
        finally:
            self.close()

    def abort(self) -> None:
        self.aborted.set()
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def close(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0, deadline: float = 10.0) -> int:
    """POST `payload` as JSON; return the HTTP status. Raise WebhookError on any delivery failure.

    `timeout` bounds the connect and each single read; `deadline` bounds the whole delivery, however
    slowly the receiver answers.
    """
    check_url(url)
    shown = mask_secrets(url)
    body = json.dumps(payload, default=str).encode("utf-8")
    delivery = _Delivery(url, body, min(timeout, deadline))
    worker = threading.Thread(target=delivery.run, name="retain-webhook", daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        delivery.abort()
        worker.join(1.0)
        raise WebhookError(f"webhook {shown} did not answer within the {deadline:g} s deadline "
                           f"(drift.webhook_deadline_seconds)",
                           hint="check the receiver; no report was published")
    exc = delivery.error
    if exc is not None:
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"timed out after {time.monotonic() - started:.1f} s"
        else:
            reason = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
        raise WebhookError(f"webhook {shown} is unreachable ({mask_secrets(reason)})",
                           hint=f"check the URL and that the receiver is up (timeout {timeout:g} s, deadline "
                                f"{deadline:g} s); no report was published") from None
    assert delivery.status is not None
    if delivery.status >= 400:
        raise WebhookError(f"webhook {shown} answered HTTP {delivery.status} {delivery.reason}",
                           hint="check the receiver; no report was published")
    return delivery.status
