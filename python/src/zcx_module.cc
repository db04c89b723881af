// zcx._zcx: the Python binding of the public C++ API (core/include/zcx/). The pure-Python part
// (zcx/__init__.py) adds the exception classes, RmaOp and the asyncio form of Request.
//
// Rules this file keeps:
// - The GIL is released around every call into zcx that can block or takes zcx locks (connect,
//   accept, lookups, posting, waiting, progress, registration, and every destructor of a zcx
//   object: destroying an Engine joins its threads, destroying a MemoryRegion waits for the
//   transport to let go of the memory).
// - zcx threads (the progress thread runs Request callbacks) touch Python only through
//   LoopWaker: it checks that the interpreter is usable, takes the GIL, and never runs user code
//   (it only hands a future to its event loop with call_soon_threadsafe).
// - At interpreter exit (atexit, before finalization starts) every live engine is shut down, so
//   no zcx thread is left that could reach for the GIL while Python finalizes.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <thread>

#include "zcx/zcx.h"

namespace py = pybind11;
using namespace std::chrono_literals;

namespace {

// ---------------------------------------------------------------- DLPack (ABI of DLPack 0.x,
// what torch 1.13's __dlpack__ exports; the header is not packaged in Debian 12)
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDAHost = 3;  // pinned host memory: CPU-addressable

// ---------------------------------------------------------------- interpreter state

std::atomic<bool> g_exiting{false};  // set by the atexit hook once every engine is shut down

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}
// Whether a zcx thread may take the GIL and touch Python objects.
bool pythonUsable() { return !g_exiting.load() && Py_IsInitialized() && !finalizing(); }

// Set while this thread runs one of our completion callbacks (a zcx progress thread).
thread_local int t_in_callback = 0;

// ---------------------------------------------------------------- errors

struct StatusError : std::exception {
  explicit StatusError(zcx::Status s) : status(std::move(s)), text(status.toString()) {}
  const char* what() const noexcept override { return text.c_str(); }
  zcx::Status status;
  std::string text;
};

[[noreturn]] void raise(zcx::Status s) { throw StatusError(std::move(s)); }
[[noreturn]] void raise(zcx::StatusCode code, std::string message) {
  throw StatusError(zcx::Status(code, std::move(message)));
}
void check(const zcx::Status& s) {
  if (!s.ok()) raise(s);
}
template <class T>
T take(zcx::Result<T>&& r) {
  if (!r.ok()) raise(r.status());
  return std::move(*r);
}

// zcx/__init__.py hands us a factory (code, message) -> exception instance. Deliberately never
// released (a static py::object would be released after the interpreter is gone).
PyObject* g_error_factory = nullptr;

// ---------------------------------------------------------------- timeouts

// Seconds (int or float) or a datetime.timedelta. `none_ok`: None means "no limit".
std::chrono::milliseconds toMs(py::handle h, const char* what, bool none_ok = false) {
  constexpr auto kForever = std::chrono::milliseconds(std::numeric_limits<int64_t>::max() / 4);
  if (h.is_none()) {
    if (none_ok) return kForever;
    raise(zcx::StatusCode::kInvalidArgument, std::string(what) + " must be a number of seconds");
  }
  double secs;
  if (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())) {
    secs = py::cast<double>(h);
  } else if (py::hasattr(h, "total_seconds")) {
    secs = py::cast<double>(h.attr("total_seconds")());
  } else {
    raise(zcx::StatusCode::kInvalidArgument,
          std::string(what) + " must be seconds (int or float) or a datetime.timedelta");
  }
  if (!std::isfinite(secs) || secs < 0)
    raise(zcx::StatusCode::kInvalidArgument, std::string(what) + " must be >= 0 seconds");
  if (secs > 1e12) return kForever;
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(secs * 1000.0)));
}

// ---------------------------------------------------------------- engine

struct PyEngine;
std::mutex g_engines_mu;
std::set<PyEngine*> g_engines;  // live engines, for the atexit shutdown

// Destroys an Engine (joins its threads, runs its last callbacks) without the GIL, and never on
// one of its own progress threads (a completion callback may drop the last Python reference).
void destroyEngine(zcx::Engine* e) {
  if (t_in_callback > 0) {
    std::thread([e] { delete e; }).detach();
  } else if (Py_IsInitialized() && PyGILState_Check()) {
    py::gil_scoped_release release;
    delete e;
  } else {
    delete e;
  }
}

struct PyEngine {
  explicit PyEngine(std::unique_ptr<zcx::Engine> e) : engine(e.release(), destroyEngine) {
    std::lock_guard<std::mutex> lock(g_engines_mu);
    g_engines.insert(this);
  }
  ~PyEngine() {
    {
      std::lock_guard<std::mutex> lock(g_engines_mu);
      g_engines.erase(this);
    }
    close();
  }
  // A reference for one call: the engine stays alive until it returns, even if another thread
  // closes it meanwhile.
  std::shared_ptr<zcx::Engine> get() {
    std::lock_guard<std::mutex> lock(mu);
    if (!engine) raise(zcx::StatusCode::kCancelled, "this zcx.Engine was closed");
    return engine;
  }
  void close() {  // GIL held
    std::shared_ptr<zcx::Engine> e;
    {
      std::lock_guard<std::mutex> lock(mu);
      e.swap(engine);
    }
    e.reset();  // destroyEngine: without the GIL (if this was the last reference)
    exposed.clear();
  }
  std::mutex mu;
  std::shared_ptr<zcx::Engine> engine;
  bool manual = false;  // ProgressMode::kManual: the caller drives progress
  // The Regions exposed by name, kept registered while exposed (until unexpose or close):
  // engine.expose("x", engine.register(a)) must not lose the region at once. GIL-protected.
  std::map<std::string, py::object> exposed;
};

