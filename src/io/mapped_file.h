// Read-only memory maps of whole files, for the checkpoint and model readers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace halo {

struct MappedBytes {
  const std::byte* base = nullptr;
  uint64_t size = 0;
};

// Maps `path` read-only (MAP_PRIVATE); the caller unmaps it with munmap (an
// empty file, allowed when min_bytes is 0, gives base null and size 0: nothing
// to unmap). Errors name the file: it cannot be opened, is not a regular file,
// is shorter than `min_bytes` ("file is N bytes, too short for <too_short>"),
// or mmap fails.
MappedBytes map_file_readonly(const std::string& path, uint64_t min_bytes, const char* too_short);

}  // namespace halo
