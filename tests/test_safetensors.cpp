#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/numerics.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "testing.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class SafetensorsTest : public testing::TempDirTest {
 protected:
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A file by hand: the 8-byte length, the header text, then `data_bytes` bytes.
std::string raw_file(const std::string& header, size_t data_bytes, uint64_t header_len = UINT64_MAX) {
  const uint64_t n = header_len == UINT64_MAX ? header.size() : header_len;
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  out += header;
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<char>(i * 7 + 1));
  return out;
}

// Runs f, expecting a halo::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << *parts.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

NamedTensors every_dtype() {
  NamedTensors t;
  t["a.f32"] = testing::random_normal({3, 5}, 1, 1.0f, DType::f32);
  t["b.bf16"] = testing::random_normal({7}, 2, 1.0f, DType::bf16);  // odd byte count before 4-byte data
  t["c.f16"] = testing::random_normal({2, 3, 4}, 3, 1.0f, DType::f16);
  t["d.e4m3"] = testing::random_normal({5}, 4, 4.0f, DType::e4m3);
  t["e.e5m2"] = testing::random_normal({3}, 5, 4.0f, DType::e5m2);
  t["f.i8"] = testing::random_normal({9}, 6, 40.0f, DType::i8);
  t["g.i32"] = testing::random_normal({2, 2}, 7, 1000.0f, DType::i32);
  t["h.scalar"] = Tensor::from_floats({}, {3.5f});
  t["i.empty"] = Tensor::empty({0, 4}, DType::bf16);
  return t;
}

TEST_F(SafetensorsTest, RoundTripEveryDtype) {
  const NamedTensors t = every_dtype();
  write_safetensors(path("m.safetensors"), t);
  const SafetensorsReader r(path("m.safetensors"));
  std::vector<std::string> names;
  for (const auto& kv : t) names.push_back(kv.first);
  EXPECT_EQ(r.names(), names);
  EXPECT_EQ(r.metadata(), (SafetensorsMetadata{{"format", "pt"}}));
  for (const auto& [name, tensor] : t) {
    const SafetensorsEntry& e = r.entry(name);
    EXPECT_EQ(e.dtype, dtype_to_safetensors(tensor.dtype())) << name;
    EXPECT_EQ(e.shape, tensor.shape()) << name;
    EXPECT_EQ(e.nbytes, tensor.nbytes()) << name;
    EXPECT_EQ(e.file, path("m.safetensors"));
    // Zero-copy: the entry points into the map, aligned to its element size.
    EXPECT_EQ(std::memcmp(e.data, tensor.data(), e.nbytes), 0) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(e.data) % dtype_size(tensor.dtype()), 0u) << name;
    EXPECT_TRUE(same_bytes(r.read(name), tensor)) << name;
    EXPECT_TRUE(same_bytes(r.read(name, tensor.dtype()), tensor)) << name;
  }
  EXPECT_TRUE(r.contains("a.f32"));
  EXPECT_FALSE(r.contains("z"));
  expect_error([&] { r.entry("z"); }, {"m.safetensors", "no tensor 'z'"});
  EXPECT_EQ(listing(), std::vector<std::string>{"m.safetensors"});  // no temporary left behind
}

