#!/usr/bin/env python3
"""Parameter-server training with zcx and torch: 1 server process, N worker processes.

Each step, every worker
  1. pulls the parameters: one read_batch from the server's flat parameter tensor into its own
     per-layer tensors (four separate allocations);
  2. computes its gradients on its own data (a small MLP, cross-entropy);
  3. pushes them with one-sided writes into its slot of the server's gradient pool, as one
     write_with_notify batch whose notification (the step number) arrives after the data;
  4. waits for the server's "step done" message (send/recv).
The server waits for every worker's notification, averages the pool, applies SGD in place and
tells the workers. Verification, all exact (bit-for-bit; one torch thread everywhere):
  - the server recomputes every worker's gradient locally and compares it with what arrived;
  - every worker replays the whole training locally and compares each pull with it;
  - the server compares its final parameters with a single-process reference run.

    python3 examples/param_sync.py --workers 3      # server here, workers as child processes
"""

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import zcx

IN, HIDDEN, OUT, BATCH = 64, 128, 10, 32
SHAPES = [(IN, HIDDEN), (HIDDEN,), (HIDDEN, OUT), (OUT,)]
SIZES = [torch.Size(s).numel() for s in SHAPES]
OFFSETS = [sum(SIZES[:i]) for i in range(len(SIZES))]
P = sum(SIZES)  # parameters (float32)
LR = 0.05
FLOAT = 4


def initial_params():
    gen = torch.Generator().manual_seed(1234)
    return torch.cat([(torch.randn(s, generator=gen) * 0.1).reshape(-1) for s in SHAPES])


def views(flat):
    return [flat[o:o + n].view(s) for o, n, s in zip(OFFSETS, SIZES, SHAPES)]


def batch(worker, step):
    gen = torch.Generator().manual_seed(100_003 * step + worker)
    x = torch.randn(BATCH, IN, generator=gen)
    y = torch.randint(0, OUT, (BATCH,), generator=gen)
    return x, y


def gradients(layers, worker, step):
    """The gradient of worker `worker` at `step` for parameters `layers` (flat float32)."""
    w1, b1, w2, b2 = [t.detach().clone().requires_grad_() for t in layers]
    x, y = batch(worker, step)
    loss = F.cross_entropy(torch.relu(x @ w1 + b1) @ w2 + b2, y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [w1, b1, w2, b2])])


def apply_update(flat_params, pool):
    """SGD on the mean of the pool's rows (one row per worker), in place."""
    flat_params.sub_(LR * (pool.sum(0) / pool.shape[0]))


def reference(workers, steps):
    """The parameters after each step, computed in this process alone."""
    params = initial_params()
    history = [params.clone()]
    for step in range(steps):
        pool = torch.stack([gradients(views(params), w, step) for w in range(workers)])
        apply_update(params, pool)
        history.append(params.clone())
    return history


