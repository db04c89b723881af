"""Engine.stats() and Engine.metrics_text(): counters of real transfers, Prometheus text, and
the /metrics HTTP server."""
import re
import urllib.error
import urllib.request

import numpy as np
import pytest

import zcx
from common import engine_options

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? [0-9]+$')


def check_prometheus(text):
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith("# HELP ") or line.startswith("# TYPE "), line
        else:
            assert SAMPLE.match(line), f"not a sample: {line!r}"


def test_stats_count_what_moved(tcp_peer):
    remote = tcp_peer.region("m", 65536, zcx.Access.RemoteReadWrite)
    src = tcp_peer.engine.register(np.arange(65536, dtype=np.uint32).view(np.uint8)[:65536].copy())
    sizes = [1, 1000, 65536]
    for n in sizes:
        assert tcp_peer.conn.write(src, 0, remote, 0, n).wait(timeout=20) == n
    assert tcp_peer.conn.read(src, 0, remote, 0, 4096).wait(timeout=20) == 4096
    with pytest.raises(zcx.Error) as e:
        tcp_peer.conn.write(src, 0, remote, 65536, 1).wait(timeout=5)
    assert e.value.code == zcx.StatusCode.OutOfRange

    stats = tcp_peer.engine.stats()
    assert len(stats["connections"]) == 1 and len(stats["rails"]) == 1
    conn = stats["connections"][0]
    assert conn["open"] and conn["rail"] == 0 and conn["peer"] == tcp_peer.conn.peer_name
    t = conn["traffic"]
    assert t["write"]["operations"] == 3 and t["write"]["bytes"] == sum(sizes)
    assert t["read"]["operations"] == 1 and t["read"]["bytes"] == 4096
    assert t["send"]["operations"] == 0 and t["recv"]["bytes"] == 0
    assert t["recv_zero_copy"] == 0  # no message was received
    assert t["errors"] == {"OutOfRange": 1}
    lat = t["write"]["latency_us"]
    assert lat["count"] == 3 and sum(c for _, c in lat["buckets"]) == 3
    assert lat["buckets"][-1][0] is None and lat["buckets"][0][0] == 1
    assert stats["rails"][0]["name"] == tcp_peer.engine.transport_description
    assert stats["rails"][0]["traffic"]["write"]["bytes"] == sum(sizes)
    # One transport without devices to tell apart: one entry with everything this side posted.
    assert stats["devices"] == [{"device": "ucx", "bytes": sum(sizes) + 4096}]

    text = tcp_peer.engine.metrics_text()
    check_prometheus(text)
    assert f'op="write"}} {sum(sizes)}' in text
    assert 'code="OutOfRange"} 1' in text


def test_metrics_http_server():
    with zcx.Engine(metrics_address="127.0.0.1:0", **engine_options("tcp")) as engine:
        host, port = engine.metrics_address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with urllib.request.urlopen(f"http://{engine.metrics_address}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = r.read().decode()
        check_prometheus(body)
        assert "# TYPE zcx_bytes_total counter" in body
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{engine.metrics_address}/other", timeout=5)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{engine.metrics_address}/metrics", data=b"x", timeout=5)
        assert e.value.code == 405
    assert zcx.Engine(**engine_options("tcp")).metrics_address == ""


def test_metrics_address_needs_a_host():
    with pytest.raises(zcx.InvalidArgumentError):
        zcx.Engine(metrics_address=":0", **engine_options("tcp"))
