"""The other process of the zcx Python tests: a command server on stdin/stdout (JSON lines).

    python3 peer.py TRANSPORT KIND     # TRANSPORT: tcp | shm, KIND: numpy | torch

It listens, prints {"addr": "host:port"}, then serves one command per line. Its regions are
KIND buffers filled with POISON; "check"/"dump" report what actually arrived in them.
"""
import base64
import json
import sys
import time

import numpy as np

import zcx
from common import POISON, engine_options, pattern


def main():
    transport, kind = sys.argv[1], sys.argv[2]
    if kind == "torch":
        import torch
    engine = zcx.Engine(listen_address="127.0.0.1:0", **engine_options(transport))
    out = sys.stdout

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    reply(addr=engine.listen_address)
    regions, arrays, conns = {}, {}, []
    conn = None
    for line in sys.stdin:
        c = json.loads(line)
        op = c["op"]
        try:
            if op == "exit":
                break
            elif op == "accept":
                conn = engine.accept(timeout=c.get("timeout", 30))
                conns.append(conn)
                reply(ok=True)
            elif op == "region":  # name size access: a KIND buffer of POISON, exposed
                n = c["size"]
                if kind == "torch":
                    t = torch.full((n,), POISON, dtype=torch.uint8)
                    arrays[c["name"]] = t.numpy()  # the same memory
                    obj = t
                else:
                    obj = arrays[c["name"]] = np.full(n, POISON, dtype=np.uint8)
                regions[c["name"]] = engine.register(obj, zcx.Access(c["access"]))
                engine.expose(c["name"], regions[c["name"]])
                reply(ok=True)
            elif op == "fill":  # name off len seed
                a = arrays[c["name"]]
                a[c["off"]:c["off"] + c["len"]] = pattern(c["len"], c["seed"])
                reply(ok=True)
            elif op == "dump":  # the region's bytes
                reply(data=base64.b64encode(arrays[c["name"]].tobytes()).decode())
            elif op == "descriptor":
                reply(data=base64.b64encode(regions[c["name"]].descriptor()).decode())
            elif op == "waitnotify":  # the value, and the region's bytes right when it arrived
                v = conn.wait_notification(timeout=c.get("timeout", 30))
                data = arrays[c["name"]].tobytes() if "name" in c else b""
                reply(value=v, data=base64.b64encode(data).decode())
            elif op == "recv":  # name off cap: posts one receive, waits, says what arrived
                req = conn.recv(regions[c["name"]], c["off"], c["cap"])
                n = req.wait(timeout=30)
                a = arrays[c["name"]]
                reply(bytes=n, data=base64.b64encode(a[c["off"]:c["off"] + n].tobytes()).decode())
            elif op == "send":  # name off len [delay]
                time.sleep(c.get("delay", 0))
                conn.send(regions[c["name"]], c["off"], c["len"]).wait(timeout=30)
                reply(ok=True)
            elif op == "close":
                conn.close()
                reply(ok=True)
            else:
                reply(error=f"unknown op {op}")
        except zcx.Error as e:
            reply(error=str(e), code=int(e.code))
    engine.close()


if __name__ == "__main__":
    main()