TEST_F(SafetensorsTest, HeaderLayoutAsHuggingFace) {
  NamedTensors t;
  t["z.bias"] = testing::random_normal({3}, 1, 1.0f, DType::f16);
  t["a.weight"] = testing::random_normal({2, 3}, 2, 1.0f, DType::bf16);
  t["m.weight"] = testing::random_normal({5}, 3, 1.0f, DType::f32);
  write_safetensors(path("m.safetensors"), t, {{"format", "pt"}, {"step", "12"}});
  std::ifstream in(path("m.safetensors"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);  // data starts 8-aligned
  const std::string header = bytes.substr(8, n);
  const size_t end = header.find_last_not_of(' ');
  EXPECT_EQ(header[end], '}');  // padded with spaces only
  EXPECT_LT(n - end - 1, 8u);
  // Keys sorted.
  const size_t meta = header.find("\"__metadata__\""), a = header.find("\"a.weight\""),
               m = header.find("\"m.weight\""), z = header.find("\"z.bias\"");
  EXPECT_LT(meta, a);
  EXPECT_LT(a, m);
  EXPECT_LT(m, z);
  const json j = json::parse(header);
  EXPECT_EQ(j["__metadata__"]["step"], "12");
  EXPECT_EQ(j["a.weight"]["dtype"], "BF16");
  EXPECT_EQ(j["a.weight"]["shape"], json({2, 3}));
  // Data: 4-byte elements first, then 2-byte ones by name; contiguous, covering the buffer.
  EXPECT_EQ(j["m.weight"]["data_offsets"], json({0, 20}));
  EXPECT_EQ(j["a.weight"]["data_offsets"], json({20, 32}));
  EXPECT_EQ(j["z.bias"]["data_offsets"], json({32, 38}));
  EXPECT_EQ(bytes.size(), 8 + n + 38);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + 20, t["a.weight"].data(), 12), 0);

  write_safetensors(path("bare.safetensors"), t, {});
  EXPECT_TRUE(SafetensorsReader(path("bare.safetensors")).metadata().empty());
}

TEST_F(SafetensorsTest, ConversionsAreExact) {
  // Values that need rounding in bf16 and f16, subnormals, and specials.
  std::vector<float> v = {1.0f,     1.0f + 0x1p-8f, 1.0f + 0x1.8p-8f, -3.14159265f, 65504.0f, 70000.0f, 1e-7f,
                          0x1p-24f, -0.0f,          INFINITY,         123456.789f,  1e-40f};
  NamedTensors t;
  t["x"] = Tensor::from_floats({static_cast<int64_t>(v.size())}, v);
  t["h"] = t["x"].to(DType::f16);
  t["b"] = t["x"].to(DType::bf16);
  t["n"] = Tensor::from_floats({2}, {1, 2}, DType::i32);
  write_safetensors(path("m.safetensors"), t);
  const SafetensorsReader r(path("m.safetensors"));
  const Tensor as_bf16 = r.read("x", DType::bf16), as_f16 = r.read("x", DType::f16);
  const Tensor b_as_f32 = r.read("b", DType::f32), h_as_f32 = r.read("h", DType::f32);
  const Tensor h_as_bf16 = r.read("h", DType::bf16), b_as_f16 = r.read("b", DType::f16);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(as_bf16.data_as<uint16_t>()[i], float_to_bf16_bits(v[i])) << v[i];
    EXPECT_EQ(as_f16.data_as<uint16_t>()[i], float_to_f16_bits(v[i])) << v[i];
    const uint16_t b = float_to_bf16_bits(v[i]), h = float_to_f16_bits(v[i]);
    EXPECT_EQ(float_bits(b_as_f32.data_as<float>()[i]), float_bits(bf16_bits_to_float(b))) << v[i];
    EXPECT_EQ(float_bits(h_as_f32.data_as<float>()[i]), float_bits(f16_bits_to_float(h))) << v[i];
    EXPECT_EQ(h_as_bf16.data_as<uint16_t>()[i], float_to_bf16_bits(f16_bits_to_float(h))) << v[i];
    EXPECT_EQ(b_as_f16.data_as<uint16_t>()[i], float_to_f16_bits(bf16_bits_to_float(b))) << v[i];
  }
  expect_error([&] { r.read("n", DType::f32); }, {"m.safetensors", "tensor 'n'", "cannot read I32 as f32"});
}

