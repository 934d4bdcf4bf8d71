"""openstacksdk against `unicell serve`: discovery, create, paging 2,500 servers with
limit=100 (every server once, newest first), show, delete."""

import openstack
import pytest

from conftest import IMAGE, create_many, wait_settled

TOTAL = 2500


@pytest.fixture(scope="module")
def conn(serve):
    return openstack.connection.Connection(auth_type="none", compute_endpoint_override=serve.endpoint)


def test_create_wait_show(conn):
    s = conn.compute.create_server(name="sdk-one", flavor_id="m1.small", image_id=IMAGE, networks="none")
    s = conn.compute.wait_for_server(s, wait=60)
    assert s.status == "ACTIVE"
    shown = conn.compute.get_server(s.id)
    assert shown.name == "sdk-one"
    assert shown.image.id == IMAGE
    assert shown.flavor.original_name == "m1.small"
    conn.compute.delete_server(s)
    conn.compute.wait_for_delete(s, wait=30)


def test_paging_2500_servers_every_one_once_newest_first(serve, conn):
    # The SDK's token is 'notused': project 'notused'.
    create_many(serve, TOTAL, token="notused", name="page")
    settled = wait_settled(serve, token="notused")
    assert len(settled) == TOTAL
    assert all(s["status"] == "ACTIVE" for s in settled), {s["status"] for s in settled}
    listed = list(conn.compute.servers(details=True, paginated=True, limit=100))
    ids = [s.id for s in listed]
    assert len(ids) == TOTAL
    assert len(set(ids)) == TOTAL, "a server was listed twice"
    assert set(ids) == {s["id"] for s in settled}
    # Newest first: creation times never increase along the listing, and the listing is
    # the server's own order (the detail list without paging).
    created = [s.created_at for s in listed]
    assert created == sorted(created, reverse=True)
    assert ids == [s["id"] for s in settled]


def test_show_and_delete_through_the_sdk(conn):
    first = next(iter(conn.compute.servers(limit=1)))
    shown = conn.compute.get_server(first.id)
    assert shown.id == first.id and shown.status == "ACTIVE"
    conn.compute.delete_server(first.id)
    conn.compute.wait_for_delete(shown, wait=30)
    assert first.id not in {s.id for s in conn.compute.servers(paginated=True, limit=1000)}
