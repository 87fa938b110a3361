"""The model's code as a module of its own, named by its content, for `mlflow.pyfunc.log_model(code_paths=...)`.

Why a copy under a hashed name: MLflow puts a model's `code_paths` folder on `sys.path` and unpickles
the python model by module name, and Python caches modules in `sys.modules` by name. Logged as
`engine.model.portable`, two model versions loaded in one process (champion and challenger) would share
whichever code was imported first, and the artefact would still need `engine` installed. Logged as
`retain_churn_<sha256 of the package's source, 10 hex>`, a model never depends on `engine`, versions
with different code each import their own module, and versions with equal code share one module
harmlessly (same name, same bytes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

import engine.model.portable as portable

PORTABLE_DIR = Path(portable.__file__).resolve().parent
MODULE_PREFIX = "retain_churn_"
#: What the portable package imports (see its `__init__`), plus cloudpickle, which reads the pickled
#: python model. mlflow-skinny is enough to load and predict with a pyfunc; `mlflow` is named when
#: mlflow-skinny is not installed on its own.
REQUIREMENTS = ("mlflow-skinny", "cloudpickle", "catboost", "pandas", "numpy")


def source_files(folder: Path = PORTABLE_DIR) -> list[Path]:
    """The package's Python sources, in a stable order (caches and other files do not count)."""
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def code_hash(folder: Path = PORTABLE_DIR) -> str:
    """sha256 over each source file's relative path and bytes, 10 hex digits."""
    digest = hashlib.sha256()
    for path in source_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def module_name(folder: Path = PORTABLE_DIR) -> str:
    return f"{MODULE_PREFIX}{code_hash(folder)}"


def stage(dest: Path, folder: Path = PORTABLE_DIR) -> tuple[Path, ModuleType]:
    """Copy the package to `dest/<module name>` and import it from there.

    Returns (the copied package folder, for `code_paths`; the imported module, whose `ChurnModel` is
    the class to log). When a module of that name is already imported (this code was logged or loaded
    before in this process), it is reused: equal name means equal source.
    """
    return copy_and_import(dest, module_name(folder),
                           [(path.relative_to(folder), path) for path in source_files(folder)])


def copy_and_import(dest: Path, name: str, sources: list[tuple[Path, Path]]) -> tuple[Path, ModuleType]:
    """Copy (relative path, source file) pairs to dest/<name> and import that folder as module `name`.

    The module name carries the code's hash, so importing it here is importing exactly the code the model
    will carry; a module of that name already imported is that same code.
    """
    target = dest / name
    target.mkdir(parents=True, exist_ok=True)
    for rel, path in sources:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / rel)
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, target / "__init__.py",
                                                      submodule_search_locations=[str(target)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return target, module


def requirements() -> list[str]:
    """`name==installed version` for exactly what the model's code needs to load and predict."""
    return pins(REQUIREMENTS)


def pins(names: tuple[str, ...] | list[str]) -> list[str]:
    """`name==installed version` for each name (mlflow-skinny falls back to mlflow when only that is installed)."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            if name != "mlflow-skinny":
                raise
            out.append(f"mlflow=={version('mlflow')}")
    return out
