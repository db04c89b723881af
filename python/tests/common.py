"""What the tests and their peer process share."""
import numpy as np

POISON = 0xA5


def engine_options(transport):
    """UCX over TCP on loopback, or over shared memory (as tests/transfer_test.cc does)."""
    if transport == "tcp":
        params = {"ucx.tls": "tcp,self", "ucx.net_devices": "lo"}
    elif transport == "shm":
        params = {"ucx.tls": "posix,cma,self"}
    else:
        raise ValueError(transport)
    return dict(transport="ucx", transport_params=params, connect_timeout=10.0,
                operation_timeout=20.0)


def pattern(n, seed):
    """n pseudo-random bytes, different for every seed and offset."""
    i = np.arange(n, dtype=np.uint64)
    return ((i * np.uint64(2654435761) + np.uint64(seed * 40503 + 17)) >> np.uint64(11)).astype(np.uint8)
