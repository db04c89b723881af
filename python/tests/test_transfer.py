"""Real bytes between two processes, checked byte by byte: write, read, batches,
write_with_notify, send/recv; numpy and torch on both sides; UCX over TCP and shared memory."""
import base64

import numpy as np
import pytest

import zcx
from common import POISON, pattern
from conftest import assert_bytes, decode, local_buffer

SIZE = (1 << 20) + 123  # odd sizes and offsets throughout


def expected_image(size, pieces):
    """A POISON buffer with pattern(len, seed) at each (offset, len, seed)."""
    img = np.full(size, POISON, np.uint8)
    for off, n, seed in pieces:
        img[off:off + n] = pattern(n, seed)
    return img


def test_write_then_read_back(peer, kind):
    remote = peer.region(f"wr-{kind}", SIZE, zcx.Access.RemoteReadWrite)
    assert remote.size == SIZE
    src_obj, src = local_buffer(kind, SIZE)
    src[:] = pattern(SIZE, 1)
    src_region = peer.engine.register(src_obj)
    n = SIZE - 1000
    req = peer.conn.write(src_region, 7, remote, 13, n)
    assert req.wait(timeout=20) == n and req.done() and req.bytes == n
    # Exactly [13, 13+n) changed at the peer, to src[7:7+n].
    img = np.full(SIZE, POISON, np.uint8)
    img[13:13 + n] = src[7:7 + n]
    assert_bytes(peer.dump(f"wr-{kind}"), img, "written")

    peer.call(op="fill", name=f"wr-{kind}", off=0, len=SIZE, seed=2)
    dst_obj, dst = local_buffer(kind, SIZE)
    dst_region = peer.engine.register(dst_obj)
    req = peer.conn.read(dst_region, 3, remote, 5, 4096 + 1)
    assert req.wait(timeout=20) == 4097
    img = np.full(SIZE, POISON, np.uint8)
    img[3:3 + 4097] = pattern(SIZE, 2)[5:5 + 4097]
    assert_bytes(dst, img, "read")


def test_batches(peer, kind):
    name = f"batch-{kind}"
    remote = peer.region(name, SIZE, zcx.Access.RemoteReadWrite)
    rng = np.random.default_rng(7)
    # 200 pieces of 1..4000 bytes from separate local buffers to scattered remote offsets.
    srcs, ops, pieces = [], [], []
    off = 0
    for i in range(200):
        n = int(rng.integers(1, 4000))
        obj, view = local_buffer(kind, n)
        view[:] = pattern(n, 100 + i)
        region = peer.engine.register(obj)
        srcs.append(region)
        ops.append(zcx.RmaOp(region, 0, remote, off, n))
        pieces.append((off, n, 100 + i))
        off += n + int(rng.integers(0, 1000))
    assert off < SIZE
    req = peer.conn.write_batch(ops)
    assert req.wait(timeout=20) == sum(p[1] for p in pieces)
    assert_bytes(peer.dump(name), expected_image(SIZE, pieces), "write_batch")

    # read_batch: the same pieces back into one local buffer, packed, plain tuples as ops.
    total = sum(p[1] for p in pieces)
    dst_obj, dst = local_buffer(kind, total + 10)
    dst_region = peer.engine.register(dst_obj)
    ops, pos = [], 0
    for (roff, n, _) in pieces:
        ops.append((dst_region, pos, remote, roff, n))
        pos += n
    assert peer.conn.read_batch(ops).wait(timeout=20) == total
    packed = np.concatenate([pattern(n, seed) for (_, n, seed) in pieces])
    assert_bytes(dst[:total], packed, "read_batch")
    assert_bytes(dst[total:], np.full(10, POISON, np.uint8), "past read_batch")


def test_write_unsignaled_then_flush(peer, kind):
    name = f"unsig-{kind}"
    remote = peer.region(name, SIZE, zcx.Access.RemoteReadWrite)
    rng = np.random.default_rng(11)
    src_obj, src = local_buffer(kind, SIZE)
    src[:] = pattern(SIZE, 5)
    src_region = peer.engine.register(src_obj)
    # 300 writes of 1..3000 bytes with no request each, then one flush for all of them.
    pieces, off = [], 0
    for _ in range(300):
        n = int(rng.integers(1, 3000))
        peer.conn.write_unsignaled(src_region, off, remote, off, n)
        pieces.append((off, n))
        off += n + int(rng.integers(0, 500))
    assert off < SIZE
    peer.conn.flush().wait(timeout=20)
    img = np.full(SIZE, POISON, np.uint8)
    for o, n in pieces:
        img[o:o + n] = src[o:o + n]
    assert_bytes(peer.dump(name), img, "write_unsignaled")
    with pytest.raises(zcx.Error) as e:  # checked at once: out of range
        peer.conn.write_unsignaled(src_region, 0, remote, SIZE - 10, 20)
    assert e.value.code == zcx.StatusCode.OutOfRange