void shutdownAll() {
  std::vector<std::shared_ptr<zcx::Engine>> engines;
  {
    std::lock_guard<std::mutex> lock(g_engines_mu);
    for (PyEngine* p : g_engines) {
      std::lock_guard<std::mutex> l2(p->mu);
      if (p->engine) engines.push_back(std::move(p->engine));
    }
  }
  engines.clear();  // each destroyed without the GIL; their last callbacks may still use Python
  g_exiting.store(true);
}

// ---------------------------------------------------------------- registered memory

// One registration: the zcx MemoryRegion and the Python object whose memory it is (with its
// buffer export or DLPack hold). Shared by the zcx.Region and, for the length of a call, by the
// calls that use it, so a close() from another thread never pulls memory from under a post.
// The last holder deregisters first (without the GIL: it waits for the transport to let go) and
// only then lets go of the object.
struct Registration {
  zcx::MemoryRegion region;
  PyObject* obj = nullptr;  // a strong reference
  Py_buffer view{};
  bool has_view = false;
  DLManagedTensor* dl = nullptr;  // a consumed DLPack capsule (its deleter ends our hold)
  bool writable = true;

  void releasePython() {  // GIL held
    if (has_view) PyBuffer_Release(&view);
    has_view = false;
    if (dl && dl->deleter) dl->deleter(dl);
    dl = nullptr;
    Py_CLEAR(obj);
  }
};

void destroyRegistration(Registration* r) {
  bool gil = Py_IsInitialized() && PyGILState_Check();
  if (r->region.valid()) {
    if (gil) {
      py::gil_scoped_release release;
      r->region = zcx::MemoryRegion();  // cancels what still uses it, waits for the transport
    } else {
      r->region = zcx::MemoryRegion();
    }
  }
  if (gil) {
    r->releasePython();
  } else if (pythonUsable()) {
    ++t_in_callback;
    {
      py::gil_scoped_acquire acquire;
      if (pythonUsable()) r->releasePython();
    }
    --t_in_callback;
  }  // else: the interpreter is going away; the object's memory stays as it is
  delete r;
}

struct PyRegion {
  void close() { reg.reset(); }  // GIL held (deleter: see destroyRegistration)
  std::shared_ptr<Registration> get() const {
    if (!reg) raise(zcx::StatusCode::kInvalidArgument, "this zcx.Region was closed (deregistered)");
    return reg;
  }
  std::shared_ptr<Registration> reg;
};

// Where the memory of `obj` is: the buffer protocol (numpy, bytearray, memoryview, mmap...) or
// DLPack (torch tensors: CPU only, contiguous).
std::shared_ptr<Registration> exportMemory(py::handle obj, uint32_t access, void** data,
                                           size_t* size) {
  std::shared_ptr<Registration> r(new Registration, destroyRegistration);
  if (PyObject_CheckBuffer(obj.ptr())) {
    if (PyObject_GetBuffer(obj.ptr(), &r->view, PyBUF_ANY_CONTIGUOUS) != 0) {
      PyErr_Clear();
      raise(zcx::StatusCode::kInvalidArgument,
            "register: the buffer is not contiguous (register a contiguous copy, e.g. "
            "numpy.ascontiguousarray)");
    }
    r->has_view = true;
    r->writable = !r->view.readonly;
    *data = r->view.buf;
    *size = static_cast<size_t>(r->view.len);
  } else if (py::hasattr(obj, "__dlpack__")) {
    py::object capsule;
    try {
      capsule = obj.attr("__dlpack__")();
    } catch (py::error_already_set& e) {
      std::string why = e.what();
      raise(zcx::StatusCode::kInvalidArgument,
            "register: __dlpack__ failed (" + why +
                "); a tensor that requires grad can be registered as tensor.detach(), "
                "which shares its memory");
    }
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    if (m == nullptr) {
      PyErr_Clear();
      raise(zcx::StatusCode::kInvalidArgument, "register: __dlpack__ gave no 'dltensor' capsule");
    }
    // We own it now: the capsule must not free it too.
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    r->dl = m;
    const DLTensor& t = m->dl_tensor;
    if (t.device.device_type != kDLCPU && t.device.device_type != kDLCUDAHost) {
      raise(zcx::StatusCode::kInvalidArgument,
            "register: only CPU memory can be registered (DLPack device type " +
                std::to_string(t.device.device_type) + "); move the tensor to the CPU first");
    }
    size_t elem = (static_cast<size_t>(t.dtype.bits) * t.dtype.lanes + 7) / 8;
    size_t count = 1;
    for (int i = 0; i < t.ndim; ++i) count *= static_cast<size_t>(t.shape[i]);
    if (t.strides != nullptr && count > 0) {
      int64_t expect = 1;
      for (int i = t.ndim - 1; i >= 0; --i) {
        if (t.shape[i] != 1 && t.strides[i] != expect) {
          raise(zcx::StatusCode::kInvalidArgument,
                "register: the tensor is not contiguous (register tensor.contiguous())");
        }
        expect *= t.shape[i];
      }
    }
    *data = static_cast<uint8_t*>(t.data) + t.byte_offset;
    *size = count * elem;
    r->writable = true;
  } else {
    raise(zcx::StatusCode::kInvalidArgument,
          std::string("register: a ") + Py_TYPE(obj.ptr())->tp_name +
              " has neither the buffer protocol nor __dlpack__ (numpy arrays, bytearray, "
              "memoryview and CPU torch tensors can be registered)");
  }
  if ((access & zcx::kRemoteWrite) && !r->writable) {
    raise(zcx::StatusCode::kPermissionDenied,
          "register: a read-only buffer cannot be registered with RemoteWrite access (peers "
          "would write into it)");
  }
  r->obj = py::reinterpret_borrow<py::object>(obj).release().ptr();
  return r;
}

// ---------------------------------------------------------------- connections and requests

