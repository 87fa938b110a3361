"""The workbench's working copy of a policy set: edit, check, diff, save, sign off.

Edits never touch the policy folder directly. `Workspace` copies the folder (every file but hidden ones)
into a temporary folder; forms and the YAML pane change files there, through ruamel.yaml's round-trip
mode, so that comments, key order and quoting survive. Checking a working copy (or a candidate edit,
before it is applied) calls the policy package's public loader and validator, and shows their messages
with the folder named as the marketer named it (`policies/rules/vip.yaml:11: ...`), never a temporary
path. Saving copies the changed files back, atomically, and is refused while the set has errors or when
a file changed on disk since the workbench copied it.

Sign-offs are appended to `<policies>/.signoff.yaml` (hidden, so the policy loader - which reads every
other `*.yaml` in the folder - skips it): one YAML list item per approval with the approver's name, the
policy hash of the saved set, the time (UTC) and a note. The file is only ever appended to.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import YAMLError

from engine.errors import PolicyError, RetainError

SIGNOFF_FILE = ".signoff.yaml"
SIGNOFF_HEADER = ("# Sign-offs of this policy set, appended by `retain workbench` and never edited: who approved\n"
                  "# which policy hash (`retain policy validate` prints the hash), when (UTC) and why.\n")
YAML_SUFFIXES = (".yaml", ".yml")
_PROBLEM = re.compile(r"^(?P<file>[^\s:][^:]*?):(?P<line>\d+): (?P<rest>.*)$", re.S)


class WorkbenchError(RetainError):
    """A refusal or mistake shown to the marketer as one line."""


class _Constructor(RoundTripConstructor):
    """Round-trip constructor that keeps a date-looking scalar which is no real date (2026-13-01) as text,
    as the policy loader does, so its own check reports it on the field instead of the file not loading."""

    def construct_yaml_timestamp(self, node: Any, values: Any = None) -> Any:
        try:
            return super().construct_yaml_timestamp(node, values)
        except ValueError:
            return self.construct_scalar(node)


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_timestamp)


def yaml_rt() -> YAML:
    """ruamel.yaml in round-trip mode, set up like the project's policy files (2-space maps, `  - ` lists)."""
    y = YAML(typ="rt")
    y.Constructor = _Constructor
    y.allow_duplicate_keys = True  # the policy loader reports them, with their line
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def dump(data: Any) -> str:
    buf = io.StringIO()
    yaml_rt().dump(data, buf)
    return buf.getvalue()


def load_text(text: str, what: str = "YAML") -> Any:
    """Round-trip load; a syntax error becomes one line with its line number."""
    try:
        return yaml_rt().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise WorkbenchError(f"{what} is not valid YAML{where}: {problem}") from None


def plain(v: Any) -> Any:
    """ruamel's round-trip containers and scalars as plain Python values (for comparisons and JSON)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def flow_text(v: Any) -> str:
    """A value as the one-line YAML a form field shows (`[high, medium]`, `{min: 2}`, `price`)."""
    if v is None:
        return ""
    if isinstance(v, dict | list):
        y = YAML(typ="rt")
        y.default_flow_style = True
        y.width = 4096
        buf = io.StringIO()
        y.dump(_flow_copy(v), buf)
        return buf.getvalue().strip().removesuffix("...").strip()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def _flow_copy(v: Any) -> Any:
    if isinstance(v, dict):
        m = CommentedMap((k, _flow_copy(x)) for k, x in v.items())
        m.fa.set_flow_style()
        return m
    if isinstance(v, list):
        s = CommentedSeq(_flow_copy(x) for x in v)
        s.fa.set_flow_style()
        return s
    return v


def parse_value(text: str, what: str) -> Any:
    """A form field's text as a YAML value (flow style kept); empty text is None."""
    text = text.strip()
    if not text:
        return None
    data = load_text(f"v: {text}\n", what)
    return data["v"] if isinstance(data, dict) else text


@dataclass
class Problem:
    """One error or warning line, as `retain policy validate` prints it, split into where and what."""

    text: str
    file: str | None = None  # path inside the policy folder, e.g. rules/vip.yaml
    line: int | None = None
    message: str = ""
    warning: bool = False