TEST_F(SafetensorsTest, UnalignedAndForeignDtypes) {
  // A 1-byte tensor first puts the BF16 one at an odd offset (legal in the
  // format); an I64 tensor is listed and mapped but has no halo dtype.
  const std::string header = R"({"flag":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]},)"
                             R"("w":{"dtype":"BF16","shape":[2],"data_offsets":[1,5]},)"
                             R"("pos":{"dtype":"I64","shape":[1],"data_offsets":[5,13]}})";
  std::string file = raw_file(header, 0);
  const uint16_t w[2] = {float_to_bf16_bits(1.5f), float_to_bf16_bits(-2.25f)};
  file.push_back(1);
  file.append(reinterpret_cast<const char*>(w), 4);
  file.append(8, '\0');
  write_bytes(path("odd.safetensors"), file);
  const SafetensorsReader r(path("odd.safetensors"));
  EXPECT_EQ(r.read("w", DType::f32).to_floats(), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(r.read("w").to_floats(), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(r.entry("pos").dtype, "I64");
  EXPECT_EQ(r.entry("pos").nbytes, 8u);
  expect_error([&] { r.read("pos"); }, {"odd.safetensors", "tensor 'pos'", "I64"});
  EXPECT_EQ(safetensors_dtype_size("F64"), 8u);
  EXPECT_EQ(safetensors_dtype_size("F4"), 0u);
  EXPECT_EQ(dtype_from_safetensors("F8_E4M3"), DType::e4m3);
  EXPECT_EQ(dtype_from_safetensors("U8"), std::nullopt);
}

TEST_F(SafetensorsTest, BrokenHeadersNameFileAndProblem) {
  const auto check = [&](const std::string& name, const std::string& bytes,
                         std::initializer_list<std::string> parts) {
    write_bytes(path(name), bytes);
    SCOPED_TRACE(name);
    expect_error([&] { SafetensorsReader r(path(name)); }, parts);
    expect_error([&] { SafetensorsReader r(path(name)); }, {name});
  };
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  check("short.safetensors", "abcde", {"5 bytes", "too short"});
  check("pastend.safetensors", raw_file("{}", 0, 1000), {"header length 1000", "past the end of the file"});
  check("huge.safetensors", raw_file("{}", 0, uint64_t{1} << 40), {"100 MB"});
  check("badjson.safetensors", raw_file(R"({"w": {"dtype": )", 0), {"not valid JSON"});
  check("array.safetensors", raw_file("[1, 2]", 0), {"must be a JSON object"});
  check("dtype.safetensors", raw_file(R"({"w":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "unknown dtype 'F17'"});
  check("nodtype.safetensors", raw_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "dtype"});
  check("shape.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "shape [-2]"});
  check("offsets.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
        {"tensor 'w'", "data_offsets"});
  check("reversed.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
        {"tensor 'w'", "begin <= end"});
  check("bounds.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16),
        {"tensor 'w'", "[8, 24] run past the end of the data buffer (16 bytes"});
  check("size.safetensors",
        raw_file(
            R"({"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[5,6],"data_offsets":[0,100]}})",
            120),
        {"size.safetensors: tensor 'model.layers.0.mlp.up_proj.weight': data_offsets [0, 100] hold 100 bytes "
         "but "
         "F32[5, 6] needs 120"});
  check("overflow.safetensors",
        raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "more than 2^64"});
  check("overlap.safetensors",
        raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 12),
        {"tensor 'b'", "[4, 12] overlap tensor 'a' [0, 8]"});
  check("meta.safetensors", raw_file(R"({"__metadata__":{"format":1},)" + ok_entry + "}", 8),
        {"__metadata__", "'format' must be a string"});
  check("entry.safetensors", raw_file(R"({"w":[1,2]})", 0), {"tensor 'w'", "must be an object"});

  // A real file cut short: the last tensor now runs past the end.
  NamedTensors t;
  t["a"] = testing::random_normal({64}, 1);
  t["b"] = testing::random_normal({64}, 2);
  write_safetensors(path("cut.safetensors"), t);
  fs::resize_file(path("cut.safetensors"), fs::file_size(path("cut.safetensors")) - 10);
  expect_error([&] { SafetensorsReader r(path("cut.safetensors")); },
               {"cut.safetensors", "tensor 'b'", "run past the end", "truncated"});
  expect_error([&] { SafetensorsReader r(path("missing.safetensors")); },
               {"missing.safetensors", "No such file"});
  expect_error([&] { SafetensorsReader r(dir_.string()); },
               {dir_.string(), "neither model.safetensors nor model.safetensors.index.json"});
}