struct PyConnection {
  ~PyConnection() {
    {
      py::gil_scoped_release release;
      conn = zcx::Connection();
    }
    engine = py::none();
  }
  zcx::Connection conn;
  py::object engine;  // the zcx.Engine: alive while a connection of it is
  bool manual = false;
  // The regions unsignaled writes used since the last flush(): kept alive until that flush
  // completes (consecutive repeats kept once).
  py::list unsignaled_keep;
};

struct PyRemote {
  zcx::RemoteRegion remote;
  py::object connection;  // the zcx.Connection it was imported on
};

struct LoopWaker;
// The awaits of one request: zcx runs one completion callback per request, so it is registered
// once and wakes every event loop that awaits the request.
struct Wakers {
  std::mutex mu;
  std::vector<std::shared_ptr<LoopWaker>> list;
  bool registered = false;
  bool fired = false;
};

struct PyRequest {
  zcx::Request req;
  bool manual = false;  // its engine is in manual progress mode
  py::list keep;        // the regions, remote regions and connection it uses
  std::shared_ptr<Wakers> wakers = std::make_shared<Wakers>();
};

// The event-loop hand-off of `await request`: on completion, on a zcx thread, it calls
// loop.call_soon_threadsafe(setter, future) and nothing else; the future's owner resumes in its
// loop and reads the result there.
struct LoopWaker {
  PyObject* loop = nullptr;
  PyObject* setter = nullptr;
  PyObject* future = nullptr;

  void fire() {
    if (!pythonUsable()) return;  // the interpreter is going away: leave the references
    ++t_in_callback;
    {
      py::gil_scoped_acquire gil;
      if (pythonUsable()) {
        PyObject* r = PyObject_CallMethod(loop, "call_soon_threadsafe", "OO", setter, future);
        if (r == nullptr)
          PyErr_Clear();  // the loop is closed: nobody awaits any more
        else
          Py_DECREF(r);
        clearLocked();
      }
    }
    --t_in_callback;
  }
  void clearLocked() {
    Py_CLEAR(loop);
    Py_CLEAR(setter);
    Py_CLEAR(future);
  }
  ~LoopWaker() {
    if (loop == nullptr || !pythonUsable()) return;  // fired, or too late to touch Python
    ++t_in_callback;
    {
      py::gil_scoped_acquire gil;
      if (pythonUsable()) clearLocked();
    }
    --t_in_callback;
  }
};

PyRegion& regionArg(py::handle h, const char* what) {
  try {
    return py::cast<PyRegion&>(h);
  } catch (py::cast_error&) {
    raise(zcx::StatusCode::kInvalidArgument, std::string(what) + " must be a zcx.Region");
  }
}
PyRemote& remoteArg(py::handle h, const char* what) {
  try {
    return py::cast<PyRemote&>(h);
  } catch (py::cast_error&) {
    raise(zcx::StatusCode::kInvalidArgument, std::string(what) + " must be a zcx.RemoteRegion");
  }
}
void needWritable(const Registration& r, const char* op) {
  if (!r.writable) {
    raise(zcx::StatusCode::kPermissionDenied,
          std::string(op) +
              " would write into a read-only buffer (registered from a read-only "
              "object)");
  }
}

// (local, local_offset, remote, remote_offset, length) tuples (zcx.RmaOp is one) to zcx::RmaOp.
std::vector<zcx::RmaOp> parseOps(py::handle ops, PyRequest& out, bool into_local,
                                 std::vector<std::shared_ptr<Registration>>& held) {
  std::vector<zcx::RmaOp> v;
  py::sequence seq;
  try {
    seq = py::reinterpret_borrow<py::sequence>(ops);
    if (!PySequence_Check(ops.ptr())) throw py::cast_error();
  } catch (py::cast_error&) {
    raise(zcx::StatusCode::kInvalidArgument, "ops must be a sequence of zcx.RmaOp");
  }
  v.reserve(seq.size());
  held.reserve(seq.size());  // no reallocation: the ops point into it
  for (size_t i = 0; i < seq.size(); ++i) {
    py::object item = seq[i];
    if (!PySequence_Check(item.ptr()) || PySequence_Size(item.ptr()) != 5) {
      raise(zcx::StatusCode::kInvalidArgument,
            "ops[" + std::to_string(i) +
                "] must be a zcx.RmaOp (local, local_offset, remote, remote_offset, length)");
    }
    py::sequence t = py::reinterpret_borrow<py::sequence>(item);
    PyRegion& local = regionArg(t[0], "RmaOp.local");
    PyRemote& remote = remoteArg(t[2], "RmaOp.remote");
    if (held.empty() || held.back().get() != local.reg.get()) held.push_back(local.get());
    if (into_local) needWritable(*held.back(), "read_batch");
    zcx::RmaOp op;
    op.local = &held.back()->region;
    op.local_offset = py::cast<size_t>(t[1]);
    op.remote = &remote.remote;
    op.remote_offset = py::cast<size_t>(t[3]);
    op.length = py::cast<size_t>(t[4]);
    v.push_back(op);
    out.keep.append(t[0]);
    out.keep.append(t[2]);
  }
  return v;
}

