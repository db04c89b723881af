"""`await request` in asyncio: completes from a zcx thread through call_soon_threadsafe, without
blocking or busy-spinning the event loop."""
import asyncio
import time

import numpy as np
import pytest

import zcx
from common import pattern
from conftest import Peer, assert_bytes


@pytest.fixture
def tcp_numpy_peer():
    p = Peer("tcp", "numpy")
    yield p
    p.close()


def test_await_write_and_recv(tcp_numpy_peer):
    peer = tcp_numpy_peer
    remote = peer.region("a", 100_000, zcx.Access.RemoteReadWrite)
    peer.region("m", 1000, zcx.Access.LocalOnly)
    peer.call(op="fill", name="m", off=0, len=1000, seed=5)
    src = np.zeros(100_000, np.uint8)
    src[:] = pattern(100_000, 4)
    region = peer.engine.register(src)
    inbox = np.zeros(1000, np.uint8)
    inbox_region = peer.engine.register(inbox)

    async def main():
        n = await peer.conn.write(region, 0, remote, 0, 100_000)
        assert n == 100_000
        # A receive the peer answers 0.5 s later: the loop keeps running meanwhile.
        recv = peer.conn.recv(inbox_region)
        peer.start(op="send", name="m", off=0, len=1000, delay=0.5)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        cpu0, wall0 = time.process_time(), time.monotonic()
        got = await recv
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        t.cancel()
        return got, ticks, cpu, wall

    got, ticks, cpu, wall = asyncio.run(main())
    peer.finish()
    assert got == 1000
    assert_bytes(inbox, pattern(1000, 5), "awaited recv")
    assert_bytes(peer.dump("a"), pattern(100_000, 4), "awaited write")
    assert wall >= 0.4 and ticks >= 10, (wall, ticks)  # the loop ran while we awaited
    assert cpu < 0.6 * wall, (cpu, wall)  # and nobody spun the CPU for it


def test_await_error_and_many(tcp_numpy_peer):
    peer = tcp_numpy_peer
    remote = peer.region("b", 64 * 1000, zcx.Access.RemoteWrite)
    src = pattern(64 * 1000, 8)
    region = peer.engine.register(src)

    async def main():
        # 64 writes in flight at once, gathered.
        reqs = [peer.conn.write(region, i * 1000, remote, i * 1000, 1000) for i in range(64)]
        done = await asyncio.gather(*reqs)
        assert done == [1000] * 64
        # Two tasks awaiting the same receive: both wake when it completes.
        peer.region("two", 100, zcx.Access.LocalOnly)
        peer.call(op="fill", name="two", off=0, len=100, seed=21)
        inbox = np.zeros(100, np.uint8)
        twice = peer.conn.recv(peer.engine.register(inbox))
        both = asyncio.gather(twice, twice)
        await asyncio.sleep(0.05)
        peer.call(op="send", name="two", off=0, len=100)
        assert await asyncio.wait_for(both, 20) == [100, 100]
        assert_bytes(inbox, pattern(100, 21), "received once, awaited twice")
        # A receive that fails: the error comes out of the await.
        recv = peer.conn.recv(peer.engine.register(np.zeros(8, np.uint8)))
        asyncio.get_running_loop().call_later(0.2, peer.conn.close)
        with pytest.raises(zcx.Error) as e:
            await recv
        assert e.value.code == zcx.StatusCode.Cancelled
        # Awaiting a request that is already complete returns at once.
        assert await reqs[0] == 1000

    asyncio.run(main())
    assert_bytes(peer.dump("b"), src, "64 awaited writes")


def test_await_with_timeout(tcp_numpy_peer):
    peer = tcp_numpy_peer
    recv = peer.conn.recv(peer.engine.register(np.zeros(8, np.uint8)))

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(recv, 0.2)  # cancels the await, not the operation

    asyncio.run(main())
    assert not recv.done()
    peer.conn.close()
    with pytest.raises(zcx.Error):
        recv.wait(timeout=10)


EXIT_SCRIPT = r"""
import asyncio, sys
import numpy as np
import zcx
server = zcx.Engine(listen_address="127.0.0.1:0", transport="ucx")
client = zcx.Engine(transport="ucx", progress=sys.argv[1])
conn = client.connect(server.listen_address)
accepted = server.accept(timeout=10)
inbox = np.zeros(64, np.uint8)
pending = [conn.recv(client.register(inbox)) for _ in range(4)]
async def main():
    try:
        await asyncio.wait_for(pending[0], 0.1)  # leaves a callback behind, its loop then closed
    except asyncio.TimeoutError:
        pass
asyncio.run(main())
print("exiting with", sum(not p.done() for p in pending), "receives in flight")
# No close(): the atexit hook shuts both engines down before the interpreter finalizes.
"""


@pytest.mark.parametrize("progress", ["thread", "manual"])
def test_interpreter_exit_with_operations_in_flight(progress):
    import subprocess, sys, os
    import zcx as _z
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(_z.__file__)))
    r = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, progress], env=env, timeout=60,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exiting with 4 receives in flight" in r.stdout


def test_manual_progress_mode(tcp_numpy_peer):
    peer = tcp_numpy_peer
    engine = zcx.Engine(progress="manual", transport="ucx",
                        transport_params={"ucx.tls": "tcp,self", "ucx.net_devices": "lo"})
    conn = engine.connect(peer.address)
    peer.call(op="accept")
    peer.region("mp", 5000, zcx.Access.RemoteWrite)
    remote = conn.remote_region("mp")
    src = pattern(5000, 12)
    req = conn.write(engine.register(src), 0, remote, 0, 5000)
    assert req.wait(timeout=20) == 5000  # wait() drives progress itself
    assert_bytes(peer.dump("mp"), src, "written in manual progress mode")
    src2 = pattern(5000, 13)
    req = conn.write(engine.register(src2), 0, remote, 0, 5000)
    assert asyncio.run(asyncio.wait_for(req, 20)) == 5000  # await drives it too
    assert_bytes(peer.dump("mp"), src2, "awaited in manual progress mode")
    engine.close()
