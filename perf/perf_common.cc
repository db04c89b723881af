#include "perf_common.h"

#include <sys/resource.h>

namespace zcx::perf {

CpuSample CpuSample::now() {
  CpuSample c;
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto secs = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  c.cpu_s = secs(u.ru_utime) + secs(u.ru_stime);
  c.wall = std::chrono::steady_clock::now();
  return c;
}

}  // namespace zcx::perf
