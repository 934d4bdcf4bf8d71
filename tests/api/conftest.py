"""Fixtures for the Nova API tests: a real `unicell serve` process on a free loopback port.

The binary is $UNICELL_BIN (default target/debug/unicell, built by `cargo build`); each test
module gets its own server on the embedded store with in-process simulated computes, so
modules do not see each other's servers.
"""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "70a599e0-31e7-49b7-b260-868f441e862b"


def unicell_bin():
    path = Path(os.environ.get("UNICELL_BIN", ROOT / "target" / "debug" / "unicell"))
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo build` first (or set UNICELL_BIN)")
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """A running `unicell serve`."""

    def __init__(self, tmp, computes=60, store="memory://", extra=()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.base}/v2.1"
        self.log = open(tmp / f"serve-{self.port}.log", "w")
        cmd = [unicell_bin(), "--store", store, "serve", "--listen", f"127.0.0.1:{self.port}",
               "--computes", str(computes), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"unicell serve exited with {self.proc.returncode}; log: {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + "/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"unicell serve did not answer within 60 s; log: {self.log.name}")
            time.sleep(0.1)

    def request(self, method, path, body=None, token="demo:demo", headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        req.add_header("X-Auth-Token", token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    s = Serve(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


def create_many(serve, count, token="demo:demo", name="vm", per_request=500):
    """Creates `count` servers with multi-create requests (at most `per_request` each)."""
    left = count
    while left > 0:
        n = min(left, per_request)
        body = {"server": {"name": name, "imageRef": IMAGE, "flavorRef": "m1.small",
                           "min_count": n, "max_count": n}}
        status, out = serve.request("POST", "/servers", body, token=token)
        assert status == 202, out
        left -= n


def wait_settled(serve, token="demo:demo", timeout=120):
    """Waits until no server of the caller's project is in BUILD; returns the detailed list."""
    deadline = time.monotonic() + timeout
    while True:
        servers = []
        path = "/servers/detail?limit=1000"
        while True:
            status, out = serve.request("GET", path, token=token)
            assert status == 200, out
            servers += out["servers"]
            links = out.get("servers_links")
            if not links:
                break
            path = "/servers/detail?" + links[0]["href"].split("?", 1)[1]
        if all(s["status"] != "BUILD" for s in servers):
            return servers
        if time.monotonic() > deadline:
            pytest.fail(f"{sum(s['status'] == 'BUILD' for s in servers)} servers still BUILD")
        time.sleep(0.2)
