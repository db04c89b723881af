"""Errors are zcx.Error exceptions carrying the zcx code; timeouts; lifetimes."""
import gc
import socket
import time
import weakref

import numpy as np
import pytest

import zcx
from common import engine_options


def test_error_classes():
    assert issubclass(zcx.TimedOutError, zcx.Error) and issubclass(zcx.Error, Exception)
    e = zcx.NotFoundError("x", zcx.StatusCode.NotFound)
    assert e.code == zcx.StatusCode.NotFound and str(e) == "NotFound: x"


def test_bad_engine_option():
    with pytest.raises(zcx.InvalidArgumentError) as e:
        zcx.Engine(recv_window=1)
    assert e.value.code == zcx.StatusCode.InvalidArgument and "recv_window" in e.value.message
    with pytest.raises(zcx.Error) as e:
        zcx.Engine(transport="no-such-transport")
    assert e.value.code == zcx.StatusCode.NotFound


def test_connect_to_a_closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    with zcx.Engine(**engine_options("tcp")) as engine:
        with pytest.raises(zcx.Error) as e:
            engine.connect(f"127.0.0.1:{port}")
        assert e.value.code == zcx.StatusCode.ConnectionRefused
        assert isinstance(e.value, zcx.ConnectionRefusedError)


def test_unknown_region_name(tcp_peer):
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.remote_region("nobody-exposed-this")
    assert e.value.code == zcx.StatusCode.NotFound


def test_access_rights(tcp_peer):
    ro = tcp_peer.region("ro", 4096, zcx.Access.RemoteRead)
    src = tcp_peer.engine.register(np.ones(4096, np.uint8))
    with pytest.raises(zcx.Error) as e:  # the peer only allowed reads
        tcp_peer.conn.write(src, 0, ro, 0, 4096).wait(timeout=10)  # failed, nothing posted
    assert e.value.code == zcx.StatusCode.PermissionDenied
    wo = tcp_peer.region("wo", 4096, zcx.Access.RemoteWrite)
    with pytest.raises(zcx.Error) as e:  # the peer only allowed writes
        tcp_peer.conn.read(src, 0, wo, 0, 4096).wait(timeout=10)
    assert e.value.code == zcx.StatusCode.PermissionDenied
    tcp_peer.conn.write(src, 0, wo, 0, 4096).wait(timeout=20)  # what it allows works
    assert (tcp_peer.dump("wo") == 1).all()


def test_read_only_buffers(tcp_peer):
    # Checked by the binding on the Python object: raised at the call (like a TypeError), not
    # through the Request as zcx's own checks are.
    a = np.zeros(4096, np.uint8)
    a.flags.writeable = False
    for obj in (a, b"x" * 4096, memoryview(bytearray(4096)).toreadonly()):
        for access in (zcx.Access.RemoteWrite, zcx.Access.RemoteReadWrite):
            with pytest.raises(zcx.Error) as e:
                tcp_peer.engine.register(obj, access)
            assert e.value.code == zcx.StatusCode.PermissionDenied
    # Read-only memory may be a source, never a target.
    src = tcp_peer.engine.register(b"y" * 4096)
    assert not src.writable
    remote = tcp_peer.region("rw", 4096, zcx.Access.RemoteReadWrite)
    tcp_peer.conn.write(src, 0, remote, 0, 4096).wait(timeout=20)
    assert (tcp_peer.dump("rw") == ord("y")).all()
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.read(src, 0, remote, 0, 4096)
    assert e.value.code == zcx.StatusCode.PermissionDenied
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.recv(src)
    assert e.value.code == zcx.StatusCode.PermissionDenied
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.read_batch([zcx.RmaOp(src, 0, remote, 0, 1)])
    assert e.value.code == zcx.StatusCode.PermissionDenied


def test_ranges(tcp_peer):
    remote = tcp_peer.region("small", 1000, zcx.Access.RemoteReadWrite)
    local = tcp_peer.engine.register(np.zeros(4096, np.uint8))
    for args in [(local, 0, remote, 0, 1001),      # longer than the remote region
                 (local, 0, remote, 999, 2),       # past its end
                 (local, 4000, remote, 0, 100)]:   # past the local region's end
        for op in (tcp_peer.conn.write, tcp_peer.conn.read):
            req = op(*args)
            with pytest.raises(zcx.Error) as e:
                req.wait(timeout=10)  # checked before posting: complete at once
            assert req.done()
            assert e.value.code == zcx.StatusCode.OutOfRange, (op, args)
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.write_batch([zcx.RmaOp(local, 0, remote, 0, 10),
                                   zcx.RmaOp(local, 0, remote, 995, 10)]).wait(timeout=10)
    assert e.value.code == zcx.StatusCode.OutOfRange
    big = tcp_peer.engine.register(np.zeros(tcp_peer.conn.max_message_size + 1, np.uint8))
    with pytest.raises(zcx.Error) as e:  # above max_message_size
        tcp_peer.conn.send(big).wait(timeout=10)
    assert e.value.code == zcx.StatusCode.OutOfRange
    # Nothing was posted, so the connection is still usable.
    tcp_peer.conn.write(local, 0, remote, 0, 1000).wait(timeout=20)