TEST_F(SafetensorsTest, ShardedCheckpoint) {
  NamedTensors t;
  for (int i = 0; i < 5; ++i)
    t["layer." + std::to_string(i) + ".weight"] =
        testing::random_normal({100}, i, 1.0f, DType::f32);         // 400 B
  t["big"] = testing::random_normal({2000}, 9, 1.0f, DType::bf16);  // 4000 B: a shard of its own
  const std::string ckpt = path("ckpt");
  const auto files = write_safetensors_checkpoint(ckpt, t, 1000);
  // Name order: big | layer.0 layer.1 | layer.2 layer.3 | layer.4
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(files[0], "model-00001-of-00004.safetensors");
  EXPECT_EQ(files[3], "model-00004-of-00004.safetensors");
  EXPECT_EQ(files[4], "model.safetensors.index.json");
  const json index = json::parse(read_file(ckpt + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 6000);
  EXPECT_EQ(index["weight_map"]["big"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.1.weight"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.4.weight"], "model-00004-of-00004.safetensors");

  for (const std::string& open : {ckpt, ckpt + "/model.safetensors.index.json"}) {
    const SafetensorsReader r(open);
    EXPECT_EQ(r.names().size(), t.size());
    for (const auto& [name, tensor] : t) EXPECT_TRUE(same_bytes(r.read(name), tensor)) << name;
    EXPECT_EQ(r.entry("layer.3.weight").file, ckpt + "/model-00003-of-00004.safetensors");
    EXPECT_EQ(r.metadata().at("format"), "pt");
  }

  // Rewritten as one file: the stale index goes, the directory reads the new data.
  NamedTensors small;
  small["only"] = testing::random_normal({4}, 11);
  EXPECT_EQ(write_safetensors_checkpoint(ckpt, small), std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(ckpt + "/model.safetensors.index.json"));
  EXPECT_EQ(SafetensorsReader(ckpt).names(), std::vector<std::string>{"only"});
  // And sharded again: the stale single file goes (a reader would prefer it).
  write_safetensors_checkpoint(ckpt, t, 1000);
  EXPECT_FALSE(fs::exists(ckpt + "/model.safetensors"));
  EXPECT_EQ(SafetensorsReader(ckpt).names().size(), t.size());
}

TEST_F(SafetensorsTest, BrokenIndexNamesIndexShardAndTensor) {
  NamedTensors t;
  t["a"] = testing::random_normal({4}, 1);
  write_safetensors(path("s1.safetensors"), t);
  const std::string index = path("model.safetensors.index.json");
  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  expect_error([&] { SafetensorsReader r(dir_.string()); },
               {"model.safetensors.index.json", "shard 's2.safetensors'", "tensor 'b'", "not found"});
  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "c": "s1.safetensors"}})");
  expect_error([&] { SafetensorsReader r(index); },
               {"model.safetensors.index.json", "tensor 'c'", "shard 's1.safetensors'", "does not hold it"});
  write_bytes(index, R"({"weight_map": {"a": 3}})");
  expect_error([&] { SafetensorsReader r(index); }, {"model.safetensors.index.json", "tensor 'a'"});
  write_bytes(index, R"({"weight_map": {"a": "/etc/passwd"}})");
  expect_error([&] { SafetensorsReader r(index); },
               {"model.safetensors.index.json", "not a file name beside"});
  write_bytes(index, R"({"metadata": {}})");
  expect_error([&] { SafetensorsReader r(index); }, {"model.safetensors.index.json", "weight_map"});
  write_bytes(index, R"({"weight_map": )");
  expect_error([&] { SafetensorsReader r(index); }, {"model.safetensors.index.json", "not valid JSON"});
  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors"}})");
  EXPECT_EQ(SafetensorsReader(dir_.string()).names(), std::vector<std::string>{"a"});
}

