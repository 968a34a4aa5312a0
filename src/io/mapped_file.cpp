#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "core/error.h"

namespace halo {

MappedBytes map_file_readonly(const std::string& path, uint64_t min_bytes, const char* too_short) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  HALO_CHECK(fd >= 0, path, ": cannot open: ", std::system_category().message(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    HALO_FAIL(path, ": not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < min_bytes) {
    ::close(fd);
    HALO_FAIL(path, ": file is ", size, " bytes, too short for ", too_short);
  }
  if (size == 0) {  // nothing to map (mmap refuses a length of 0)
    ::close(fd);
    return MappedBytes{};
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the map keeps the file open
  HALO_CHECK(p != MAP_FAILED, path, ": mmap failed: ", std::system_category().message(err));
  return MappedBytes{static_cast<const std::byte*>(p), size};
}

}  // namespace halo
