"""zcx: zero-copy transfer of remote memory (RDMA verbs, UCX over shared memory or TCP).

    import numpy as np, zcx
    engine = zcx.Engine(listen_address="127.0.0.1:0")   # zcx::EngineOptions as keywords
    inbox = engine.register(np.zeros(4096, np.uint8), zcx.Access.RemoteWrite)
    engine.expose("inbox", inbox)
    conn = engine.accept(timeout=60)                    # the peer: zcx.Engine().connect(address)

Every operation (write, read, write_batch, read_batch, write_with_notify, send, recv) returns a
Request: ``req.wait(timeout)`` returns the bytes moved, ``await req`` does the same in asyncio,
``req.done()`` polls. Errors are ``zcx.Error`` exceptions (a subclass per code, e.g.
``zcx.TimedOutError``) whose ``.code`` is a ``zcx.StatusCode``. Durations are in seconds.
The names follow the C++ API (core/include/zcx/) in snake_case.
"""

import asyncio as _asyncio
import atexit as _atexit
from typing import NamedTuple as _NamedTuple

from . import _zcx
from ._zcx import (
    Access,
    Connection,
    Engine,
    ProgressMode,
    Region,
    RemoteRegion,
    Request,
    Status,
    StatusCode,
)

__all__ = [
    "Access", "Connection", "Engine", "Error", "ProgressMode", "Region", "RemoteRegion",
    "Request", "RmaOp", "Status", "StatusCode",
]


class Error(Exception):
    """A zcx error: ``code`` (zcx.StatusCode) and ``message`` (what happened, what to do)."""

    def __init__(self, message, code=StatusCode.Internal):
        super().__init__(message)
        self.code = StatusCode(code)
        self.message = message

    def __str__(self):
        return f"{_zcx.status_code_name(self.code)}: {self.message}"

    def __reduce__(self):  # picklable (e.g. across multiprocessing)
        return (_error_for, (int(self.code), self.message))


# One subclass per code: zcx.TimedOutError, zcx.NotFoundError, zcx.StillInFlightError, ...
_ERROR_CLASSES = {}
for _name, _code in StatusCode.__members__.items():
    if _code == StatusCode.Ok:
        continue
    _cls = type(_name + "Error", (Error,), {"__doc__": f"zcx.Error with code {_name}"})
    _cls.__module__ = __name__
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
    _ERROR_CLASSES[_code] = _cls


def _error_for(code, message):
    code = StatusCode(code)
    return _ERROR_CLASSES.get(code, Error)(message, code)


_zcx._set_error_factory(_error_for)


class RmaOp(_NamedTuple):
    """One element of a batch: `length` bytes between local[local_offset] and remote[remote_offset]."""

    local: Region
    local_offset: int
    remote: RemoteRegion
    remote_offset: int
    length: int


def _set_done(future):
    if not future.done():
        future.set_result(None)


def _request_await(self):
    """``await request``: the bytes moved, or the zcx.Error. The event loop is not blocked: a zcx
    thread wakes it through loop.call_soon_threadsafe when the operation completes. Cancelling
    the awaiting task does not cancel the operation (a posted RDMA operation cannot be recalled)."""
    if self._manual_progress:
        # Manual progress mode: nothing progresses unless we do. Poll (one round of progress per
        # test()) with short sleeps in between, so other tasks run.
        while not self.test():
            yield from _asyncio.sleep(0.0005).__await__()
    elif not self.done():
        loop = _asyncio.get_running_loop()
        future = loop.create_future()
        if self._notify_loop(loop, _set_done, future):
            yield from future.__await__()
    return self.wait(0)


Request.__await__ = _request_await

# No zcx thread may outlive the interpreter: shut every engine down before finalization starts.
_atexit.register(_zcx._shutdown)