// Text from the network (peer names) need not be UTF-8: undecodable bytes become U+FFFD
// instead of raising.
py::str lenientStr(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

// One TrafficStats as {"write": {...}, "read": ..., "send": ..., "recv": ..., "errors": {...}}.
py::dict trafficDict(const zcx::TrafficStats& t) {
  py::dict out;
  for (size_t k = 0; k < zcx::kOpKinds; ++k) {
    const zcx::OpStats& op = t.ops[k];
    py::list buckets;  // (upper bound in us, count); None = +Inf
    for (size_t i = 0; i < zcx::LatencyHistogram::kBuckets; ++i) {
      py::object le = i + 1 == zcx::LatencyHistogram::kBuckets
                          ? py::object(py::none())
                          : py::object(py::int_(zcx::LatencyHistogram::upperBoundUs(i)));
      buckets.append(py::make_tuple(le, op.latency.buckets[i]));
    }
    py::dict latency;
    latency["buckets"] = buckets;
    latency["count"] = op.latency.count;
    latency["sum_us"] = op.latency.sum_us;
    py::dict d;
    d["operations"] = op.operations;
    d["bytes"] = op.bytes;
    d["latency_us"] = latency;
    out[py::str(std::string(zcx::opKindName(static_cast<zcx::OpKind>(k))))] = d;
  }
  py::dict errors;  // only the codes that occurred
  for (size_t c = 1; c < zcx::kStatusCodes; ++c)
    if (t.errors[c])
      errors[py::str(std::string(zcx::statusCodeName(static_cast<zcx::StatusCode>(c))))] =
          t.errors[c];
  out["errors"] = errors;
  out["recv_zero_copy"] = t.recv_zero_copy;
  return out;
}

py::dict statsDict(const zcx::EngineStats& st) {
  py::list rails, conns;
  for (const auto& r : st.rails) {
    py::dict d;
    d["name"] = lenientStr(r.name);
    d["traffic"] = trafficDict(r.traffic);
    rails.append(d);
  }
  for (const auto& c : st.connections) {
    py::dict d;
    d["id"] = c.id;
    d["peer"] = lenientStr(c.peer);
    d["rail"] = c.rail;
    d["open"] = c.open;
    d["traffic"] = trafficDict(c.traffic);
    conns.append(d);
  }
  py::list devices;
  for (const auto& dv : st.devices) {
    py::dict d;
    d["device"] = lenientStr(dv.device);
    d["bytes"] = dv.bytes;
    devices.append(d);
  }
  py::dict out;
  out["rails"] = rails;
  out["connections"] = conns;
  out["devices"] = devices;
  return out;
}

std::unique_ptr<PyRequest> startRequest(py::object self) {
  auto r = std::make_unique<PyRequest>();
  r->manual = py::cast<PyConnection&>(self).manual;
  r->keep.append(self);
  return r;
}

size_t lengthOr(py::handle h, size_t rest) { return h.is_none() ? rest : py::cast<size_t>(h); }

}  // namespace