@dataclass
class Check:
    """The result of loading (and, when it loads, validating) a policy set."""

    problems: list[Problem]
    policy_set: Any = None
    warnings: list[Problem] = field(default_factory=list)
    coverage: str | None = None

    @property
    def ok(self) -> bool:
        return self.policy_set is not None and not self.problems


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Workspace:
    """A working copy of a policy folder, with the operations of the workbench."""

    def __init__(self, policies: str | Path, *, display: str | None = None, population: Any = None,
                 settings: Any = None) -> None:
        given = Path(policies)
        if not given.exists():
            raise WorkbenchError(f"policy folder '{policies}' does not exist",
                                 hint="point --policies at the folder holding the policy YAML files")
        if not given.is_dir():
            raise WorkbenchError(f"'{policies}' is a file; the workbench edits a policy folder",
                                 hint="give the folder holding policy.yaml, offers.yaml and rules/")
        self.saved = given.resolve()
        self.display = display or (str(policies).rstrip("/") if not given.is_absolute() else given.name)
        self._tmp = tempfile.TemporaryDirectory(prefix="retain-workbench-")
        self.work = Path(self._tmp.name) / "policies"
        self.lock = threading.RLock()
        self.population = population  # policy set -> engine.policy.validate.Population, or None
        self.settings = settings
        self._checks: dict[tuple[str, bool], Check] = {}  # content digest -> check (see check())
        self._copy_from_saved()

    # ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._tmp.cleanup()

    def _copy_from_saved(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        shutil.copytree(self.saved, self.work, ignore=lambda _d, names: [n for n in names if n.startswith(".")])
        self.snapshot = {rel: _sha((self.saved / rel).read_bytes()) for rel in self._yaml_files(self.saved)}

    @staticmethod
    def _yaml_files(root: Path) -> list[str]:
        out = []
        for p in root.rglob("*"):
            rel = p.relative_to(root)
            if p.is_file() and p.suffix.lower() in YAML_SUFFIXES and not any(s.startswith(".") for s in rel.parts):
                out.append(rel.as_posix())
        return sorted(out)

    def files(self) -> list[str]:
        """YAML files of the working copy (policy files and test cases), in path order."""
        return self._yaml_files(self.work)

    def policy_files(self) -> list[str]:
        from engine.policy.loader import is_test_file

        return [f for f in self.files() if not is_test_file(self.work / f, self.work)]

    def test_files(self) -> list[str]:
        from engine.policy.loader import is_test_file

        return [f for f in self.files() if is_test_file(self.work / f, self.work)]

    def path(self, rel: str) -> Path:
        """A working-copy file by its path inside the folder; refuses anything outside it."""
        rel = (rel or "").strip().replace("\\", "/")
        p = (self.work / rel).resolve()
        if not rel or self.work.resolve() not in p.parents or p.suffix.lower() not in YAML_SUFFIXES \
                or any(part.startswith(".") for part in Path(rel).parts):
            raise WorkbenchError(f"no policy file '{rel}' in the working copy")
        return p

    def read(self, rel: str) -> str:
        p = self.path(rel)
        if not p.exists():
            raise WorkbenchError(f"no policy file '{rel}' in the working copy")
        return p.read_text(encoding="utf-8")

    def load(self, rel: str) -> Any:
        return load_text(self.read(rel), f"{self.display}/{rel}")

    def write(self, rel: str, text: str) -> None:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)

    # ------------------------------------------------------------------------------------------
    def scrub(self, text: str, extra: tuple[str, ...] = ()) -> str:
        """A message with every server path replaced by the folder's name as the marketer gave it."""
        roots = {str(self.work), str(self.work.resolve()), str(self.saved), *extra}
        for root in sorted(roots, key=len, reverse=True):
            text = text.replace(root, self.display)
        return re.sub(r"/tmp/retain-workbench-[^/\s]*/(?:policies/)?", self.display + "/", text)

    def _problem(self, text: str, extra: tuple[str, ...] = (), *, warning: bool = False) -> Problem:
        text = self.scrub(str(text), extra).splitlines()[0] if text else ""
        m = _PROBLEM.match(text)
        if not m:
            return Problem(text, message=text, warning=warning)
        file = m["file"]
        prefix = self.display + "/"
        rel = file[len(prefix):] if file.startswith(prefix) else None
        return Problem(text, rel, int(m["line"]), m["rest"], warning)

    def check(self, root: Path | None = None, *, warnings: bool = True) -> Check:
        """Load the working copy (or `root`, a scratch copy): every error, else every warning and the
        coverage line, on the workbench's population (the --input table, else a synthetic one)."""

        root = root or self.work
        key = (self._digest(root), warnings)
        with self.lock:
            if key in self._checks:
                return self._checks[key]
        out = self._check(root, warnings)
        with self.lock:
            self._checks[key] = out
            while len(self._checks) > 32:
                self._checks.pop(next(iter(self._checks)))
        return out

    def _digest(self, root: Path) -> str:
        """The content of every YAML file under `root` (messages are path-free, so equal content, equal check)."""
        h = hashlib.sha256()
        for rel in self._yaml_files(root):
            h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
        return h.hexdigest()

    def _check(self, root: Path, warnings: bool) -> Check:
        from engine.policy import load_policy_set

        extra = (str(root),)
        try:
            ps = load_policy_set(root)
        except PolicyError as exc:
            return Check([self._problem(p, extra) for p in exc.problems])
        except RetainError as exc:
            return Check([self._problem(str(exc), extra)])
        out = Check([], ps)
        if warnings:
            from engine.policy import validate as checks

            population = None
            if self.population is not None:
                try:
                    population = self.population(ps)
                except RetainError as exc:
                    out.warnings.append(self._problem(f"population: {exc}", extra, warning=True))
            result = checks.validate_policy_set(ps, population=population, settings=self.settings)
            out.warnings += [self._problem(str(f), extra, warning=True) for f in result.findings]
            out.coverage = self.scrub(result.coverage.line(), extra) if result.coverage is not None else None
        return out

    @contextmanager
    def candidate(self, changes: dict[str, str]) -> Iterator[Path]:
        """A scratch copy of the working copy with `changes` (path -> text) applied."""
        with tempfile.TemporaryDirectory(prefix="retain-workbench-") as tmp:
            root = Path(tmp) / "policies"
            shutil.copytree(self.work, root)
            for rel, text in changes.items():
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text, encoding="utf-8")
            yield root

    def check_candidate(self, changes: dict[str, str], *, warnings: bool = True) -> Check:
        with self.lock, self.candidate(changes) as root:
            return self.check(root, warnings=warnings)

    def saved_check(self) -> Check:
        from engine.policy import load_policy_set

        try:
            ps = load_policy_set(self.saved)
        except PolicyError as exc:
            return Check([self._problem(p) for p in exc.problems])
        except RetainError as exc:
            return Check([self._problem(str(exc))])
        return Check([], ps)

    # ------------------------------------------------------------------------------------------
    def changed_files(self) -> list[str]:
        """Files of the working copy that differ from the policy folder (new ones included)."""
        out = []
        for rel in self.files():
            saved = self.saved / rel
            if not saved.exists() or saved.read_bytes() != (self.work / rel).read_bytes():
                out.append(rel)
        return out

    def diff(self) -> list[tuple[str, str]]:
        """(file, unified diff) of every changed file, saved -> working copy."""
        out = []
        for rel in self.changed_files():
            saved = self.saved / rel
            before = saved.read_text(encoding="utf-8").splitlines(keepends=True) if saved.exists() else []
            after = (self.work / rel).read_text(encoding="utf-8").splitlines(keepends=True)
            name = f"{self.display}/{rel}"
            text = "".join(difflib.unified_diff(before, after, f"{name} (saved)", f"{name} (working copy)"))
            out.append((rel, text))
        return out

    def save(self) -> tuple[list[str], str]:
        """Write the changed files into the policy folder; returns (files, new policy hash).

        Refused (WorkbenchError, one line) while the working copy has errors, when nothing changed, or
        when a file changed on disk since the workbench copied it.
        """
        with self.lock:
            check = self.check(warnings=False)
            if not check.ok:
                n = len(check.problems)
                raise WorkbenchError(f"not saved: the working copy has {n} error{'s' if n != 1 else ''} "
                                     f"(first: {check.problems[0].text})",
                                     hint="fix them; the policy folder is unchanged")
            changed = self.changed_files()
            if not changed:
                raise WorkbenchError("nothing to save: the working copy is the same as the policy folder")
            for rel in changed:
                on_disk = self.saved / rel
                now = _sha(on_disk.read_bytes()) if on_disk.exists() else None
                if now != self.snapshot.get(rel):
                    raise WorkbenchError(f"not saved: {self.display}/{rel} changed on disk since the workbench "
                                         f"opened it", hint="discard the working copy to start from the new "
                                                            "files, or merge by hand")
            for rel in changed:
                target = self.saved / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.workbench-tmp")
                shutil.copyfile(self.work / rel, tmp)
                os.replace(tmp, target)
                self.snapshot[rel] = _sha(target.read_bytes())
            return changed, check.policy_set.content_hash

    def discard(self) -> None:
        with self.lock:
            self._copy_from_saved()

    # ------------------------------------------------------------------------------------------
    @property
    def signoff_path(self) -> Path:
        return self.saved / SIGNOFF_FILE

    def signoffs(self) -> list[dict[str, Any]]:
        p = self.signoff_path
        if not p.exists():
            return []
        import yaml

        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise WorkbenchError(f"{self.display}/{SIGNOFF_FILE} is not valid YAML",
                                 hint="restore it from version control") from None
        return [d for d in (data or []) if isinstance(d, dict)]

    def sign_off(self, name: str, note: str, policy_hash: str | None = None) -> dict[str, Any]:
        """Append who approved the saved set's hash; refused for a set with errors or unsaved changes
        whose hash is not the one shown."""
        import yaml

        name = " ".join((name or "").split())
        note = " ".join((note or "").split())
        if not name:
            raise WorkbenchError("sign-off needs the approver's name")
        if len(name) > 120 or len(note) > 1000:
            raise WorkbenchError("sign-off name (120) or note (1000 characters) is too long")
        with self.lock:
            check = self.saved_check()
            if not check.ok:
                raise WorkbenchError(f"cannot sign off: the saved policy set has errors "
                                     f"(first: {check.problems[0].text})")
            current = check.policy_set.content_hash
            if policy_hash and policy_hash != current:
                raise WorkbenchError("cannot sign off: the saved policy set changed since this page was shown",
                                     hint="reload the sign-off page and check the hash again")
            self.signoffs()  # refuses a corrupted file before appending to it
            entry = {"name": name, "policy_hash": current,
                     "approved_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                     "note": note}
            text = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=4096)
            p = self.signoff_path
            new = not p.exists() or p.stat().st_size == 0
            with open(p, "a", encoding="utf-8") as fh:
                if new:
                    fh.write(SIGNOFF_HEADER)
                fh.write(text)
            return entry


