"""The `openstack` CLI with a clouds.yaml (`auth_type: none`, an identity version document,
`has_image: false`): server list --limit/--marker, server show, server delete, flavor list."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import create_many, wait_settled


@pytest.fixture(scope="module")
def osc(serve, tmp_path_factory):
    d = tmp_path_factory.mktemp("osc")
    (d / "clouds.yaml").write_text(
        "clouds:\n"
        "  unicell:\n"
        "    auth_type: none\n"
        "    auth:\n"
        f"      endpoint: {serve.base}\n"
        f"    compute_endpoint_override: {serve.endpoint}\n"
        f"    identity_endpoint_override: {serve.base}/identity/v3\n"
        "    has_image: false\n"
    )
    exe = str(Path(sys.executable).with_name("openstack"))

    def run(*args):
        env = dict(os.environ, OS_CLOUD="unicell")
        p = subprocess.run([exe, *args], cwd=d, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"openstack {' '.join(args)}: {p.stderr}"
        return p.stdout

    create_many(serve, 12, token="notused", name="osc")
    wait_settled(serve, token="notused")
    return run


def test_flavor_list(osc):
    flavors = json.loads(osc("flavor", "list", "-f", "json"))
    names = {f["Name"] for f in flavors}
    assert {"m1.small", "m1.medium", "m1.large"} <= names


def test_server_list_limit_and_marker(osc):
    everything = json.loads(osc("server", "list", "-f", "json"))
    assert len(everything) == 12
    first = json.loads(osc("server", "list", "--limit", "5", "-f", "json"))
    assert [s["ID"] for s in first] == [s["ID"] for s in everything[:5]]
    rest = json.loads(osc("server", "list", "--limit", "5", "--marker", first[-1]["ID"], "-f", "json"))
    assert [s["ID"] for s in rest] == [s["ID"] for s in everything[5:10]]


def test_server_show_and_delete(osc):
    victim = json.loads(osc("server", "list", "--limit", "1", "-f", "json"))[0]
    shown = json.loads(osc("server", "show", victim["ID"], "-f", "json"))
    assert shown["id"] == victim["ID"] and shown["status"] == "ACTIVE"
    osc("server", "delete", "--wait", victim["ID"])
    after = json.loads(osc("server", "list", "-f", "json"))
    assert victim["ID"] not in {s["ID"] for s in after}
    assert len(after) == 11