PYBIND11_MODULE(_zcx, m) {
  m.doc() = "zcx: zero-copy transfer of remote memory (RDMA verbs, UCX). See zcx/__init__.py.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      if (g_error_factory != nullptr) {
        PyObject* exc = PyObject_CallFunction(
            g_error_factory, "is", static_cast<int>(e.status.code()), e.status.message().c_str());
        if (exc != nullptr) {
          PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
          Py_DECREF(exc);
        }
        return;  // or the factory's own error is set
      }
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::enum_<zcx::StatusCode>(m, "StatusCode", "zcx::StatusCode: what an Error's .code says")
      .value("Ok", zcx::StatusCode::kOk)
      .value("InvalidArgument", zcx::StatusCode::kInvalidArgument)
      .value("OutOfRange", zcx::StatusCode::kOutOfRange)
      .value("NotFound", zcx::StatusCode::kNotFound)
      .value("Unavailable", zcx::StatusCode::kUnavailable)
      .value("TimedOut", zcx::StatusCode::kTimedOut)
      .value("Cancelled", zcx::StatusCode::kCancelled)
      .value("ConnectionRefused", zcx::StatusCode::kConnectionRefused)
      .value("ConnectionBroken", zcx::StatusCode::kConnectionBroken)
      .value("VersionMismatch", zcx::StatusCode::kVersionMismatch)
      .value("PermissionDenied", zcx::StatusCode::kPermissionDenied)
      .value("ResourceExhausted", zcx::StatusCode::kResourceExhausted)
      .value("RemoteAccessError", zcx::StatusCode::kRemoteAccessError)
      .value("ProtocolError", zcx::StatusCode::kProtocolError)
      .value("Internal", zcx::StatusCode::kInternal)
      .value("StillInFlight", zcx::StatusCode::kStillInFlight);

  py::enum_<zcx::Access>(m, "Access", py::arithmetic(), "What peers may do with a region")
      .value("LocalOnly", zcx::kLocalOnly)
      .value("RemoteRead", zcx::kRemoteRead)
      .value("RemoteWrite", zcx::kRemoteWrite)
      .value("RemoteReadWrite", zcx::kRemoteReadWrite);

  py::enum_<zcx::ProgressMode>(m, "ProgressMode")
      .value("Thread", zcx::ProgressMode::kThread)
      .value("Manual", zcx::ProgressMode::kManual);

  py::class_<zcx::Status>(m, "Status", "Ok, or an error code and message")
      .def_property_readonly("ok", &zcx::Status::ok)
      .def_property_readonly("code", &zcx::Status::code)
      .def_property_readonly("message", &zcx::Status::message)
      .def("__bool__", &zcx::Status::ok)
      .def("__str__", &zcx::Status::toString)
      .def("__repr__", [](const zcx::Status& s) { return "<zcx.Status " + s.toString() + ">"; });

  m.def("_set_error_factory", [](py::object f) {
    Py_XINCREF(f.ptr());
    g_error_factory = f.ptr();
  });
  m.def("_shutdown", &shutdownAll,
        "Shuts every engine down (the atexit hook: no zcx thread may outlive the interpreter)");
  m.def("status_code_name", [](zcx::StatusCode c) { return std::string(zcx::statusCodeName(c)); });

  // ---------------------------------------------------------------- Region
  py::class_<PyRegion>(m, "Region", "Registered memory (Engine.register); deregistered by close()")
      .def_property_readonly("size", [](const PyRegion& r) { return r.get()->region.size(); })
      .def_property_readonly(
          "access", [](const PyRegion& r) { return zcx::Access(r.get()->region.access()); })
      .def_property_readonly(
          "address",
          [](const PyRegion& r) { return reinterpret_cast<uintptr_t>(r.get()->region.data()); })
      .def_property_readonly("writable", [](const PyRegion& r) { return r.get()->writable; })
      .def_property_readonly(
          "obj", [](const PyRegion& r) { return py::reinterpret_borrow<py::object>(r.get()->obj); },
          "The registered object (kept alive while registered)")
      .def_property_readonly("closed", [](const PyRegion& r) { return r.reg == nullptr; })
      .def(
          "descriptor",
          [](const PyRegion& r) {
            auto bytes = r.get()->region.descriptor().encode();
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          "The encoded RegionDescriptor: give it to a peer (Connection.import_region)")
      .def("close", &PyRegion::close,
           "Deregisters now (operations still using it are cancelled first) and lets go of the "
           "object")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyRegion& r, py::args) { r.close(); });

  py::class_<PyRemote>(m, "RemoteRegion", "A peer's region, usable on the connection it came from")
      .def_property_readonly("size", [](const PyRemote& r) { return r.remote.size(); })
      .def_property_readonly("address",
                             [](const PyRemote& r) { return r.remote.descriptor().address; })
      .def_property_readonly(
          "access", [](const PyRemote& r) { return zcx::Access(r.remote.descriptor().access); });

  // ---------------------------------------------------------------- Request
  py::class_<PyRequest>(m, "Request",
                        "An operation in flight; completes exactly once (await it, or wait())")
      .def(
          "wait",
          [](PyRequest& r, py::handle timeout) {
            auto total = toMs(timeout, "timeout", true);
            auto start = std::chrono::steady_clock::now();
            for (;;) {
              auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start);
              auto slice = std::min<std::chrono::milliseconds>(
                  std::max<std::chrono::milliseconds>(total - waited, 0ms), 100ms);
              zcx::Status s;
              {
                py::gil_scoped_release release;
                s = r.req.wait(slice);
              }
              if (s.code() != zcx::StatusCode::kStillInFlight) {
                check(s);
                return r.req.bytes();
              }
              if (std::chrono::steady_clock::now() - start >= total) {
                raise(zcx::StatusCode::kStillInFlight,
                      "operation still in flight after " + std::to_string(total.count()) +
                          " ms of waiting; its buffers are still in use: wait again (it "
                          "completes by its own deadline, operation_timeout)");
              }
              if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            }
          },
          py::arg("timeout") = 60.0,
          "Waits up to `timeout` seconds (None: no limit). Returns the bytes moved (received, "
          "for recv); raises zcx.Error (code StillInFlight if the wait ran out: the operation "
          "goes on and its buffers stay in use)")
      .def("done", [](const PyRequest& r) { return r.req.done(); })
      .def_property_readonly("_manual_progress", [](const PyRequest& r) { return r.manual; })
      .def(
          "test",
          [](PyRequest& r) {
            std::optional<zcx::Status> s;
            {
              py::gil_scoped_release release;
              s = r.req.test();
            }
            if (!s) return false;
            check(*s);
            return true;
          },
          "True once complete (raises its error), False while in flight; never blocks")
      .def_property_readonly(
          "bytes", [](const PyRequest& r) { return r.req.bytes(); },
          "Bytes received (recv) or moved; valid once complete")
      .def(
          "_notify_loop",
          [](PyRequest& r, py::object loop, py::object setter, py::object future) {
            auto waker = std::make_shared<LoopWaker>();
            waker->loop = loop.release().ptr();
            waker->setter = setter.release().ptr();
            waker->future = future.release().ptr();
            std::shared_ptr<Wakers> w = r.wakers;
            bool first;
            {
              std::lock_guard<std::mutex> lock(w->mu);
              if (w->fired) return false;  // complete: the caller reads the result now
              w->list.push_back(std::move(waker));
              first = !w->registered;
              w->registered = true;
            }
            if (first) {
              zcx::Request req = r.req;
              py::gil_scoped_release release;
              req.onComplete([w](const zcx::Status&) {
                std::vector<std::shared_ptr<LoopWaker>> list;
                {
                  std::lock_guard<std::mutex> lock(w->mu);
                  w->fired = true;
                  list.swap(w->list);
                }
                for (auto& k : list) k->fire();
              });
            }
            return true;
          },
          "On completion: loop.call_soon_threadsafe(setter, future), from a zcx thread. False "
          "if the request already completed (nothing will be called)");

  // ---------------------------------------------------------------- Connection
  py::class_<PyConnection>(m, "Connection", "A connection to one peer (Engine.connect / accept)")
      .def(
          "remote_region",
          [](py::object self, std::string name, py::handle timeout) {
            auto& c = py::cast<PyConnection&>(self);
            auto ms = toMs(timeout, "timeout");
            zcx::Result<zcx::RemoteRegion> r = zcx::Status(zcx::StatusCode::kInternal, "unset");
            {
              py::gil_scoped_release release;
              r = c.conn.remoteRegion(name, ms);
            }
            auto p = std::make_unique<PyRemote>();
            p->remote = take(std::move(r));
            p->connection = self;
            return p;
          },
          py::arg("name"), py::arg("timeout") = 5.0,
          "The peer's region exposed under `name` (raises code NotFound if there is none)")
      .def(
          "import_region",
          [](py::object self, py::bytes descriptor) {
            auto& c = py::cast<PyConnection&>(self);
            std::string_view sv = descriptor;
            auto d = take(zcx::RegionDescriptor::decode(
                {reinterpret_cast<const uint8_t*>(sv.data()), sv.size()}));
            zcx::Result<zcx::RemoteRegion> r = zcx::Status(zcx::StatusCode::kInternal, "unset");
            {
              py::gil_scoped_release release;
              r = c.conn.importRegion(d);
            }
            auto p = std::make_unique<PyRemote>();
            p->remote = take(std::move(r));
            p->connection = self;
            return p;
          },
          py::arg("descriptor"), "Imports a Region.descriptor() the peer gave some other way")
      .def(
          "write",
          [](py::object self, py::object local, size_t local_offset, py::object remote,
             size_t remote_offset, size_t length) {
            auto& c = py::cast<PyConnection&>(self);
            auto& l = regionArg(local, "local");
            auto& rr = remoteArg(remote, "remote");
            auto req = startRequest(self);
            req->keep.append(local);
            req->keep.append(remote);
            auto lr = l.get();
            {
              py::gil_scoped_release release;
              req->req = c.conn.write(lr->region, local_offset, rr.remote, remote_offset, length);
            }
            return req;
          },
          py::arg("local"), py::arg("local_offset"), py::arg("remote"), py::arg("remote_offset"),
          py::arg("length"), "One-sided write: completes once the data is visible at the peer")
      .def(
          "write_unsignaled",
          [](py::object self, py::object local, size_t local_offset, py::object remote,
             size_t remote_offset, size_t length) {
            auto& c = py::cast<PyConnection&>(self);
            auto& l = regionArg(local, "local");
            auto& rr = remoteArg(remote, "remote");
            auto lr = l.get();
            zcx::Status st;
            {
              py::gil_scoped_release release;
              st = c.conn.writeUnsignaled(lr->region, local_offset, rr.remote, remote_offset,
                                          length);
            }
            check(st);
            for (py::handle h : {local, remote}) {
              const size_t n = py::len(c.unsignaled_keep);
              bool repeat = false;
              for (size_t k = n >= 2 ? n - 2 : 0; k < n; ++k)
                repeat |= c.unsignaled_keep[k].ptr() == h.ptr();
              if (!repeat) c.unsignaled_keep.append(h);
            }
          },
          py::arg("local"), py::arg("local_offset"), py::arg("remote"), py::arg("remote_offset"),
          py::arg("length"),
          "One-sided write with no Request (the raw rate): checked at once (raises on a bad "
          "argument), posted in batches by the engine, visible once a later flush() completes")
      .def(
          "flush",
          [](py::object self) {
            auto& c = py::cast<PyConnection&>(self);
            auto req = startRequest(self);
            for (py::handle h : c.unsignaled_keep) req->keep.append(h);
            c.unsignaled_keep = py::list();
            {
              py::gil_scoped_release release;
              req->req = c.conn.flush();
            }
            return req;
          },
          "Completes once every write_unsignaled before it is visible at the peer (raises the "
          "first error of those writes)")
      .def(
          "read",
          [](py::object self, py::object local, size_t local_offset, py::object remote,
             size_t remote_offset, size_t length) {
            auto& c = py::cast<PyConnection&>(self);
            auto& l = regionArg(local, "local");
            auto& rr = remoteArg(remote, "remote");
            auto lr = l.get();
            needWritable(*lr, "read");
            auto req = startRequest(self);
            req->keep.append(local);
            req->keep.append(remote);
            {
              py::gil_scoped_release release;
              req->req = c.conn.read(lr->region, local_offset, rr.remote, remote_offset, length);
            }
            return req;
          },
          py::arg("local"), py::arg("local_offset"), py::arg("remote"), py::arg("remote_offset"),
          py::arg("length"), "One-sided read into local memory")
      .def(
          "write_batch",
          [](py::object self, py::object ops) {
            auto& c = py::cast<PyConnection&>(self);
            auto req = startRequest(self);
            std::vector<std::shared_ptr<Registration>> held;
            auto v = parseOps(ops, *req, false, held);
            {
              py::gil_scoped_release release;
              req->req = c.conn.writeBatch(v);
            }
            return req;
          },
          py::arg("ops"), "Many writes (a sequence of zcx.RmaOp), one completion")
      .def(
          "read_batch",
          [](py::object self, py::object ops) {
            auto& c = py::cast<PyConnection&>(self);
            auto req = startRequest(self);
            std::vector<std::shared_ptr<Registration>> held;
            auto v = parseOps(ops, *req, true, held);
            {
              py::gil_scoped_release release;
              req->req = c.conn.readBatch(v);
            }
            return req;
          },
          py::arg("ops"), "Many reads (a sequence of zcx.RmaOp), one completion")
      .def(
          "write_with_notify",
          [](py::object self, py::object ops, uint32_t value) {
            auto& c = py::cast<PyConnection&>(self);
            auto req = startRequest(self);
            std::vector<std::shared_ptr<Registration>> held;
            auto v = parseOps(ops, *req, false, held);
            {
              py::gil_scoped_release release;
              req->req = c.conn.writeWithNotify(v, value);
            }
            return req;
          },
          py::arg("ops"), py::arg("value"),
          "Writes the batch, then delivers `value` (32 bits) to the peer once all of its data "
          "is visible there (peer: poll_notification / wait_notification)")
      .def(
          "send",
          [](py::object self, py::object local, size_t offset, py::handle length) {
            auto& c = py::cast<PyConnection&>(self);
            auto& l = regionArg(local, "local");
            auto lr = l.get();
            size_t size = lr->region.size();
            size_t n = lengthOr(length, offset <= size ? size - offset : 0);
            auto req = startRequest(self);
            req->keep.append(local);
            {
              py::gil_scoped_release release;
              req->req = c.conn.send(lr->region, offset, n);
            }
            return req;
          },
          py::arg("local"), py::arg("offset") = 0, py::arg("length") = py::none(),
          "Sends [offset, offset+length) of the region (default: to its end)")
      .def(
          "recv",
          [](py::object self, py::object local, size_t offset, py::handle capacity) {
            auto& c = py::cast<PyConnection&>(self);
            auto& l = regionArg(local, "local");
            auto lr = l.get();
            needWritable(*lr, "recv");
            size_t size = lr->region.size();
            size_t n = lengthOr(capacity, offset <= size ? size - offset : 0);
            auto req = startRequest(self);
            req->keep.append(local);
            {
              py::gil_scoped_release release;
              req->req = c.conn.recv(lr->region, offset, n);
            }
            return req;
          },
          py::arg("local"), py::arg("offset") = 0, py::arg("capacity") = py::none(),
          "Posts a receive into [offset, offset+capacity) (default: to the region's end); "
          "Request.bytes says how much arrived")
      .def("poll_notification",
           [](PyConnection& c) -> std::optional<uint32_t> {
             py::gil_scoped_release release;
             return c.conn.pollNotification();
           })
      .def(
          "wait_notification",
          [](PyConnection& c, py::handle timeout) {
            auto total = toMs(timeout, "timeout", true);
            auto start = std::chrono::steady_clock::now();
            for (;;) {
              auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start);
              auto slice = std::min<std::chrono::milliseconds>(
                  std::max<std::chrono::milliseconds>(total - waited, 0ms), 100ms);
              zcx::Result<uint32_t> v = zcx::Status(zcx::StatusCode::kInternal, "unset");
              {
                py::gil_scoped_release release;
                v = c.conn.waitNotification(slice);
              }
              if (v.ok()) return *v;
              if (v.status().code() != zcx::StatusCode::kTimedOut) raise(v.status());
              if (std::chrono::steady_clock::now() - start >= total) {
                raise(zcx::StatusCode::kTimedOut, "no notification from " + c.conn.peerName() +
                                                      " within " + std::to_string(total.count()) +
                                                      " ms");
              }
              if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            }
          },
          py::arg("timeout") = 60.0, "The next notification (raises code TimedOut)")
      .def(
          "close",
          [](PyConnection& c) {
            py::gil_scoped_release release;
            c.conn.close();
          },
          "Closes: outstanding operations complete with code Cancelled")
      .def("status", [](const PyConnection& c) { return c.conn.status(); })
      .def_property_readonly("peer_name", [](const PyConnection& c) { return c.conn.peerName(); })
      .def_property_readonly("max_message_size",
                             [](const PyConnection& c) { return c.conn.maxMessageSize(); })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyConnection& c, py::args) {
        py::gil_scoped_release release;
        c.conn.close();
      });

  // ---------------------------------------------------------------- Engine
  zcx::EngineOptions d;
  py::class_<PyEngine>(m, "Engine",
                       "One transport, registered memory, a listener and its connections. "
                       "Keyword arguments are zcx::EngineOptions; durations are in seconds.")
      .def(
          py::init(
              [](std::string transport, std::string device, std::string devices, int device_port,
                 int gid_index, std::map<std::string, std::string> transport_params,
                 std::string listen_address, std::string name, py::object progress,
                 py::object connect_timeout, py::object peer_timeout, size_t max_pending_handshakes,
                 size_t max_pending_accepts, size_t recv_window, py::object operation_timeout,
                 size_t max_message_size, std::string metrics_address) {
                zcx::EngineOptions o;
                o.transport = std::move(transport);
                o.device = std::move(device);
                o.devices = std::move(devices);
                o.device_port = device_port;
                o.gid_index = gid_index;
                o.transport_params = std::move(transport_params);
                o.listen_address = std::move(listen_address);
                o.name = std::move(name);
                if (py::isinstance<py::str>(progress)) {
                  auto p = py::cast<std::string>(progress);
                  if (p == "thread")
                    o.progress = zcx::ProgressMode::kThread;
                  else if (p == "manual")
                    o.progress = zcx::ProgressMode::kManual;
                  else
                    raise(zcx::StatusCode::kInvalidArgument,
                          "progress must be 'thread', 'manual' or a zcx.ProgressMode");
                } else {
                  o.progress = py::cast<zcx::ProgressMode>(progress);
                }
                o.connect_timeout = toMs(connect_timeout, "connect_timeout");
                o.peer_timeout = toMs(peer_timeout, "peer_timeout");
                o.operation_timeout = toMs(operation_timeout, "operation_timeout");
                o.max_pending_handshakes = max_pending_handshakes;
                o.max_pending_accepts = max_pending_accepts;
                o.recv_window = recv_window;
                o.max_message_size = max_message_size;
                o.metrics_address = std::move(metrics_address);
                zcx::Result<std::unique_ptr<zcx::Engine>> e =
                    zcx::Status(zcx::StatusCode::kInternal, "unset");
                {
                  py::gil_scoped_release release;
                  e = zcx::Engine::create(o);
                }
                auto p = std::make_unique<PyEngine>(take(std::move(e)));
                p->manual = o.progress == zcx::ProgressMode::kManual;
                return p;
              }),
          py::kw_only(), py::arg("transport") = d.transport, py::arg("device") = d.device,
          py::arg("devices") = d.devices, py::arg("device_port") = d.device_port,
          py::arg("gid_index") = d.gid_index, py::arg("transport_params") = d.transport_params,
          py::arg("listen_address") = d.listen_address, py::arg("name") = d.name,
          py::arg("progress") = "thread",
          py::arg("connect_timeout") = d.connect_timeout.count() / 1000.0,
          py::arg("peer_timeout") = d.peer_timeout.count() / 1000.0,
          py::arg("max_pending_handshakes") = d.max_pending_handshakes,
          py::arg("max_pending_accepts") = d.max_pending_accepts,
          py::arg("recv_window") = d.recv_window,
          py::arg("operation_timeout") = d.operation_timeout.count() / 1000.0,
          py::arg("max_message_size") = d.max_message_size,
          py::arg("metrics_address") = d.metrics_address)
      .def_property_readonly("transport_name",
                             [](PyEngine& e) { return std::string(e.get()->transportName()); })
      .def_property_readonly("transport_description",
                             [](PyEngine& e) { return e.get()->transportDescription(); })
      .def_property_readonly(
          "listen_address", [](PyEngine& e) { return e.get()->listenAddress(); },
          "'host:port' actually listened on ('' without a listener)")
      .def_property_readonly(
          "metrics_address", [](PyEngine& e) { return e.get()->metricsAddress(); },
          "'host:port' serving GET /metrics ('' without metrics_address)")
      .def(
          "stats",
          [](PyEngine& e) {
            auto engine = e.get();
            zcx::EngineStats st;
            {
              py::gil_scoped_release release;
              st = engine->stats();
            }
            return statsDict(st);
          },
          "Traffic counters as a dict: {'rails': [{'name', 'traffic'}], 'connections': [{'id', "
          "'peer', 'rail', 'open', 'traffic'}], 'devices': [{'device', 'bytes'}]}; traffic maps "
          "'write'/'read'/'send'/'recv' to "
          "{'operations', 'bytes', 'latency_us': {'buckets': [(le_us or None, count)], 'count', "
          "'sum_us'}}, 'errors' to {code name: count} and 'recv_zero_copy' to the receives "
          "fetched straight into their buffer")
      .def(
          "metrics_text",
          [](PyEngine& e) {
            auto engine = e.get();
            py::gil_scoped_release release;
            return engine->metricsText();
          },
          "stats() in the Prometheus text exposition format (what GET /metrics serves)")
      .def(
          "register",
          [](PyEngine& e, py::handle obj, uint32_t access) {
            auto engine = e.get();
            void* data = nullptr;
            size_t size = 0;
            auto r = exportMemory(obj, access, &data, &size);
            zcx::Result<zcx::MemoryRegion> mr = zcx::Status(zcx::StatusCode::kInternal, "unset");
            {
              py::gil_scoped_release release;
              mr = engine->registerMemory(data, size, access);
            }
            r->region = take(std::move(mr));
            auto p = std::make_unique<PyRegion>();
            p->reg = std::move(r);
            return p;
          },
          py::arg("obj"), py::arg("access") = zcx::kLocalOnly,
          "Registers the memory of a buffer-protocol object (numpy array, bytearray, "
          "memoryview) or a CPU torch tensor (DLPack). The object stays referenced until the "
          "Region is closed. A read-only buffer cannot take RemoteWrite access, nor be the "
          "target of read/recv.")
      .def(
          "expose",
          [](PyEngine& e, std::string name, py::object region, std::optional<uint32_t> access,
             std::optional<std::vector<std::string>> peers) {
            auto engine = e.get();
            auto r = regionArg(region, "region").get();
            zcx::ExposeOptions options;
            options.access = access;
            if (peers) options.peers = *peers;
            zcx::Status s;
            {
              py::gil_scoped_release release;
              s = engine->expose(name, r->region, options);
            }
            check(s);
            e.exposed[name] = region;
          },
          py::arg("name"), py::arg("region"), py::arg("access") = py::none(),
          py::arg("peers") = py::none(),
          "Publishes a region under `name` to current and future peers; the engine keeps the "
          "Region (registered) until unexpose(name) or close(). `access` exposes a subset of "
          "the region's rights (e.g. RemoteRead of a read-write region); `peers` (a list of "
          "peer names) limits who may look it up and reach it. unexpose revokes what it "
          "handed out.")
      .def(
          "unexpose",
          [](PyEngine& e, std::string name) {
            auto engine = e.get();
            {
              py::gil_scoped_release release;
              engine->unexpose(name);
            }
            e.exposed.erase(name);
          },
          py::arg("name"))
      .def(
          "connect",
          [](py::object self, std::string host_port) {
            auto engine = py::cast<PyEngine&>(self).get();
            zcx::Result<zcx::Connection> c = zcx::Status(zcx::StatusCode::kInternal, "unset");
            {
              py::gil_scoped_release release;
              c = engine->connect(host_port);
            }
            auto p = std::make_unique<PyConnection>();
            p->conn = take(std::move(c));
            p->engine = self;
            p->manual = py::cast<PyEngine&>(self).manual;
            return p;
          },
          py::arg("host_port"), "Connects to a listening engine at 'host:port'")
      .def(
          "accept",
          [](py::object self, py::handle timeout) {
            auto engine = py::cast<PyEngine&>(self).get();
            auto ms = toMs(timeout, "timeout");
            zcx::Result<zcx::Connection> c = zcx::Status(zcx::StatusCode::kInternal, "unset");
            {
              py::gil_scoped_release release;
              c = engine->accept(ms);
            }
            auto p = std::make_unique<PyConnection>();
            p->conn = take(std::move(c));
            p->engine = self;
            p->manual = py::cast<PyEngine&>(self).manual;
            return p;
          },
          py::arg("timeout") = 60.0, "The next connection a peer made to our listener")
      .def(
          "progress",
          [](PyEngine& e) {
            auto engine = e.get();
            py::gil_scoped_release release;
            return engine->progress();
          },
          "Manual progress mode: one round of progress")
      .def("close", &PyEngine::close,
           "Shuts the engine down: its connections close, their operations complete with code "
           "Cancelled")
      .def_property_readonly("closed",
                             [](PyEngine& e) {
                               std::lock_guard<std::mutex> lock(e.mu);
                               return e.engine == nullptr;
                             })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyEngine& e, py::args) { e.close(); })
      .def_static(
          "probe_transport",
          [](std::string transport) {
            zcx::Status s;
            {
              py::gil_scoped_release release;
              s = zcx::Engine::probeTransport(transport);
            }
            return s;
          },
          py::arg("transport"), "Whether `transport` can be created here: a zcx.Status");
}
