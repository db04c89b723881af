"""Fixtures: a peer process (python/tests/peer.py) connected to an engine in the test process."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import zcx
from common import POISON, engine_options

HERE = os.path.dirname(os.path.abspath(__file__))


class Peer:
    """The other process: a listening engine driven by JSON commands; `conn` is our connection
    to it (the peer holds the accepted side)."""

    def __init__(self, transport, kind, connect=True):
        self.transport, self.kind = transport, kind
        env = dict(os.environ)  # the peer imports the same zcx package as we do
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(zcx.__file__))), HERE]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "peer.py"), transport, kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=HERE, env=env)
        self.address = self._read()["addr"]
        self.engine = zcx.Engine(**engine_options(transport))
        self.conn = None
        if connect:
            self.conn = self.engine.connect(self.address)
            self.call(op="accept")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited (code {self.proc.wait(10)})")
        return json.loads(line)

    def call(self, **command):
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        r = self._read()
        if "error" in r:
            raise AssertionError(f"peer: {r['error']}")
        return r

    def start(self, **command):
        """Sends a command without waiting for its reply (finish() reads it)."""
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def finish(self):
        r = self._read()
        if "error" in r:
            raise AssertionError(f"peer: {r['error']}")
        return r

    def region(self, name, size, access):
        self.call(op="region", name=name, size=size, access=int(access))
        if access == zcx.Access.LocalOnly:
            return None  # peers cannot look a local-only region up
        return self.conn.remote_region(name)

    def dump(self, name):
        return np.frombuffer(base64.b64decode(self.call(op="dump", name=name)["data"]), np.uint8)

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            assert self.proc.wait(timeout=30) == 0, "peer exited with an error"
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.engine.close()


def decode(data):
    return np.frombuffer(base64.b64decode(data), np.uint8)


def assert_bytes(actual, expected, what):
    """Byte-by-byte comparison that names the first difference."""
    actual, expected = np.asarray(actual, np.uint8), np.asarray(expected, np.uint8)
    assert actual.shape == expected.shape, f"{what}: {actual.size} bytes, expected {expected.size}"
    bad = np.flatnonzero(actual != expected)
    assert bad.size == 0, (f"{what}: {bad.size} bytes differ, first at {bad[0]} "
                           f"(got {actual[bad[0]]:#x}, expected {expected[bad[0]]:#x})")


@pytest.fixture(scope="module", params=["tcp", "shm"])
def transport(request):
    return request.param


@pytest.fixture(scope="module", params=["numpy", "torch"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def peer(transport, kind):
    p = Peer(transport, kind)
    yield p
    p.close()


@pytest.fixture
def tcp_peer():
    """A fresh numpy peer over TCP, for tests that close or break their connection."""
    p = Peer("tcp", "numpy")
    yield p
    p.close()


def local_buffer(kind, n, fill=POISON):
    """(object to register, numpy view of the same memory)."""
    if kind == "torch":
        import torch
        t = torch.full((n,), fill, dtype=torch.uint8)
        return t, t.numpy()
    a = np.full(n, fill, dtype=np.uint8)
    return a, a