def test_write_with_notify(peer, kind):
    name = f"notify-{kind}"
    remote = peer.region(name, SIZE, zcx.Access.RemoteWrite)
    obj, src = local_buffer(kind, SIZE)
    src[:] = pattern(SIZE, 3)
    region = peer.engine.register(obj)
    peer.start(op="waitnotify", name=name)  # the peer looks at its memory when the value lands
    half = SIZE // 2
    ops = [zcx.RmaOp(region, 0, remote, half, SIZE - half), zcx.RmaOp(region, half, remote, 0, half)]
    peer.conn.write_with_notify(ops, 0xDEADBEEF).wait(timeout=20)
    r = peer.finish()
    assert r["value"] == 0xDEADBEEF
    img = np.concatenate([src[half:2 * half], src[:SIZE - half]])  # the two ops' destinations
    assert_bytes(decode(r["data"]), img, "visible at notification")


def test_send_recv_both_ways(peer, kind):
    name = f"msg-{kind}"
    cap = peer.conn.max_message_size
    size = cap + 16  # room for the largest message at an odd offset
    peer.region(name, size, zcx.Access.LocalOnly)
    obj, buf = local_buffer(kind, size)
    region = peer.engine.register(obj)
    sizes = [1, 17, 4096, 30000, cap]
    for i, n in enumerate(sizes):  # to the peer: it posts one receive per message, in order
        buf[:n] = pattern(n, 40 + i)
        peer.start(op="recv", name=name, off=5, cap=size - 5)
        assert peer.conn.send(region, 0, n).wait(timeout=20) == n
        r = peer.finish()
        assert r["bytes"] == n
        assert_bytes(decode(r["data"]), pattern(n, 40 + i), f"message {i} at the peer")
    for i, n in enumerate(sizes):  # from the peer
        peer.call(op="fill", name=name, off=0, len=n, seed=60 + i)
        buf[:] = POISON
        req = peer.conn.recv(region, 3)
        peer.call(op="send", name=name, off=0, len=n)
        assert req.wait(timeout=20) == n and req.bytes == n
        img = np.full(size, POISON, np.uint8)
        img[3:3 + n] = pattern(n, 60 + i)
        assert_bytes(buf, img, f"message {i} here")


def test_import_region_from_descriptor(peer, kind):
    name = f"desc-{kind}"
    peer.call(op="region", name=name, size=4096, access=int(zcx.Access.RemoteWrite))
    desc = base64.b64decode(peer.call(op="descriptor", name=name)["data"])
    remote = peer.conn.import_region(desc)
    assert remote.size == 4096 and remote.access == zcx.Access.RemoteWrite
    obj, src = local_buffer(kind, 4096)
    src[:] = pattern(4096, 9)
    peer.conn.write(peer.engine.register(obj), 0, remote, 0, 4096).wait(timeout=20)
    assert_bytes(peer.dump(name), pattern(4096, 9), "written through an imported descriptor")


def test_bytearray_and_memoryview(tcp_peer):
    remote = tcp_peer.region("ba", 1000, zcx.Access.RemoteReadWrite)
    data = bytearray(pattern(1000, 11).tobytes())
    src = tcp_peer.engine.register(memoryview(data)[100:600])  # a slice: its own address
    assert src.size == 500
    tcp_peer.conn.write(src, 0, remote, 0, 500).wait(timeout=20)
    img = np.full(1000, POISON, np.uint8)
    img[:500] = pattern(1000, 11)[100:600]
    assert_bytes(tcp_peer.dump("ba"), img, "from a memoryview slice")
    into = bytearray(500)
    dst = tcp_peer.engine.register(into)
    tcp_peer.conn.read(dst, 0, remote, 0, 500).wait(timeout=20)
    assert_bytes(np.frombuffer(into, np.uint8), pattern(1000, 11)[100:600], "into a bytearray")


def test_torch_float_tensor_round_trip(tcp_peer):
    torch = pytest.importorskip("torch")
    remote = tcp_peer.region("floats", 4 * 1000, zcx.Access.RemoteReadWrite)
    t = torch.linspace(-3, 3, 1000, dtype=torch.float32)
    tcp_peer.conn.write(tcp_peer.engine.register(t), 0, remote, 0, 4000).wait(timeout=20)
    back = torch.zeros(10, 100)  # a 2-D tensor: registered as its 4000 bytes
    tcp_peer.conn.read(tcp_peer.engine.register(back), 0, remote, 0, 4000).wait(timeout=20)
    assert torch.equal(back.reshape(-1), t)
    view = t[250:750]  # a contiguous slice: registered at its own offset
    r = tcp_peer.engine.register(view)
    assert r.size == 2000 and r.address == view.data_ptr()
