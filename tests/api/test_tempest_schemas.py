"""tempest.lib's ServersClient and FlavorsClient (stub auth provider) against `unicell serve`:
every response is validated against Nova's strict response schemas, at 2.1 and at the highest
microversion the server advertises, as a member and as an admin, for ACTIVE servers and for a
server in ERROR with a fault."""

import time
from types import SimpleNamespace

import pytest
from tempest.lib import exceptions as lib_exc
from tempest.lib.services.compute import base_compute_client, flavors_client, servers_client

from conftest import IMAGE


class StubAuth:
    """The auth provider interface tempest's RestClient uses, for noauth2 tokens."""

    def __init__(self, endpoint, token):
        self.endpoint = endpoint
        self.token = token
        user, _, project = token.partition(":")
        project = project or user
        self.credentials = SimpleNamespace(user_id=user, tenant_id=project, project_id=project,
                                           username=user, tenant_name=project, project_name=project)

    def auth_request(self, method, url, headers=None, body=None, filters=None):
        headers = dict(headers or {})
        headers["X-Auth-Token"] = self.token
        return f"{self.endpoint}/{url}", headers, body

    def base_url(self, filters, auth_data=None):
        return self.endpoint


def max_version(serve):
    status, doc = serve.request("GET", "", token="demo")
    assert status == 200
    return doc["version"]["version"]


@pytest.fixture(params=["2.1", "max"])
def microversion(request, serve):
    v = max_version(serve) if request.param == "max" else request.param
    old = base_compute_client.COMPUTE_MICROVERSION
    base_compute_client.COMPUTE_MICROVERSION = v
    yield v
    base_compute_client.COMPUTE_MICROVERSION = old


def clients(serve, token):
    auth = StubAuth(serve.endpoint, token)
    return (servers_client.ServersClient(auth, "compute", "RegionOne"),
            flavors_client.FlavorsClient(auth, "compute", "RegionOne"))


def wait_status(servers, sid, want, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        s = servers.show_server(sid)["server"]
        if s["status"] in want:
            return s
        assert time.monotonic() < deadline, f"{sid} is {s['status']}"
        time.sleep(0.1)


def vtuple(v):
    major, minor = v.split(".")
    return int(major), int(minor)


@pytest.mark.parametrize("token", ["tempest:tproj", "admin"])
def test_servers_and_flavors_validate(serve, microversion, token):
    servers, flavors = clients(serve, token)
    extra = {"networks": "none"} if vtuple(microversion) >= (2, 37) else {}
    created = servers.create_server(name=f"tempest-{microversion}", imageRef=IMAGE, flavorRef="m1.small",
                                    **extra)["server"]
    active = wait_status(servers, created["id"], {"ACTIVE"})
    assert active["status"] == "ACTIVE"
    # A request that cannot be placed (1,000 m1.large need more than the 60 hosts hold):
    # all or nothing, so every instance ends in ERROR with a fault.
    failing = servers.create_server(name="tempest-novalid", imageRef=IMAGE, flavorRef="m1.large",
                                    min_count=1000, max_count=1000, **extra)["server"]
    errored = wait_status(servers, failing["id"], {"ACTIVE", "ERROR"})
    assert errored["status"] == "ERROR"
    listed = servers.list_servers(name=f"^tempest-{microversion}$")["servers"]
    assert [s["id"] for s in listed] == [created["id"]]
    detail = servers.list_servers(detail=True)["servers"]
    assert {s["status"] for s in detail} <= {"ACTIVE", "ERROR", "BUILD"}
    servers.list_servers(detail=True, limit=1)
    assert errored["fault"]["code"] == 500
    for f in flavors.list_flavors()["flavors"]:
        flavors.show_flavor(f["id"])
    flavors.list_flavors(detail=True)
    servers.delete_server(created["id"])
    with pytest.raises(lib_exc.NotFound):
        servers.show_server(created["id"])
