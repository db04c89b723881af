// The zcx_perf command-line flags (defined in zcx_perf.cc) that the parts of the tool read.
#pragma once

#include <gflags/gflags.h>

DECLARE_int64(iters);
DECLARE_double(duration);
DECLARE_bool(unsignaled);
DECLARE_string(transport);
DECLARE_string(device);
DECLARE_int32(gid_index);
DECLARE_int32(port);
DECLARE_string(listen);
DECLARE_string(auth_secret_file);
DECLARE_string(name);
DECLARE_string(metadata);
DECLARE_string(advertise_host);
DECLARE_string(expose_to);
DECLARE_bool(json);
DECLARE_int32(progress_spin_us);
DECLARE_bool(cpu_util);
DECLARE_bool(persistent);
DECLARE_string(ucx_tls);
DECLARE_string(ucx_net_devices);
DECLARE_string(ucx_rma);
DECLARE_string(transport_params);
DECLARE_string(mem);
DECLARE_uint64(seed);
DECLARE_int32(ready_fd);
DECLARE_string(mpi_pattern);
DECLARE_bool(quiet);
DECLARE_bool(metrics);
