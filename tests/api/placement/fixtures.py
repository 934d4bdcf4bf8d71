"""gabbi fixtures for Placement's functional tests against a real ``unicell serve``.

Placement runs its gabbi files in-process with a fresh database per file (its ``APIFixture``).
Here each YAML file gets a fresh ``unicell serve`` process on the embedded store (or the store
named by ``$UNICELL_GABBI_STORE``), listening on the port the test generator was given
(``$UNICELL_GABBI_PORT``), and the same environment variables as upstream's fixture.

Fixtures that upstream fills with rows through Placement's Python objects (``AllocationFixture``)
are filled here through the HTTP API instead, as an operator would: the data is the same.
"""

from __future__ import annotations

import os
import uuid

import requests
from gabbi import fixture

from . import server as srv

ADMIN = {"x-auth-token": "admin", "openstack-api-version": "placement latest",
         "content-type": "application/json", "accept": "application/json"}


def _uuid() -> str:
    return str(uuid.uuid4())


class APIFixture(fixture.GabbiFixture):
    """A fresh server and upstream's environment variables."""

    def start_fixture(self):
        port = int(os.environ["UNICELL_GABBI_PORT"])
        store = os.environ.get("UNICELL_GABBI_STORE", "memory://")
        log = os.environ.get("UNICELL_GABBI_LOG")
        self.server = srv.Server(store, placement_port=port, log_path=log).start()
        for name in ("RP_UUID", "RP_NAME", "RP_UUID1", "RP_NAME1", "RP_UUID2", "RP_NAME2",
                     "PROJECT_ID", "ADMIN_PROJECT_ID", "SERVICE_PROJECT_ID", "USER_ID",
                     "PROJECT_ID_ALT", "USER_ID_ALT", "INSTANCE_UUID", "MIGRATION_UUID",
                     "CONSUMER_UUID", "PARENT_PROVIDER_UUID", "ALT_PARENT_PROVIDER_UUID"):
            os.environ[name] = _uuid()
        os.environ["CUSTOM_RES_CLASS"] = "CUSTOM_IRON_NFV"
        os.environ["CUSTOM_RES_CLASS1"] = "CUSTOM_IRON_NFV1"
        os.environ["CUSTOM_RES_CLASS2"] = "CUSTOM_IRON_NFV2"

    def stop_fixture(self):
        self.server.stop()

    # ---- helpers for fixtures that start with data -------------------------------------

    def _call(self, method: str, path: str, body=None, expect=(200, 201, 204)):
        r = requests.request(method, self.server.url + path, json=body, headers=ADMIN, timeout=10)
        if r.status_code not in expect:
            raise RuntimeError(f"fixture setup {method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def create_provider(self, name: str, uuid_: str | None = None, parent: str | None = None,
                        aggregates=()) -> str:
        body = {"name": name, "uuid": uuid_ or _uuid()}
        if parent:
            body["parent_provider_uuid"] = parent
        rp = self._call("POST", "/resource_providers", body)
        if aggregates:
            self._call("PUT", f"/resource_providers/{rp['uuid']}/aggregates",
                       {"aggregates": list(aggregates), "resource_provider_generation": rp["generation"]})
        return rp["uuid"]

    def _generation(self, rp: str) -> int:
        return self._call("GET", f"/resource_providers/{rp}")["generation"]

    def add_inventory(self, rp: str, rc: str, total: int, **kw) -> None:
        current = self._call("GET", f"/resource_providers/{rp}/inventories")
        invs = current["inventories"]
        invs[rc] = dict(total=total, **kw)
        self._call("PUT", f"/resource_providers/{rp}/inventories",
                   {"inventories": invs, "resource_provider_generation": current["resource_provider_generation"]})

    def set_traits(self, rp: str, *traits: str) -> None:
        for t in traits:
            if t.startswith("CUSTOM_"):
                self._call("PUT", f"/traits/{t}")
        self._call("PUT", f"/resource_providers/{rp}/traits",
                   {"traits": list(traits), "resource_provider_generation": self._generation(rp)})

    def set_allocation(self, consumer: str, project: str, user: str, allocs: dict) -> None:
        """Allocations as upstream's fixture writes them: a consumer without a type (1.37)."""
        r = requests.put(self.server.url + f"/allocations/{consumer}", json={
            "allocations": {rp: {"resources": res} for rp, res in allocs.items()},
            "project_id": project, "user_id": user, "consumer_generation": None},
            headers={**ADMIN, "openstack-api-version": "placement 1.37"}, timeout=10)
        if r.status_code != 204:
            raise RuntimeError(f"fixture setup PUT /allocations/{consumer}: {r.status_code} {r.text}")


class AllocationFixture(APIFixture):
    """Upstream's AllocationFixture: one provider (VCPU 10, DISK_GB 2048) and three consumers."""

    def start_fixture(self):
        super().start_fixture()
        os.environ["ALT_USER_ID"] = _uuid()
        project, user, alt_user = os.environ["PROJECT_ID"], os.environ["USER_ID"], os.environ["ALT_USER_ID"]
        rp = self.create_provider(os.environ["RP_NAME"], os.environ["RP_UUID"])
        self.add_inventory(rp, "DISK_GB", 2048, step_size=10, min_unit=10, max_unit=1000)
        self.add_inventory(rp, "VCPU", 10, max_unit=10)
        os.environ["CONSUMER_0"] = c0 = _uuid()
        self.set_allocation(c0, project, user, {rp: {"DISK_GB": 1000}})
        os.environ["CONSUMER_ID"] = c1 = _uuid()
        self.set_allocation(c1, project, user, {rp: {"VCPU": 6}})
        os.environ["ALT_CONSUMER_ID"] = c2 = _uuid()
        self.set_allocation(c2, project, alt_user, {rp: {"DISK_GB": 20, "VCPU": 1}})
        os.environ["ALT_RP_UUID"] = _uuid()
        os.environ["ALT_RP_NAME"] = _uuid()
