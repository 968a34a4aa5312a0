#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace halo {

namespace {

// strerror is not thread-safe; the system category's message is.
std::string reason(int err) { return std::system_category().message(err); }

std::string parent_dir(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// The temporary file: closed and removed on scope exit unless renamed into place.
struct TempFile {
  int fd = -1;
  std::string path;
  bool renamed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!path.empty() && !renamed) ::unlink(path.c_str());
  }
};

// Opens a fresh temporary file beside `target`: hidden (leading dot), named
// after the target so a leftover from a killed process says what it was, and
// created with O_EXCL so concurrent writers never share one.
void open_temp(const std::string& target, TempFile& tmp) {
  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path p(target);
  HALO_CHECK(!p.filename().empty(), "write_file_atomic: '", target, "' names no file");
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::string name = parent_dir(target) + "/." + p.filename().string() + ".tmp-" +
                             std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      tmp.fd = fd;
      tmp.path = name;
      return;
    }
    if (errno != EEXIST) HALO_FAIL(target, ": cannot create temporary file ", name, ": ", reason(errno));
  }
  HALO_FAIL(target, ": cannot create a temporary file beside it (all names taken)");
}

void fsync_directory(const std::string& dir, const std::string& target) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  HALO_CHECK(fd >= 0, target, ": cannot open directory ", dir, " to sync it: ", reason(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot sync a directory (EINVAL); the rename is done then.
  HALO_CHECK(rc == 0 || err == EINVAL, target, ": syncing directory ", dir, " failed: ", reason(err));
}

}  // namespace

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      HALO_FAIL(path, ": write failed: ", reason(errno));
    }
    HALO_CHECK(w > 0, path, ": write wrote nothing");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void write_file_atomic(const std::string& path, const std::function<void(const WriteBytes&)>& produce) {
  // Renaming over a device, FIFO or directory would replace the node itself
  // (as root, /dev/full with a plain file): refuse. A symlink is replaced by
  // the new file, leaving what it pointed to (a shared cache blob) untouched.
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  HALO_CHECK(!exists || S_ISREG(st.st_mode), path, ": exists and is not a regular file; not replacing it");
  TempFile tmp;
  open_temp(path, tmp);
  if (exists) ::fchmod(tmp.fd, st.st_mode & 07777);  // an overwrite keeps the old file's permissions

  produce([&](const void* data, size_t n) { write_all(tmp.fd, data, n, path); });

  // Data must be on disk before the rename makes it visible; a delayed write
  // error (ENOSPC, EIO on network file systems) shows up here or at close.
  HALO_CHECK(::fsync(tmp.fd) == 0, path, ": fsync failed: ", reason(errno));
  const int fd = tmp.fd;
  tmp.fd = -1;
  HALO_CHECK(::close(fd) == 0, path, ": close failed: ", reason(errno));
  HALO_CHECK(::rename(tmp.path.c_str(), path.c_str()) == 0, path, ": cannot rename ", tmp.path,
             " over it: ", reason(errno));
  tmp.renamed = true;
  fsync_directory(parent_dir(path), path);
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  write_file_atomic(path, [&](const WriteBytes& write) { write(contents.data(), contents.size()); });
}

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  HALO_CHECK(fd >= 0, path, ": cannot open: ", reason(errno));
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      HALO_FAIL(path, ": read failed: ", reason(err));
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return out;
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  HALO_CHECK(!ec, path, ": cannot create directory: ", ec.message());
  HALO_CHECK(std::filesystem::is_directory(path), path, ": exists and is not a directory");
}

}  // namespace halo
