// A BytePipe over a connected stream socket (tests: two processes after fork()). Messages are a
// u32 little-endian length, then the bytes. Owns the fd.
#pragma once

#include <memory>
#include <utility>

#include "transport/byte_pipe.h"

namespace kvb::test {

std::unique_ptr<transport::BytePipe> make_fd_pipe(int fd);
// socketpair(AF_UNIX, SOCK_STREAM): both ends as fds (wrap each with make_fd_pipe in its process).
std::pair<int, int> socket_pair();

}  // namespace kvb::test
