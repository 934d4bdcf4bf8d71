"""The Placement API on the shared stores (Redis, PostgreSQL, MariaDB): a provider tree, its
inventories, and many concurrent clients claiming through ``PUT /allocations/{consumer}`` on
two ``unicell serve`` replicas of one store. Capacity and generations are enforced by the
store, so the replicas together never allocate more than the inventory holds.

Stores come from ``$UNICELL_PLACEMENT_STORES`` (comma-separated URLs; default: the local
Redis, PostgreSQL and MariaDB of the test machine, each under a fresh prefix or database). A
store whose server does not answer is skipped with the reason; one that answers and
misbehaves fails.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import uuid

import pytest
import requests

from . import server as srv

ADMIN = {"X-Auth-Token": "admin", "OpenStack-API-Version": "placement 1.39"}
CAPACITY = 8          # VCPU on the compute node
CLIENTS = 40          # concurrent consumers, one VCPU each
RETRIES = 20          # a client retries 409 placement.concurrent_update, as nova's report client does


def _stores() -> list[str]:
    env = os.environ.get("UNICELL_PLACEMENT_STORES")
    if env:
        return [s for s in env.split(",") if s]
    tag = f"plc{uuid.uuid4().hex[:10]}"
    return [
        f"redis://127.0.0.1:6379/?prefix={tag}",
        f"postgres://postgres@127.0.0.1:5432/{tag}",
        f"mysql://root@127.0.0.1:3306/{tag}",
    ]


def _reachable(url: str) -> str | None:
    """None when the store's server accepts TCP connections, else why not."""
    port = {"redis": 6379, "postgres": 5432, "mysql": 3306}[url.split(":", 1)[0]]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return None
    except OSError as e:
        return f"{url.split(':', 1)[0]} on 127.0.0.1:{port} unreachable: {e}"


def _cleanup(url: str) -> None:
    """Best effort: remove what the run wrote (a Redis prefix, a database)."""
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    if url.startswith("redis") and "prefix=" in url and shutil.which("redis-cli"):
        prefix = url.split("prefix=", 1)[1].split("&")[0]
        keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{prefix}*"], capture_output=True,
                              text=True).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "del", *keys[i:i + 500]], capture_output=True)
    elif url.startswith("postgres") and shutil.which("psql"):
        for db in subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc",
                                  f"select datname from pg_database where datname like '{name}%'"],
                                 capture_output=True, text=True).stdout.split():
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'drop database "{db}"'],
                           capture_output=True)
    elif url.startswith("mysql") and shutil.which("mariadb"):
        for db in subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-N", "-e",
                                  f"show databases like '{name}%'"], capture_output=True, text=True).stdout.split():
            subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e", f"drop database `{db}`"], capture_output=True)


@pytest.fixture(scope="module", params=_stores(), ids=lambda u: u.split(":", 1)[0])
def replicas(request, tmp_path_factory):
    url = request.param
    why = _reachable(url)
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("placement-stores")
    servers = []
    try:
        for i in range(2):
            servers.append(srv.Server(url, log_path=str(tmp / f"serve-{i}.log")).start(timeout=120))
        yield [s.url for s in servers]
    finally:
        for s in servers:
            s.stop()
        _cleanup(url)


def _call(base: str, method: str, path: str, body=None):
    r = requests.request(method, base + path, json=body, headers=ADMIN, timeout=60)
    return r.status_code, (r.json() if r.content else None)


def _claim(base: str, root: str, consumer: str) -> str:
    """One client: PUT its allocation, retrying lost generation races. 'won' or 'full'."""
    body = {
        "allocations": {root: {"resources": {"VCPU": 1, "MEMORY_MB": 256}}},
        "project_id": "p-stores", "user_id": "u-stores", "consumer_generation": None,
        "consumer_type": "INSTANCE",
    }
    for _ in range(RETRIES):
        status, out = _call(base, "PUT", f"/allocations/{consumer}", body)
        if status == 204:
            return "won"
        assert status == 409, f"PUT /allocations/{consumer}: {status} {out}"
        code = out["errors"][0].get("code")
        if code != "placement.concurrent_update":
            return "full"
    return "gave up"


