"""Placement's own functional tests, taken from the pinned ``openstack-placement`` wheel.

The gabbi YAML files ship inside the wheel (``placement/tests/functional/gabbits/``). They are
fetched with ``pip download --no-deps`` (the package index is the only network the tests use)
into ``target/placement-gabbits/<version>/`` and extracted once; later runs reuse the copy.
Only the YAML files are used: Placement's Python code is never installed or imported.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

#: The Placement release whose functional tests unicell is held to (2025.2 "Flamingo").
PLACEMENT_VERSION = "16.0.0"

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
CACHE = REPO_ROOT / "target" / "placement-gabbits" / PLACEMENT_VERSION
GABBITS_PREFIX = "placement/tests/functional/gabbits/"


def gabbits_dir() -> pathlib.Path:
    """The directory holding every upstream gabbi file, downloading the wheel if needed."""
    out = CACHE / "gabbits"
    if (out / "resource-provider.yaml").is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = list(CACHE.glob("openstack_placement-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "-d", str(CACHE),
                f"openstack-placement=={PLACEMENT_VERSION}",
            ],
            check=True,
        )
        wheels = list(CACHE.glob("openstack_placement-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one openstack-placement wheel in {CACHE}, found {wheels}")
    tmp = CACHE / "gabbits.tmp"
    tmp.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as z:
        for name in z.namelist():
            if name.startswith(GABBITS_PREFIX) and name.endswith(".yaml"):
                (tmp / name[len(GABBITS_PREFIX):]).write_bytes(z.read(name))
    tmp.rename(out)
    return out