// ---- atomic files -------------------------------------------------------------

TEST_F(SafetensorsTest, AtomicWriteReplacesAndLeavesNoTemp) {
  const std::string f = path("config.json");
  write_file_atomic(f, "first");
  EXPECT_EQ(read_file(f), "first");
  fs::permissions(f, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  write_file_atomic(f, [](const WriteBytes& write) {
    write("sec", 3);
    write("ond", 3);
  });
  EXPECT_EQ(read_file(f), "second");
  EXPECT_EQ(fs::status(f).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);  // kept
  EXPECT_EQ(listing(), std::vector<std::string>{"config.json"});

  // A failure while producing the bytes: the old file stays, the temporary goes.
  expect_error(
      [&] {
        write_file_atomic(f, [](const WriteBytes& write) {
          write("partial", 7);
          HALO_FAIL("serialization failed");
        });
      },
      {"serialization failed"});
  EXPECT_EQ(read_file(f), "second");
  EXPECT_EQ(listing(), std::vector<std::string>{"config.json"});

  // Not a regular file: refused before anything is created.
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  expect_error([&] { write_file_atomic(path("fifo"), "x"); }, {"fifo", "not a regular file"});
  EXPECT_EQ(listing(), (std::vector<std::string>{"config.json", "fifo"}));
  EXPECT_TRUE(fs::is_fifo(path("fifo")));
  expect_error([&] { write_file_atomic(path("no/such/dir/x"), "x"); }, {"no/such/dir/x", "No such file"});
  expect_error([&] { read_file(path("absent")); }, {"absent", "No such file"});
  make_directories(path("p/q/r"));
  make_directories(path("p/q/r"));  // exists: fine
  EXPECT_TRUE(fs::is_directory(path("p/q/r")));
  expect_error([&] { make_directories(path("config.json/sub")); }, {"config.json/sub"});
}

TEST_F(SafetensorsTest, DiskFullWriteThrows) {
  // /dev/full fails every write with ENOSPC.
  const int fd = ::open("/dev/full", O_WRONLY);
  if (fd < 0) GTEST_SKIP() << "no /dev/full";
  const char buf[64] = {};
  expect_error([&] { write_all(fd, buf, sizeof buf, "/dev/full"); },
               {"/dev/full", "No space left on device"});
  ::close(fd);
}

// Caps the size of files this process may write (a full disk, as far as
// write(2) is concerned: it fails with EFBIG), restoring the limit on exit.
struct FileSizeLimit {
  rlimit old;
  sighandler_t old_handler;
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler = ::signal(SIGXFSZ, SIG_IGN);  // else the kernel kills us instead of failing the write
    ::getrlimit(RLIMIT_FSIZE, &old);
    rlimit lim = old;
    lim.rlim_cur = bytes;
    EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);
  }
};

TEST_F(SafetensorsTest, FailedOverwriteKeepsTheOldCheckpoint) {
  NamedTensors before;
  before["w"] = testing::random_normal({16}, 1);
  write_safetensors(path("model.safetensors"), before);
  NamedTensors after;
  after["w"] = testing::random_normal({1 << 16}, 2);  // 256 KiB
  {
    FileSizeLimit limit(64 << 10);
    expect_error([&] { write_safetensors(path("model.safetensors"), after); },
                 {"model.safetensors", "write failed", "File too large"});
  }
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});  // no temporary left
  const SafetensorsReader r(path("model.safetensors"));
  EXPECT_TRUE(same_bytes(r.read("w"), before["w"]));
  write_safetensors(path("model.safetensors"), after);  // with room again it works
  EXPECT_TRUE(same_bytes(SafetensorsReader(path("model.safetensors")).read("w"), after["w"]));
}

}  // namespace
}  // namespace halo