def fail(msg):
    print(f"param_sync: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def server(args):
    workers, steps = args.workers, args.steps
    engine = zcx.Engine(listen_address="127.0.0.1:0", operation_timeout=60.0)
    params = initial_params()                       # flat, layers are views of it
    pool = torch.zeros(workers, P)                  # row w: worker w's gradient
    engine.expose("params", engine.register(params, zcx.Access.RemoteRead))
    engine.expose("grads", engine.register(pool, zcx.Access.RemoteWrite))
    step_msg = torch.zeros(1, dtype=torch.int64)
    step_region = engine.register(step_msg)

    procs = [subprocess.Popen([sys.executable, __file__, "--role", "worker", "--rank", str(w),
                               "--workers", str(workers), "--steps", str(steps),
                               "--address", engine.listen_address]) for w in range(workers)]
    conns = {}
    for _ in range(workers):
        conn = engine.accept(timeout=60)
        rank = conn.wait_notification(timeout=60)   # each worker says who it is first
        conns[rank] = conn
    if sorted(conns) != list(range(workers)):
        fail(f"worker ranks {sorted(conns)}")

    t0 = time.perf_counter()
    for step in range(steps):
        for w in range(workers):                    # arrives after the gradient is visible
            note = conns[w].wait_notification(timeout=60)
            if note != 1000 + step:
                fail(f"worker {w} notified {note} at step {step}")
        for w in range(workers):                    # what arrived is what worker w computed
            expect = gradients(views(params), w, step)
            if not torch.equal(pool[w], expect):
                bad = (pool[w] != expect).nonzero()
                fail(f"step {step}: worker {w}'s gradient differs at {bad.numel()} places")
        apply_update(params, pool)
        pool.fill_(float("nan"))                    # a missing push next step cannot pass
        step_msg[0] = step + 1
        for w in range(workers):
            conns[w].send(step_region).wait(timeout=30)
    elapsed = time.perf_counter() - t0

    codes = [p.wait(timeout=60) for p in procs]
    if any(codes):
        fail(f"worker exit codes {codes}")
    final = reference(workers, steps)[-1]
    if not torch.equal(params, final):
        fail(f"final parameters differ from the reference (max |diff| "
             f"{(params - final).abs().max().item():.3g})")
    moved = steps * workers * P * FLOAT
    print(f"param_sync: {workers} workers x {steps} steps over {engine.transport_name}: "
          f"{P} parameters ({P * FLOAT / 1024:.0f} KiB) pushed and pulled per worker and step, "
          f"{2 * moved / 1e6:.1f} MB moved, {steps / elapsed:.1f} steps/s; gradients, pulls "
          f"and final parameters match the reference bit for bit")
    return 0


def worker(args):
    rank, workers, steps = args.rank, args.workers, args.steps
    expected = reference(workers, steps)            # to check every pull
    engine = zcx.Engine(operation_timeout=60.0)
    conn = engine.connect(args.address)
    params_remote = conn.remote_region("params")
    pool_remote = conn.remote_region("grads")
    if params_remote.size != P * FLOAT or pool_remote.size != workers * P * FLOAT:
        fail(f"worker {rank}: remote sizes {params_remote.size}, {pool_remote.size}")

    layers = [torch.full(s, float("nan")) for s in SHAPES]  # separate tensors, not one buffer
    layer_regions = [engine.register(t) for t in layers]
    grad = torch.zeros(P)
    grad_region = engine.register(grad)
    step_msg = torch.zeros(1, dtype=torch.int64)
    step_region = engine.register(step_msg)
    conn.write_with_notify([], rank).wait(timeout=30)  # hello: an empty batch, just the value

    pull = [zcx.RmaOp(r, 0, params_remote, o * FLOAT, n * FLOAT)
            for r, o, n in zip(layer_regions, OFFSETS, SIZES)]
    row = rank * P * FLOAT
    push = [zcx.RmaOp(grad_region, o * FLOAT, pool_remote, row + o * FLOAT, n * FLOAT)
            for o, n in zip(OFFSETS, SIZES)]
    for step in range(steps):
        for t in layers:
            t.fill_(float("nan"))
        conn.read_batch(pull).wait(timeout=30)
        pulled = torch.cat([t.reshape(-1) for t in layers])
        if not torch.equal(pulled, expected[step]):
            fail(f"worker {rank}: parameters pulled at step {step} differ from the reference")
        grad.copy_(gradients(layers, rank, step))
        done = conn.recv(step_region)                # posted before the push: no race
        conn.write_with_notify(push, 1000 + step).wait(timeout=30)
        done.wait(timeout=60)
        if step_msg.item() != step + 1:
            fail(f"worker {rank}: server said step {step_msg.item()}, expected {step + 1}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=["server", "worker"], default="server")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--address", default="")
    args = ap.parse_args()
    if args.workers < 2:
        ap.error("--workers must be at least 2")
    torch.set_num_threads(1)  # bit-for-bit reproducible gradients in every process
    return server(args) if args.role == "server" else worker(args)


if __name__ == "__main__":
    sys.exit(main())
