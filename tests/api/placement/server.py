"""Starting and stopping ``unicell serve`` for the Placement tests.

Every test module starts real ``unicell serve`` processes (never an in-process fake) on loopback
ports and stops them when done. The binary is ``$UNICELL_BIN`` when set, else the debug build
(``target/debug/unicell``), built by the caller (``.ci/run`` builds it before pytest).
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import requests

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def unicell_bin() -> str:
    """Path of the ``unicell`` binary the tests run."""
    env = os.environ.get("UNICELL_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = REPO_ROOT / "target" / profile / "unicell"
        if p.is_file():
            return str(p)
    raise RuntimeError("no unicell binary: run `cargo build` first or set UNICELL_BIN")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``unicell serve`` process with its Placement listener on ``placement_port``."""

    def __init__(self, store: str, placement_port: int | None = None, log_path: str | None = None,
                 extra: tuple[str, ...] = ()):
        self.store = store
        self.extra = extra
        self.placement_port = placement_port or free_port()
        self.nova_port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        """Base URL of the Placement API."""
        return f"http://127.0.0.1:{self.placement_port}"

    def start(self, timeout: float = 30.0) -> "Server":
        cmd = [
            unicell_bin(), "serve",
            "--store", self.store,
            "--listen", f"127.0.0.1:{self.nova_port}",
            "--placement-listen", f"127.0.0.1:{self.placement_port}",
            *self.extra,
        ]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unicell serve exited with {self.proc.returncode} (log: {self.log_path})")
            try:
                if requests.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"unicell serve did not answer on {self.url} within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