def test_concurrent_puts_never_overcommit(replicas):
    a, b = replicas
    root, numa, pf = (str(uuid.uuid4()) for _ in range(3))
    tag = uuid.uuid4().hex[:8]
    for rp, name, parent in ((root, f"cn-{tag}", None), (numa, f"cn-{tag}-numa0", root), (pf, f"cn-{tag}-pf", numa)):
        body = {"uuid": rp, "name": name}
        if parent:
            body["parent_provider_uuid"] = parent
        status, out = _call(a, "POST", "/resource_providers", body)
        assert status == 200, out
    status, out = _call(b, "PUT", f"/resource_providers/{root}/inventories", {
        "resource_provider_generation": 0,
        "inventories": {"VCPU": {"total": CAPACITY}, "MEMORY_MB": {"total": 65536}},
    })
    assert status == 200, out
    status, out = _call(a, "PUT", f"/resource_providers/{pf}/inventories", {
        "resource_provider_generation": 0, "inventories": {"SRIOV_NET_VF": {"total": 4}},
    })
    assert status == 200, out
    status, tree = _call(b, "GET", f"/resource_providers?in_tree={pf}")
    assert status == 200 and {p["uuid"] for p in tree["resource_providers"]} == {root, numa, pf}

    consumers = [str(uuid.uuid4()) for _ in range(CLIENTS)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        outcomes = list(pool.map(lambda ic: _claim((a, b)[ic[0] % 2], root, ic[1]), enumerate(consumers)))
    winners = [c for c, o in zip(consumers, outcomes) if o == "won"]
    print(f"{len(winners)} won, {outcomes.count('full')} refused over capacity, "
          f"{outcomes.count('gave up')} gave up after {RETRIES} lost races")
    assert len(winners) <= CAPACITY, f"{len(winners)} consumers hold 1 VCPU each on {CAPACITY} VCPUs"
    assert len(winners) == CAPACITY, f"retrying clients should fill the node, got {outcomes}"

    # Every replica sees the same usage, and it is exactly what the winners hold.
    for base in (a, b):
        status, out = _call(base, "GET", f"/resource_providers/{root}/usages")
        assert status == 200 and out["usages"]["VCPU"] == len(winners), out
        assert out["usages"]["MEMORY_MB"] == 256 * len(winners), out
        status, out = _call(base, "GET", f"/resource_providers/{root}/allocations")
        assert status == 200 and set(out["allocations"]) == set(winners), out
    status, out = _call(a, "GET", "/usages?project_id=p-stores")  # grouped by consumer type (1.38)
    assert status == 200 and out["usages"]["INSTANCE"]["VCPU"] == len(winners), out
    assert out["usages"]["INSTANCE"]["consumer_count"] == len(winners), out
    for c in winners:
        status, out = _call(b, "GET", f"/allocations/{c}")
        assert status == 200 and out["consumer_generation"] == 1, out
        assert out["allocations"][root]["resources"] == {"VCPU": 1, "MEMORY_MB": 256}, out

    # A stale consumer generation is refused; the right one replaces; DELETE frees.
    c = winners[0]
    status, out = _call(a, "PUT", f"/allocations/{c}", {
        "allocations": {root: {"resources": {"VCPU": 2}}}, "project_id": "p-stores",
        "user_id": "u-stores", "consumer_generation": 0, "consumer_type": "INSTANCE"})
    assert status == 409 and out["errors"][0]["code"] == "placement.concurrent_update", out
    status, out = _call(b, "PUT", f"/allocations/{c}", {
        "allocations": {root: {"resources": {"VCPU": 2}}}, "project_id": "p-stores",
        "user_id": "u-stores", "consumer_generation": 1, "consumer_type": "INSTANCE"})
    assert status == 409, "growing to 2 VCPUs on a full node must be refused"
    status, _ = _call(b, "DELETE", f"/allocations/{winners[1]}")
    assert status == 204
    status, out = _call(a, "GET", f"/resource_providers/{root}/usages")
    assert out["usages"]["VCPU"] == CAPACITY - 1, out
    status, out = _call(a, "DELETE", f"/resource_providers/{root}")
    assert status == 409, "a provider with allocations (and children) cannot be deleted"
