"""What the service decides with (model, policies, learned rates), and how it is swapped while serving.

Why a bundle swapped as one reference: a request must never see the new model with the old policies.
A background thread polls every few seconds: when the model alias (e.g. `champion`) points at another
version, or a policy file changed, it loads the new parts next to the old ones and replaces the bundle
in one assignment. A load that fails (broken YAML, missing artefact, unreachable MLflow) leaves the old
bundle serving; the failure is logged and shown on /readyz until a later load succeeds.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.decision.run import load_policy_engine, uplift_for
from engine.errors import RetainError
from engine.model.registry import LoadedModel, connect, load_model, model_uri

log = logging.getLogger("retain.serve")
POLICY_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Bundle:
    loaded: LoadedModel
    policy_engine: Any
    policy_signature: tuple
    learned: dict[tuple[str, str], float] | None
    uplift: Any = None  # the uplift model `arbitration: incremental_value` uses (None: the offers' priors)
    loaded_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def model_version(self) -> str | None:
        return self.loaded.version

    @property
    def policy_hash(self) -> str:
        return self.policy_engine.policy_set.content_hash


def policy_signature(policy_dir: str | Path) -> tuple:
    """(relative path, size, mtime) of every policy file: cheap to poll, changes on any edit."""
    root = Path(policy_dir)
    if not root.is_dir():
        return ()
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix in POLICY_SUFFIXES and p.is_file():
            st = p.stat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return tuple(out)


def settle_heap(*, again: bool = False) -> None:
    """Move everything loaded so far (model, policies, libraries: ~300 k objects) out of the garbage
    collector's reach, so its full collections stop scanning them.

    Why: a full collection over the loaded process took ~300 ms here, and the allocations of deciding
    trigger one every few hundred requests: it was the p99 of the service. `again` (after a reload) first
    releases the previous freeze and collects once, so a replaced model's cycles are freed.
    """
    if again:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _one_line(exc: BaseException, policy_dir: Path) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace(str(policy_dir.resolve()), policy_dir.name).replace(str(policy_dir), policy_dir.name)


class ServingState:
    """The current bundle plus the reloader thread that replaces it."""

    def __init__(self, settings: Settings, *, model: str, policy_dir: str | Path, learned: bool = True,
                 poll_seconds: float = 5.0, learned_refresh_seconds: float = 300.0) -> None:
        self.settings = settings
        self.model_ref = model
        self.policy_dir = Path(policy_dir)
        self.use_learned = learned
        self.poll_seconds = poll_seconds
        self.learned_refresh_seconds = learned_refresh_seconds
        self.bundle: Bundle | None = None
        self.last_reload_error: str | None = None
        self.last_reload_error_at: str | None = None
        self.last_check_at: str | None = None
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._learned_at = 0.0

    # -- loading -----------------------------------------------------------------------------------
    @property
    def follows_alias(self) -> bool:
        """True when the model is named by an alias, so a promotion must be followed."""
        return bool(re.fullmatch(r"models:/[^/@]+@.+", model_uri(self.settings, self.model_ref)))

    def alias_version(self) -> str | None:
        m = re.fullmatch(r"models:/([^/@]+)@(.+)", model_uri(self.settings, self.model_ref))
        if not m:
            return None
        return str(connect(self.settings).get_model_version_by_alias(m.group(1), m.group(2)).version)

    def _learned(self) -> dict[tuple[str, str], float] | None:
        if not self.use_learned:
            return None
        from engine.feedback.learning import learned_acceptance

        self._learned_at = time.monotonic()
        return learned_acceptance(self.settings)

    def load(self) -> Bundle:
        """First load (raises on failure: the service does not start without a model and policies)."""
        sig = policy_signature(self.policy_dir)
        policy_engine = load_policy_engine(self.policy_dir)
        loaded = load_model(self.settings, self.model_ref)
        self.bundle = Bundle(loaded, policy_engine, sig, self._learned(), uplift_for(self.settings, policy_engine))
        log.info("serving model %s (version %s), policies %s (hash %s)", loaded.uri, loaded.version,
                 self.policy_dir.name, policy_engine.policy_set.content_hash[:12])
        return self.bundle

    def check(self) -> bool:
        """Reload what changed; True when a new bundle was swapped in. Never raises."""
        current = self.bundle
        assert current is not None
        self.last_check_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            updates: dict[str, Any] = {}
            what = []
            if self.follows_alias:
                version = self.alias_version()
                if version != current.model_version:
                    updates["loaded"] = load_model(self.settings, self.model_ref)
                    what.append(f"model version {current.model_version} -> {updates['loaded'].version}")
            sig = policy_signature(self.policy_dir)
            if sig != current.policy_signature:
                engine = load_policy_engine(self.policy_dir)
                updates["policy_signature"] = sig
                if engine.policy_set.content_hash != current.policy_hash:
                    updates["policy_engine"] = engine
                    updates["uplift"] = uplift_for(self.settings, engine)
                    what.append(f"policies {current.policy_hash[:12]} -> {engine.policy_set.content_hash[:12]}")
            if self.use_learned and time.monotonic() - self._learned_at > self.learned_refresh_seconds:
                updates["learned"] = self._learned()
        except (RetainError, OSError, Exception) as exc:  # noqa: BLE001 - any failure keeps the old bundle
            message = _one_line(exc, self.policy_dir)
            if message != self.last_reload_error:
                log.error("reload failed, still serving model version %s with policies %s: %s",
                          current.model_version, current.policy_hash[:12], message)
            self.last_reload_error = message
            self.last_reload_error_at = self.last_check_at
            return False
        self.last_reload_error = None
        self.last_reload_error_at = None
        if not updates:
            return False
        self.bundle = replace(current, **updates,
                              loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        if what:
            self.reloads += 1
            log.info("reloaded: %s", "; ".join(what))
            settle_heap(again=True)
        return bool(what)

    # -- the background thread ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None and self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="retain-reload", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "ready": b is not None,
            "model": b.loaded.uri if b else None,
            "model_version": b.model_version if b else None,
            "policy_hash": b.policy_hash if b else None,
            "policy_files": len(b.policy_signature) if b else 0,
            "loaded_at": b.loaded_at if b else None,
            "reloads": self.reloads,
            "last_check_at": self.last_check_at,
            "last_reload_error": self.last_reload_error,
            "last_reload_error_at": self.last_reload_error_at,
            "learned_rates": len(b.learned or {}) if b else 0,
        }
