#include "client/snapshot_io.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "proto/wire_convert.h"

namespace kvb::client {

namespace {

Status errno_status(std::string_view what, const std::string& path, int err) {
  std::string m = fmt::format("{} {}: {}", what, path, std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return not_found(std::move(m));
    case EACCES:
    case EPERM:
    case EROFS:
      return Status(StatusCode::kPermissionDenied, std::move(m));
    case ENOSPC:
      return resource_exhausted(std::move(m));
    default:
      return internal_error(std::move(m));
  }
}

Status write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno_status("writing", path, errno);
    p += w;
    n -= size_t(w);
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SnapshotWriter

Result<std::unique_ptr<SnapshotWriter>> SnapshotWriter::create(const std::string& path) {
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);  // mode 0600
  if (fd < 0) return errno_status("creating a temporary file for", path, errno);
  std::unique_ptr<SnapshotWriter> w(new SnapshotWriter(path, std::move(tmp), fd));
  KVB_RETURN_IF_ERROR(write_all(fd, wire::kSnapshotMagic.data(), wire::kSnapshotMagic.size(), w->tmp_));
  w->bytes_ = wire::kSnapshotMagic.size();
  return w;
}

SnapshotWriter::~SnapshotWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

Status SnapshotWriter::append(const ::kvbridge::v1::CacheChunk& msg) {
  if (fd_ < 0) return failed_precondition("snapshot writer already committed");
  const size_t len = msg.ByteSizeLong();
  if (len > wire::kMaxSnapshotMessageBytes) {
    return invalid_argument(fmt::format("snapshot: a message of {} bytes exceeds the limit of {}; use smaller chunks",
                                        len, wire::kMaxSnapshotMessageBytes));
  }
  scratch_.resize(4);
  for (int i = 0; i < 4; ++i) scratch_[size_t(i)] = char(uint8_t(len >> (8 * i)));
  if (!msg.AppendToString(&scratch_)) return internal_error("snapshot: cannot serialize a message");
  KVB_RETURN_IF_ERROR(write_all(fd_, scratch_.data(), scratch_.size(), tmp_));
  bytes_ += scratch_.size();
  return Status::Ok();
}

Status SnapshotWriter::commit() {
  if (fd_ < 0) return failed_precondition("snapshot writer already committed");
  if (::fsync(fd_) != 0) return errno_status("syncing", tmp_, errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return errno_status("closing", tmp_, err);
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return errno_status("renaming onto", path_, err);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// SnapshotReader

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status("opening", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_argument(fmt::format("{}: not a regular file", path));
  }
  std::unique_ptr<SnapshotReader> r(new SnapshotReader(path, fd, uint64_t(st.st_size)));
  char magic[wire::kSnapshotMagic.size()];
  if (r->size_ < sizeof magic) return invalid_argument(fmt::format("{}: too short for a snapshot", path));
  KVB_RETURN_IF_ERROR(r->read_exact(magic, sizeof magic));
  if (std::string_view(magic, sizeof magic) != wire::kSnapshotMagic) {
    return invalid_argument(fmt::format("{}: bad magic (not a kvbridge cache snapshot)", path));
  }
  return r;
}

SnapshotReader::~SnapshotReader() {
  if (fd_ >= 0) ::close(fd_);
}

Status SnapshotReader::read_exact(char* dst, size_t n) {
  if (n > size_ - offset_) {
    return invalid_argument(
        fmt::format("{}: truncated: {} bytes wanted at offset {}, {} left", path_, n, offset_, size_ - offset_));
  }
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd_, dst + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno_status("reading", path_, errno);
    if (r == 0) return invalid_argument(fmt::format("{}: the file shrank while being read", path_));
    got += size_t(r);
  }
  offset_ += n;
  return Status::Ok();
}

Result<bool> SnapshotReader::next(::kvbridge::v1::CacheChunk& msg) {
  if (offset_ == size_) return false;
  char le[4];
  KVB_RETURN_IF_ERROR(read_exact(le, 4));
  uint32_t len = 0;
  for (int i = 0; i < 4; ++i) len |= uint32_t(uint8_t(le[i])) << (8 * i);
  if (len > wire::kMaxSnapshotMessageBytes) {
    return invalid_argument(
        fmt::format("{}: a message of {} bytes over the limit of {}", path_, len, wire::kMaxSnapshotMessageBytes));
  }
  scratch_.resize(len);
  KVB_RETURN_IF_ERROR(read_exact(scratch_.data(), len));
  if (!msg.ParseFromString(scratch_)) return invalid_argument(fmt::format("{}: a message does not parse", path_));
  return true;
}

}  // namespace kvb::client
