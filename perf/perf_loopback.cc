// zcx_perf --loopback: the server is this binary again (fork + exec, so that it is a separate
// process like on two machines), told its settings on the command line; it reports the port it
// listens on through a pipe.
#include "perf_loopback.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "perf_engine.h"
#include "perf_flags.h"

namespace zcx::perf {

int runLoopback(const ClientConfig& cfg) {
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("zcx_perf: pipe");
    return kExitFail;
  }
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--transport=" + FLAGS_transport,
                                   "--device=" + FLAGS_device,
                                   "--gid_index=" + std::to_string(FLAGS_gid_index),
                                   "--ucx_tls=" + FLAGS_ucx_tls,
                                   "--ucx_net_devices=" + FLAGS_ucx_net_devices,
                                   "--ucx_rma=" + FLAGS_ucx_rma,
                                   "--transport_params=" + FLAGS_transport_params,
                                   "--mem=" + FLAGS_mem,
                                   std::string("--quiet=") + (FLAGS_quiet ? "true" : "false"),
                                   std::string("--metrics=") + (FLAGS_metrics ? "true" : "false"),
                                   "--progress_spin_us=" + std::to_string(FLAGS_progress_spin_us),
                                   "--auth-secret-file=" + FLAGS_auth_secret_file,
                                   "--listen=" + listenHost() + ":0",
                                   "--ready_fd=" + std::to_string(fds[1])};
  std::string connect_host = listenHost();
  if (connect_host == "0.0.0.0") connect_host = "127.0.0.1";
  if (connect_host == "[::]") connect_host = "[::1]";
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("zcx_perf: fork");
    return kExitFail;
  }
  if (pid == 0) {
    close(fds[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    std::perror("zcx_perf: exec");
    _exit(127);
  }
  close(fds[1]);
  char buf[32] = {};
  ssize_t n = 0;
  pollfd p{fds[0], POLLIN, 0};
  if (poll(&p, 1, 60000) > 0) n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  int port = n > 0 ? std::atoi(buf) : 0;
  int status = 0;
  if (port <= 0) {
    std::fprintf(stderr, "zcx_perf --loopback: the server process did not start\n");
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    return kExitFail;
  }
  int rc = runClient(cfg, connect_host + ":" + std::to_string(port));
  if (rc != 0) kill(pid, SIGTERM);
  waitpid(pid, &status, 0);
  if (rc != 0) return rc;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "zcx_perf --loopback: the server process failed (status %d)\n", status);
    return kExitFail;
  }
  return 0;
}

}  // namespace zcx::perf
