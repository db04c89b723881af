# Two processes on one machine: the server exposes a numpy inbox, the client writes into it
# with one notification, the server checks every byte. (The README's Python block; ctest runs it.)
import subprocess, sys
import numpy as np
import zcx

def serve():
    engine = zcx.Engine(listen_address="127.0.0.1:0")  # zcx::EngineOptions as keywords
    inbox = np.zeros(1 << 20, dtype=np.uint8)
    engine.expose("inbox", engine.register(inbox, zcx.Access.RemoteWrite))
    client = subprocess.Popen([sys.executable, __file__, engine.listen_address])
    conn = engine.accept(timeout=30)
    note = conn.wait_notification(timeout=30)  # arrives after the data is visible here
    ok = note == 42 and np.array_equal(inbox, np.arange(inbox.size) % 251)
    print(f"server: {inbox.nbytes} bytes over {engine.transport_name}, intact: {ok}")
    return 0 if ok and client.wait(timeout=30) == 0 else 1

def send(address):
    engine = zcx.Engine()
    conn = engine.connect(address)
    inbox = conn.remote_region("inbox")  # address + key from the handshake
    data = (np.arange(inbox.size) % 251).astype(np.uint8)
    src = engine.register(data)  # zcx.Access.LocalOnly: peers may not touch it
    op = zcx.RmaOp(src, 0, inbox, 0, data.nbytes)  # bounds-checked before posting
    conn.write_with_notify([op], 42).wait(timeout=10)  # raises zcx.Error on failure
    return 0

if __name__ == "__main__":
    sys.exit(serve() if len(sys.argv) == 1 else send(sys.argv[1]))
