#!/usr/bin/env python3
"""CPU use of connected but idle engines (issue target: under 1 % of a core).

Two engines in this process, connected over UCX (tcp on loopback or shm), each with its own
progress thread; measures this process's user+system time over a quiet interval, first with
nothing outstanding, then with a receive posted and waiting.

  PYTHONPATH=build/python python3 perf/idle_cpu.py [tcp|shm] [SECONDS]
"""
import resource
import sys
import time

import numpy as np
import zcx


def options(transport):
    if transport == "tcp":
        params = {"ucx.tls": "tcp,self", "ucx.net_devices": "lo"}
    else:
        params = {"ucx.tls": "posix,cma,self"}
    return dict(transport="ucx", transport_params=params)


def cpu_percent(seconds):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    time.sleep(seconds)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    used = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return 100.0 * used / (t1 - t0)


def main():
    transport = sys.argv[1] if len(sys.argv) > 1 else "tcp"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    server = zcx.Engine(listen_address="127.0.0.1:0", **options(transport))
    client = zcx.Engine(**options(transport))
    conn = client.connect(server.listen_address)
    peer = server.accept(5.0)
    time.sleep(1.0)  # past the handshake's own work
    print(f"{transport}: two connected engines, nothing outstanding: "
          f"{cpu_percent(seconds):.2f} % of a core (both together)")
    buf = np.zeros(4096, dtype=np.uint8)
    region = server.register(buf)
    pending = peer.recv(region)
    print(f"{transport}: the same with a receive posted and waiting: "
          f"{cpu_percent(seconds):.2f} % of a core (both together)")
    conn.close()
    del pending


if __name__ == "__main__":
    main()
