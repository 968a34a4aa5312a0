// Atomic file writes: a reader (or a crash, or a full disk) sees either the old
// file or the complete new one, never a torn mix. The bytes go to a temporary
// file in the target's directory (rename is atomic only within one file
// system), which is fsynced, renamed over the target, and the directory fsynced
// so the rename itself survives a power loss. On any failure the temporary file
// is removed, the previous file is left as it was, and an Error names the path
// and the system's reason (strerror).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace halo {

// Appends n bytes to the file being written; throws on a failed write.
using WriteBytes = std::function<void(const void* data, size_t n)>;

// Writes `path` atomically with the bytes `produce` passes to its argument,
// which may be called any number of times (so large files stream without one
// big buffer). An exception from `produce` aborts the write like an I/O error.
void write_file_atomic(const std::string& path, const std::function<void(const WriteBytes&)>& produce);
void write_file_atomic(const std::string& path, std::string_view contents);

// Writes all n bytes to the descriptor, retrying short writes and EINTR;
// `path` only names the file in the error (e.g. ENOSPC: "No space left on device").
void write_all(int fd, const void* data, size_t n, const std::string& path);

// The whole file as a string; the error names the path.
std::string read_file(const std::string& path);

// Creates `path` and its missing parents (as mkdir -p); fine if it exists.
void make_directories(const std::string& path);

}  // namespace halo
