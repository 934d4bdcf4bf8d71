"""python-novaclient's Python API: limit=-1 loops on the marker until an empty page."""

from keystoneauth1 import noauth, session
from novaclient import client

from conftest import create_many, wait_settled


def test_list_everything_with_limit_minus_one(serve):
    create_many(serve, 1100, token="notused", name="nc")
    settled = wait_settled(serve, token="notused")
    sess = session.Session(auth=noauth.NoAuth())
    nova = client.Client("2.1", session=sess, endpoint_override=serve.endpoint)
    servers = nova.servers.list(limit=-1)
    ids = [s.id for s in servers]
    assert len(ids) == 1100 == len(set(ids))
    assert ids == [s["id"] for s in settled]
    flavors = nova.flavors.list()
    assert "m1.small" in {f.name for f in flavors}
    one = nova.servers.get(ids[0])
    assert one.status == "ACTIVE"