def test_bad_objects(tcp_peer):
    e_ = tcp_peer.engine
    for obj in (42, "text", None, np.zeros((64, 64), np.uint8)[:, ::2]):
        with pytest.raises(zcx.Error) as e:
            e_.register(obj)
        assert e.value.code == zcx.StatusCode.InvalidArgument, obj
    with pytest.raises(zcx.Error) as e:  # zero bytes
        e_.register(bytearray())
    assert e.value.code == zcx.StatusCode.InvalidArgument
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.write_batch([("not", "an", "op", 0, 1)])
    assert e.value.code == zcx.StatusCode.InvalidArgument


def test_bad_tensors(tcp_peer):
    torch = pytest.importorskip("torch")
    for t in (torch.zeros(64, 64).t(), torch.zeros(10, requires_grad=True)):
        with pytest.raises(zcx.Error) as e:
            tcp_peer.engine.register(t)
        assert e.value.code == zcx.StatusCode.InvalidArgument
    w = torch.zeros(10, requires_grad=True)
    assert tcp_peer.engine.register(w.detach()).address == w.data_ptr()


def test_recv_nobody_sends_to_times_out(tcp_peer):
    buf = np.full(1024, 7, np.uint8)
    req = tcp_peer.conn.recv(tcp_peer.engine.register(buf))
    t0 = time.monotonic()
    with pytest.raises(zcx.StillInFlightError) as e:
        req.wait(timeout=0.3)
    waited = time.monotonic() - t0
    assert e.value.code == zcx.StatusCode.StillInFlight
    assert 0.28 <= waited < 5, waited
    assert not req.done() and not req.test()
    assert (buf == 7).all()
    tcp_peer.conn.close()  # the receive completes now, cancelled
    with pytest.raises(zcx.Error) as e:
        req.wait(timeout=10)
    assert e.value.code == zcx.StatusCode.Cancelled and req.done()
    # Operations on the closed connection fail with its status.
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.recv(tcp_peer.engine.register(np.zeros(8, np.uint8))).wait(timeout=10)
    assert e.value.code == zcx.StatusCode.Cancelled
    assert not tcp_peer.conn.status().ok


def test_wait_notification_times_out(tcp_peer):
    t0 = time.monotonic()
    with pytest.raises(zcx.TimedOutError) as e:
        tcp_peer.conn.wait_notification(timeout=0.25)
    assert e.value.code == zcx.StatusCode.TimedOut
    assert time.monotonic() - t0 >= 0.24
    assert tcp_peer.conn.poll_notification() is None


def test_accept_times_out():
    with zcx.Engine(listen_address="127.0.0.1:0", **engine_options("tcp")) as engine:
        with pytest.raises(zcx.Error) as e:
            engine.accept(timeout=0.2)
        assert e.value.code == zcx.StatusCode.TimedOut


def test_a_registered_object_is_held():
    engine = zcx.Engine(**engine_options("tcp"))
    a = np.zeros(4096, np.uint8)
    ref = weakref.ref(a)
    region = engine.register(a)
    assert region.obj is a
    del a
    gc.collect()
    assert ref() is not None  # the region keeps the array
    region.close()
    gc.collect()
    assert ref() is None and region.closed
    with pytest.raises(zcx.Error):
        region.size
    b = bytearray(100)
    r = engine.register(b)
    with pytest.raises(BufferError):  # the buffer is exported: it cannot move while registered
        b.extend(b"more")
    r.close()
    b.extend(b"more")
    engine.close()
    assert engine.closed
    with pytest.raises(zcx.Error) as e:
        engine.register(bytearray(10))
    assert e.value.code == zcx.StatusCode.Cancelled


def test_engine_shutdown_cancels(tcp_peer):
    req = tcp_peer.conn.recv(tcp_peer.engine.register(np.zeros(64, np.uint8)))
    tcp_peer.engine.close()
    with pytest.raises(zcx.Error) as e:
        req.wait(timeout=10)
    assert e.value.code == zcx.StatusCode.Cancelled


def test_the_gil_is_released_while_waiting(tcp_peer):
    import threading
    req = tcp_peer.conn.recv(tcp_peer.engine.register(np.zeros(64, np.uint8)))
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        before = count[0]
        with pytest.raises(zcx.StillInFlightError):
            req.wait(timeout=0.5)  # blocks in zcx: the other thread must run meanwhile
        during = count[0] - before
    finally:
        stop.set()
        t.join()
    assert during > 10_000, during
