"""osc-placement through the `openstack` CLI against `unicell serve` (auth_type none).

The CLI negotiates the Placement microversion itself (it starts at its own maximum and, on a
406, retries at the server's `max_version`), then lists providers, sets and lists inventories,
and asks for allocation candidates: the commands an operator runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from . import server as srv


def _openstack() -> str:
    exe = pathlib.Path(sys.executable).parent / "openstack"
    if not exe.exists():
        pytest.fail(f"{exe} not found: run the tests from tests/api/venv.sh's virtualenv")
    return str(exe)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("osc")
    # auth_type none makes the CLI send the token `notused`, which Placement's default
    # (admin-only) policy refuses: this server lets any authenticated caller in.
    with srv.Server("memory://", log_path=str(tmp / "serve.log"),
                    extra=("--placement-policy", "authenticated")) as s:
        clouds = tmp / "clouds.yaml"
        clouds.write_text(
            "clouds:\n  unicell:\n    auth_type: none\n"
            f"    auth:\n      endpoint: {s.url}\n"
            "    region_name: RegionOne\n")
        env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds), "OS_CLOUD": "unicell"}
        env.pop("OS_AUTH_URL", None)

        def run(*args: str):
            p = subprocess.run([_openstack(), *args, "-f", "json"], env=env, capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 0, f"openstack {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
            print(f"$ openstack {' '.join(args)} -f json\n{p.stdout}")
            return json.loads(p.stdout) if p.stdout.strip() else None

        yield run


def test_provider_inventory_and_candidates(cli):
    names = [f"cn-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    created = [cli("resource", "provider", "create", n) for n in names]
    listed = cli("resource", "provider", "list")
    assert {p["name"] for p in listed} >= set(names)
    assert all(p["generation"] == 0 for p in created)

    rp = created[0]["uuid"]
    cli("resource", "provider", "inventory", "set", rp, "--resource", "VCPU=8",
        "--resource", "MEMORY_MB=4096", "--resource", "VCPU:allocation_ratio=2.0")
    inventories = {i["resource_class"]: i for i in cli("resource", "provider", "inventory", "list", rp)}
    assert inventories["VCPU"]["total"] == 8
    assert inventories["VCPU"]["allocation_ratio"] == 2.0
    assert inventories["MEMORY_MB"]["total"] == 4096

    candidates = cli("allocation", "candidate", "list", "--resource", "VCPU=1")
    assert len(candidates) == 1, candidates
    assert rp in json.dumps(candidates)
    # The provider without inventory is never a candidate; one asking too much finds none.
    assert cli("allocation", "candidate", "list", "--resource", "VCPU=17") == []