# ---------------------------------------------------------------------------------------------
# Items (rules, offers, declared attributes) inside a file
# ---------------------------------------------------------------------------------------------
KINDS = ("rules", "offers", "attributes")


def items_of(data: Any, kind: str) -> list[Any]:
    seq = data.get(kind) if isinstance(data, dict) else None
    return seq if isinstance(seq, list) else []


def item_span(data: Any, kind: str, index: int, total_lines: int) -> tuple[int, int]:
    """First and last line (1-based) of item `index` of `kind` in a loaded file."""
    seq = items_of(data, kind)
    start = seq.lc.item(index)[0] + 1 if hasattr(seq, "lc") else 1
    end = seq.lc.item(index + 1)[0] if index + 1 < len(seq) else _end_of(data, kind, total_lines)
    return start, max(start, end)


def _end_of(data: Any, kind: str, total_lines: int) -> int:
    keys = list(data.keys())
    i = keys.index(kind)
    if i + 1 < len(keys):
        return data.lc.key(keys[i + 1])[0]
    return total_lines


def find_item(data: Any, line: int, total_lines: int) -> tuple[str, int] | None:
    """Which rule, offer or declared attribute holds `line`, as (kind, index)."""
    for kind in KINDS:
        for i in range(len(items_of(data, kind))):
            start, end = item_span(data, kind, i, total_lines)
            if start <= line <= end:
                return kind, i
    return None


def key_lines(item: Any) -> dict[str, int]:
    """Field path -> line (1-based) of every key of an item and of its when/then/eligibility mappings."""
    out: dict[str, int] = {}
    if not isinstance(item, CommentedMap):
        return out
    for k in item:
        out[str(k)] = item.lc.key(k)[0] + 1
        sub = item[k]
        if isinstance(sub, CommentedMap) and k in ("when", "then", "eligibility", "acceptance"):
            for sk in sub:
                out[f"{k}.{sk}"] = sub.lc.key(sk)[0] + 1
    return out


def deep_copy(v: Any) -> Any:
    return copy.deepcopy(v)
