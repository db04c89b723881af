"""Scoped exposure: a narrower access than the region's and an allow-list of peer names."""
import time

import numpy as np
import pytest

import zcx
from common import engine_options


def named(name, listen=False):
    return zcx.Engine(**engine_options("tcp"), name=name,
                      listen_address="127.0.0.1:0" if listen else "")


def test_read_only_view_for_alice_alone():
    with named("owner", listen=True) as owner, named("alice") as alice, \
            named("mallory") as mallory:
        data = np.arange(8192, dtype=np.uint8)
        region = owner.register(data, zcx.Access.RemoteReadWrite)
        owner.expose("view", region, access=zcx.Access.RemoteRead, peers=["alice"])
        a = alice.connect(owner.listen_address)
        accepted = [owner.accept(timeout=10)]  # held: a dropped Connection closes
        m = mallory.connect(owner.listen_address)
        accepted.append(owner.accept(timeout=10))

        with pytest.raises(zcx.Error) as e:  # outside the list: the name does not exist
            m.remote_region("view", timeout=2)
        assert e.value.code == zcx.StatusCode.NotFound

        view = a.remote_region("view", timeout=5)
        out = alice.register(np.zeros(8192, np.uint8))
        a.read(out, 0, view, 0, 8192).wait(timeout=20)
        assert (out.obj == data).all()
        with pytest.raises(zcx.Error) as e:  # read-only, although the region is read-write
            a.write(out, 0, view, 0, 8192).wait(timeout=10)
        assert e.value.code == zcx.StatusCode.PermissionDenied

        owner.unexpose("view")
        with pytest.raises(zcx.Error) as e:  # what unexpose revoked stays revoked
            a.read(out, 0, view, 0, 8192).wait(timeout=20)
        assert e.value.code == zcx.StatusCode.RemoteAccessError


def test_expose_checks_its_options():
    with named("owner") as owner:
        ro = owner.register(np.zeros(4096, np.uint8), zcx.Access.RemoteRead)
        with pytest.raises(zcx.Error) as e:  # more than the registration grants
            owner.expose("x", ro, access=zcx.Access.RemoteWrite)
        assert e.value.code == zcx.StatusCode.InvalidArgument
        with pytest.raises(zcx.Error) as e:
            owner.expose("x", ro, peers=[""])
        assert e.value.code == zcx.StatusCode.InvalidArgument


def test_a_listed_peer_hears_that_a_keyless_scoped_exposure_went():
    """A local-only exposure has no grant; alice must still hear of its unexpose, or her cached
    keyless descriptor would shadow the name's next exposure."""
    with named("owner", listen=True) as owner, named("alice") as alice:
        meta = owner.register(np.zeros(64, np.uint8))  # LocalOnly: name and size, no key
        owner.expose("slot", meta, peers=["alice"])
        a = alice.connect(owner.listen_address)
        accepted = owner.accept(timeout=10)  # held: a dropped Connection closes
        with pytest.raises(zcx.PermissionDeniedError):  # found (and cached), but keyless
            a.remote_region("slot", timeout=5)
        owner.unexpose("slot")
        data = owner.register(np.full(4096, 7, np.uint8), zcx.Access.RemoteRead)
        owner.expose("slot", data, peers=["alice"])
        deadline = time.monotonic() + 5
        while True:
            try:
                if a.remote_region("slot", timeout=5).access == zcx.Access.RemoteRead:
                    break
            except zcx.PermissionDeniedError:
                pass  # the cached keyless descriptor, until the UNEXPOSE arrives
            assert time.monotonic() < deadline, "alice kept the withdrawn descriptor"
            time.sleep(0.001)
        out = alice.register(np.zeros(4096, np.uint8))
        a.read(out, 0, a.remote_region("slot"), 0, 4096).wait(timeout=20)
        assert (out.obj == 7).all()
        del accepted
