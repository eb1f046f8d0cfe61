"""Where this distribution's own files are (configs, bundled genomes).

Every Hydra app names its config directory through `CONFIG_PATH`, so the configs are
found where the package is installed, whatever the working directory holds.
"""

from __future__ import annotations

CONFIG_PATH = "pkg://conf"
