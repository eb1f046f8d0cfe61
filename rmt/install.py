"""Where this distribution's own files are, and a guard against packages that shadow them.

rmt-dna installs `rmt` beside five top-level packages with common names: `data`, `conf`,
`kernels`, `curriculum` and `benchmarks`. A user's own `data/` or `conf.py` in the working
directory comes first on `sys.path` under `python -m rmt.train` (and `torchrun -m`), and
would be imported in place of ours; Hydra's `pkg://conf` would even read the user's
configs. So the configs are found by absolute path beside this package (the checkout
for an editable install, site-packages for a wheel), never through `sys.path`, and
`check_packages()`, run first by `import rmt`, stops with one line naming the file that
shadows a package and the fix, before anything imports the wrong one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
"""The directory that holds this distribution's top-level packages."""
CONFIG_DIR = ROOT / "conf"
CONFIG_PATH = str(CONFIG_DIR)
"""For `@hydra.main(config_path=...)` and `hydra.initialize_config_dir(...)`."""
GUARDED_PACKAGES = ("data", "conf", "kernels", "curriculum", "benchmarks")


class ShadowedPackageError(ImportError):
    """Python would import one of this distribution's packages from somewhere else."""


def import_location(name: str) -> Path | None:
    """The file (or, for a namespace package, the directory) `import name` would load.

    `find_spec` returns the module already imported when there is one, and otherwise
    asks the import system without executing anything.
    """
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.origin is not None and spec.has_location:
        return Path(spec.origin).resolve()
    return Path(next(iter(spec.submodule_search_locations or []), name)).resolve()


def shadowing_message(name: str, found: Path | None) -> str:
    """One line: which file shadows which package, and how to get ours back."""
    if found is None:
        return f"rmt-dna's `{name}` package is missing from {ROOT}: reinstall rmt-dna"
    return f"{found} shadows rmt-dna's `{name}` package ({ROOT / name}): {shadowing_fix(found)}"


def shadowing_fix(found: Path) -> str:
    """The fix for how `found` came first: the working directory, PYTHONPATH, or installed."""
    first = Path(sys.path[0] or ".").resolve() if sys.path else None
    if first == Path.cwd().resolve() and found.is_relative_to(first):
        return (
            "run from another directory, rename it, or use the console script (`rmt-train`, "
            "`torchrun --no-python ... rmt-train`): `python -m` puts the working directory "
            "first on sys.path"
        )
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if any(found.is_relative_to(Path(entry).resolve()) for entry in pythonpath):
        return "rename it, or take its directory off PYTHONPATH"
    return "rename or remove it (or uninstall the distribution that installed it)"


def check_packages() -> None:
    """Raise ShadowedPackageError unless every guarded package resolves to ours."""
    for name in GUARDED_PACKAGES:
        found = import_location(name)
        if found is None or found.parent != ROOT / name or found.stem != "__init__":
            install_one_line_report()
            raise ShadowedPackageError(shadowing_message(name, found))


def install_one_line_report() -> None:
    """Make an uncaught ShadowedPackageError print one line and exit 2, as user errors do.

    It is raised while a command line app is still importing, before the app's own error
    handling exists. Other exceptions, and RMT_DEBUG=1, keep the previous hook.
    """
    previous = sys.excepthook

    def report(kind: type[BaseException], error: BaseException, traceback: TracebackType) -> None:
        if not issubclass(kind, ShadowedPackageError) or os.environ.get("RMT_DEBUG"):
            previous(kind, error, traceback)
            return
        print(f"rmt-dna: error: {error} (RMT_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)  # raised from the hook, SystemExit sets the exit status

    sys.excepthook = report
