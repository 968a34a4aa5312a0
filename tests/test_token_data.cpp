// Token files (writer, validated reader, the numpy script), document splits,
// and the batcher's packing, coverage and resumption.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/token_data.h"
#include "io/atomic_file.h"
#include "testing.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using Docs = std::vector<std::vector<uint32_t>>;

using testing::error_of;

// Documents of random lengths in [1, max_len] and tokens in [0, vocab).
Docs random_docs(int n, int max_len, uint32_t vocab, uint64_t seed) {
  Docs docs(n);
  uint64_t k = 0;
  for (int d = 0; d < n; ++d) {
    const int len = 1 + static_cast<int>(uniform01(seed, 1, d) * max_len);
    for (int i = 0; i < len; ++i) docs[d].push_back(static_cast<uint32_t>(uniform01(seed, 2, k++) * vocab));
  }
  return docs;
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data_as<int32_t>();
  return {p, p + t.numel()};
}

void expect_same_batch(const Batch& a, const Batch& b) {
  EXPECT_EQ(a.counted, b.counted);
  EXPECT_EQ(ints(a.input_ids), ints(b.input_ids));
  EXPECT_EQ(ints(a.targets), ints(b.targets));
  EXPECT_EQ(ints(a.positions), ints(b.positions));
  EXPECT_EQ(ints(a.doc_ids), ints(b.doc_ids));
}

class TokenData : public testing::TempDirTest {};

TEST_F(TokenData, WriterAndReaderRoundTrip) {
  const Docs docs = random_docs(57, 40, 1000, 1);
  write_token_file(path("a.tok"), docs, 1000);
  const TokenFile f(path("a.tok"));
  EXPECT_EQ(f.vocab_size(), 1000u);
  ASSERT_EQ(f.num_docs(), 57);
  int64_t total = 0;
  for (int d = 0; d < 57; ++d) {
    const auto span = f.doc(d);
    EXPECT_EQ(std::vector<uint32_t>(span.begin(), span.end()), docs[d]) << "document " << d;
    EXPECT_EQ(f.doc_length(d), static_cast<int64_t>(docs[d].size()));
    total += f.doc_length(d);
  }
  EXPECT_EQ(f.num_tokens(), total);
  EXPECT_EQ(fs::file_size(path("a.tok")), 32 + 8 * 58 + 4 * static_cast<uintmax_t>(total));
  EXPECT_THROW(f.doc(57), Error);
  // Moving keeps the mapping valid.
  TokenFile g = TokenFile(path("a.tok"));
  TokenFile h = std::move(g);
  EXPECT_EQ(h.doc(3)[0], docs[3][0]);
  // A file with no documents is valid (but gives no batches).
  write_token_file(path("empty.tok"), {}, 5);
  EXPECT_EQ(TokenFile(path("empty.tok")).num_docs(), 0);
}

TEST_F(TokenData, WriterRejectsBadInput) {
  EXPECT_NE(error_of([&] { write_token_file(path("x.tok"), {{1, 2}, {}}, 10); }).find("document 1 is empty"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_token_file(path("x.tok"), {{1, 2}, {3, 10}}, 10); }).find("token 10"),
            std::string::npos);
  EXPECT_THROW(write_token_file(path("x.tok"), {{0}}, 0), Error);
  EXPECT_FALSE(fs::exists(path("x.tok")));
}

// A good file's bytes, to corrupt.
std::string good_bytes(const std::string& p) {
  write_token_file(p, {{1, 2, 3}, {4, 5}}, 8);
  return read_file(p);
}

TEST_F(TokenData, ReaderRejectsMalformedFiles) {
  const std::string p = path("bad.tok");
  const std::string good = good_bytes(p);
  auto expect_error = [&](const std::string& bytes, const char* what) {
    write_file_atomic(p, bytes);
    const std::string msg = error_of([&] { TokenFile f(p); });
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "', got: " << msg;
    EXPECT_NE(msg.find(p), std::string::npos) << "the error must name the file: " << msg;
  };
  auto patched = [&](size_t at, const void* value, size_t n) {
    std::string b = good;
    std::memcpy(b.data() + at, value, n);
    return b;
  };
  const uint32_t u32_3 = 3, u32_0 = 0, u32_9 = 9;
  const uint64_t u64_4 = 4, u64_1 = 1, u64_6 = 6;
  expect_error("", "truncated");
  expect_error(good.substr(0, 20), "truncated");
  expect_error("HALOTOK2" + good.substr(8), "bad magic");
  expect_error(patched(8, &u32_3, 4), "version 3");
  expect_error(patched(12, &u32_0, 4), "vocab_size");
  expect_error(good.substr(0, good.size() - 1), "truncated");
  expect_error(good + "x", "unexpected bytes");
  expect_error(patched(16, &u64_4, 8), "truncated");  // more documents than the file holds
  expect_error(patched(32, &u64_1, 8), "offsets[0]");
  expect_error(patched(40, &u64_6, 8), "offsets not increasing at document 1");
  expect_error(patched(48, &u64_4, 8), "last offset");
  expect_error(patched(56 + 4 * 3, &u32_9, 4), "token 9 at position 3 (document 1)");
  write_file_atomic(p, good);
  EXPECT_NO_THROW(TokenFile f(p));
  EXPECT_NE(error_of([&] { TokenFile f(path("missing.tok")); }).find("missing.tok"), std::string::npos);
}

TEST_F(TokenData, ReadsWhatTheNumpyScriptWrites) {
  const fs::path script = testing::repo_dir() / "scripts" / "write_tokens.py";
  ASSERT_TRUE(fs::exists(script)) << script;
  if (std::system("python3 -c 'import numpy' >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3 with numpy not found";
  write_file_atomic(path("docs.jsonl"), "[5, 6, 7]\n{\"tokens\": [1]}\n[]\n{\"input_ids\": [0, 31999, 2]}\n");
  const std::string cmd = "python3 " + script.string() + " " + path("py.tok") + " --vocab-size 32000 --input " +
                          path("docs.jsonl") + " >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const TokenFile f(path("py.tok"));
  EXPECT_EQ(f.vocab_size(), 32000u);
  ASSERT_EQ(f.num_docs(), 3);  // the empty document is skipped
  const Docs expected{{5, 6, 7}, {1}, {0, 31999, 2}};
  for (int d = 0; d < 3; ++d) {
    const auto s = f.doc(d);
    EXPECT_EQ(std::vector<uint32_t>(s.begin(), s.end()), expected[d]);
  }
  // The script's bytes are the C++ writer's bytes.
  write_token_file(path("cpp.tok"), expected, 32000);
  EXPECT_EQ(read_file(path("py.tok")), read_file(path("cpp.tok")));
  // With a mask on some document: version 2, the others counted in full.
  write_file_atomic(path("masked.jsonl"), "[5, 6, 7]\n{\"tokens\": [1, 2], \"mask\": [0, 1]}\n");
  const std::string masked_cmd = "python3 " + script.string() + " " + path("pym.tok") +
                                 " --vocab-size 32000 --input " + path("masked.jsonl") + " >/dev/null";
  ASSERT_EQ(std::system(masked_cmd.c_str()), 0) << masked_cmd;
  write_token_file(path("cppm.tok"), {{5, 6, 7}, {1, 2}}, {{1, 1, 1}, {0, 1}}, 32000);
  EXPECT_EQ(read_file(path("pym.tok")), read_file(path("cppm.tok")));
}

TEST(DocumentSplit, DisjointCompleteAndDeterministic) {
  const DocumentSplit s = split_documents(100, 0.1, 42);
  EXPECT_EQ(s.val.size(), 10u);
  EXPECT_EQ(s.train.size(), 90u);
  std::set<int64_t> all(s.train.begin(), s.train.end());
  for (const int64_t d : s.val) EXPECT_TRUE(all.insert(d).second) << "document " << d << " in both";
  EXPECT_EQ(all.size(), 100u);
  EXPECT_EQ(*all.begin(), 0);
  EXPECT_EQ(*all.rbegin(), 99);
  EXPECT_TRUE(std::is_sorted(s.val.begin(), s.val.end()));
  EXPECT_EQ(split_documents(100, 0.1, 42).val, s.val);
  EXPECT_NE(split_documents(100, 0.1, 43).val, s.val);
  EXPECT_TRUE(split_documents(100, 0.0, 42).val.empty());
  EXPECT_EQ(split_documents(5, 0.01, 42).val.size(), 1u);  // at least one
  EXPECT_EQ(split_documents(5, 0.99, 42).train.size(), 1u);  // at least one left to train on
  EXPECT_THROW(split_documents(1, 0.5, 42), Error);
  EXPECT_THROW(split_documents(10, 1.0, 42), Error);
}

// Checks one epoch of batches against the packing rules of token_data.h.
void check_epoch(const TokenFile& f, Batcher& b, int64_t epoch, const std::vector<int64_t>& docs) {
  ASSERT_EQ(b.position(), (DataPosition{epoch, 0, 0}));
  const std::vector<int64_t> order = b.epoch_order(epoch);
  // The epoch's token stream and, per token, its target.
  std::vector<int32_t> stream, target;
  std::vector<bool> starts;
  int64_t n_docs_seen = 0;
  for (const int64_t d : order) {
    const auto s = f.doc(d);
    for (size_t i = 0; i < s.size(); ++i) {
      stream.push_back(static_cast<int32_t>(s[i]));
      target.push_back(i + 1 < s.size() ? static_cast<int32_t>(s[i + 1]) : kIgnoreTarget);
      starts.push_back(i == 0);
    }
    ++n_docs_seen;
  }
  std::multiset<int64_t> a(order.begin(), order.end()), c(docs.begin(), docs.end());
  ASSERT_EQ(a, c) << "the epoch's order is a permutation of the documents";

  size_t k = 0;  // index into the stream
  int64_t counted = 0;
  for (int64_t batch = 0; batch < b.batches_per_epoch(); ++batch) {
    const Batch x = b.next();
    const auto ids = ints(x.input_ids), tgt = ints(x.targets), pos = ints(x.positions), did = ints(x.doc_ids);
    int64_t n_counted = 0;
    for (int64_t r = 0; r < x.rows; ++r) {
      for (int64_t t = 0; t < x.seq_len; ++t) {
        const int64_t i = r * x.seq_len + t;
        if (tgt[i] >= 0) ++n_counted;
        if (t > 0) EXPECT_GE(did[i], did[i - 1]) << "doc_ids decrease in a row";
        if (k < stream.size()) {
          ASSERT_EQ(ids[i], stream[k]) << "batch " << batch << " element " << i;
          ASSERT_EQ(tgt[i], target[k]) << "batch " << batch << " element " << i;
          const bool restart = t == 0 || starts[k];
          EXPECT_EQ(pos[i], restart ? 0 : pos[i - 1] + 1) << "position at element " << i;
          if (t > 0) EXPECT_EQ(did[i], did[i - 1] + (starts[k] ? 1 : 0)) << "doc_id at element " << i;
          else EXPECT_EQ(did[i], 0);
          ++k;
        } else {  // padding after the epoch's last token
          EXPECT_EQ(batch, b.batches_per_epoch() - 1) << "only the last batch is padded";
          EXPECT_EQ(ids[i], 0);
          EXPECT_EQ(tgt[i], kIgnoreTarget);
          if (t > 0) EXPECT_LE(did[i], did[i - 1] + 1);
        }
      }
    }
    EXPECT_EQ(x.counted, n_counted);
    counted += x.counted;
  }
  EXPECT_EQ(k, stream.size()) << "every token is an input exactly once";
  EXPECT_EQ(counted, static_cast<int64_t>(stream.size()) - n_docs_seen);
  EXPECT_EQ(b.position(), (DataPosition{epoch + 1, 0, 0}));
}

TEST_F(TokenData, BatchesCoverEveryTokenOncePerEpoch) {
  write_token_file(path("a.tok"), random_docs(40, 50, 500, 3), 500);
  const TokenFile f(path("a.tok"));
  const DocumentSplit split = split_documents(f.num_docs(), 0.2, 9);
  for (const auto& [rows, seq_len] : {std::pair{3, 16}, std::pair{1, 7}, std::pair{4, 64}, std::pair{2, 1}}) {
    Batcher b(f, split.train, rows, seq_len, /*shuffle=*/true, 5);
    for (int64_t epoch = 0; epoch < 3; ++epoch) check_epoch(f, b, epoch, split.train);
  }
  Batcher b(f, split.train, 2, 16, true, 5);
  EXPECT_NE(b.epoch_order(0), b.epoch_order(1));  // reshuffled each epoch
  EXPECT_EQ(b.epoch_order(1), Batcher(f, split.train, 2, 16, true, 5).epoch_order(1));
  EXPECT_NE(b.epoch_order(0), Batcher(f, split.train, 2, 16, true, 6).epoch_order(0));
  EXPECT_EQ(Batcher(f, split.val, 2, 16, false, 5).epoch_order(3), split.val);  // unshuffled: as given
}

TEST_F(TokenData, HandPackedExample) {
  // Documents [10 11 12 13 14] [20 21] [30], rows of 4, no shuffle.
  write_token_file(path("a.tok"), {{10, 11, 12, 13, 14}, {20, 21}, {30}}, 64);
  const TokenFile f(path("a.tok"));
  Batcher b(f, all_documents(f), 2, 4, false, 0);
  EXPECT_EQ(b.batches_per_epoch(), 1);
  const Batch x = b.next();
  EXPECT_EQ(ints(x.input_ids), (std::vector<int32_t>{10, 11, 12, 13, 14, 20, 21, 30}));
  EXPECT_EQ(ints(x.targets), (std::vector<int32_t>{11, 12, 13, 14, -100, 21, -100, -100}));
  EXPECT_EQ(ints(x.positions), (std::vector<int32_t>{0, 1, 2, 3, 0, 0, 1, 0}));
  EXPECT_EQ(ints(x.doc_ids), (std::vector<int32_t>{0, 0, 0, 0, 0, 1, 1, 2}));
  EXPECT_EQ(x.counted, 5);
  const Batch y = b.next();  // epoch 1: the same documents, the last row padded
  Batcher c(f, all_documents(f), 3, 4, false, 0);
  const Batch z = c.next();
  EXPECT_EQ(ints(z.input_ids), (std::vector<int32_t>{10, 11, 12, 13, 14, 20, 21, 30, 0, 0, 0, 0}));
  EXPECT_EQ(ints(z.targets).back(), -100);
  EXPECT_EQ(ints(z.doc_ids), (std::vector<int32_t>{0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0}));
  EXPECT_EQ(ints(y.input_ids), ints(x.input_ids));
}

TEST_F(TokenData, ResumedBatcherGivesTheSameBatches) {
  write_token_file(path("a.tok"), random_docs(30, 60, 300, 4), 300);
  const TokenFile f(path("a.tok"));
  const std::vector<int64_t> docs = all_documents(f);
  Batcher a(f, docs, 2, 24, true, 11);
  const int64_t per_epoch = a.batches_per_epoch();
  // Stop at several points (mid-document, across an epoch) and resume in a fresh batcher.
  for (const int64_t stop : {int64_t{1}, per_epoch - 1, per_epoch, per_epoch + 2}) {
    Batcher run(f, docs, 2, 24, true, 11);
    for (int64_t i = 0; i < stop; ++i) run.next();
    const DataPosition saved = run.position();
    Batcher resumed(f, docs, 2, 24, true, 11);
    resumed.set_position(saved);
    for (int i = 0; i < per_epoch + 1; ++i) expect_same_batch(run.next(), resumed.next());
  }
  Batcher b(f, docs, 2, 24, true, 11);
  EXPECT_THROW(b.set_position({0, 30, 0}), Error);
  EXPECT_THROW(b.set_position({0, 0, 1000}), Error);
  EXPECT_THROW(b.set_position({-1, 0, 0}), Error);
  EXPECT_THROW(Batcher(f, {}, 2, 24, true, 0), Error);
  EXPECT_THROW(Batcher(f, {30}, 2, 24, true, 0), Error);
  EXPECT_THROW(Batcher(f, docs, 0, 24, true, 0), Error);
}

// ---- loss masks (version 2) and padding ------------------------------------------------

using Masks = std::vector<std::vector<uint8_t>>;

// A random 0 / 1 mask for each document.
Masks random_masks(const Docs& docs, uint64_t seed) {
  Masks m;
  uint64_t k = 0;
  for (const auto& d : docs) {
    m.emplace_back();
    for (size_t i = 0; i < d.size(); ++i) m.back().push_back(uniform01(seed, 3, k++) < 0.6f ? 1 : 0);
  }
  return m;
}

TEST_F(TokenData, MaskedFileRoundTrip) {
  const Docs docs = random_docs(23, 30, 700, 7);
  const Masks masks = random_masks(docs, 8);
  write_token_file(path("m.tok"), docs, masks, 700);
  const TokenFile f(path("m.tok"));
  ASSERT_TRUE(f.has_mask());
  ASSERT_EQ(f.num_docs(), 23);
  int64_t targets = 0;
  for (int d = 0; d < 23; ++d) {
    const auto t = f.doc(d);
    const auto m = f.doc_mask(d);
    EXPECT_EQ(std::vector<uint32_t>(t.begin(), t.end()), docs[d]);
    EXPECT_EQ(std::vector<uint8_t>(m.begin(), m.end()), masks[d]);
    int64_t want = 0;
    for (size_t i = 1; i < masks[d].size(); ++i) want += masks[d][i];  // the first token is never a target
    EXPECT_EQ(f.doc_targets(d), want);
    targets += want;
  }
  const std::string bytes = read_file(path("m.tok"));
  uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  EXPECT_EQ(version, 2u);
  EXPECT_EQ(bytes.size(), 32 + 8 * 24 + 5 * static_cast<size_t>(f.num_tokens()));
  EXPECT_EQ(Batcher(f, all_documents(f), 2, 16, true, 1).num_targets(), targets);
  // Without masks the writer keeps version 1: no mask, every token but a document's first a target.
  write_token_file(path("v1.tok"), docs, 700);
  const TokenFile g(path("v1.tok"));
  EXPECT_FALSE(g.has_mask());
  EXPECT_TRUE(g.doc_mask(0).empty());
  EXPECT_EQ(g.doc_targets(0), static_cast<int64_t>(docs[0].size()) - 1);
  // In memory, the same file.
  const TokenFile h = TokenFile::from_documents("mem", docs, &masks, 700);
  EXPECT_EQ(h.path(), "mem");
  ASSERT_EQ(h.num_tokens(), f.num_tokens());
  EXPECT_TRUE(std::equal(h.doc(5).begin(), h.doc(5).end(), f.doc(5).begin()));
  EXPECT_TRUE(std::equal(h.doc_mask(5).begin(), h.doc_mask(5).end(), f.doc_mask(5).begin()));
  TokenFile moved = TokenFile::from_documents("mem", docs, nullptr, 700);
  const TokenFile h2 = std::move(moved);
  EXPECT_EQ(h2.doc(3)[0], docs[3][0]);
  EXPECT_FALSE(h2.has_mask());
  EXPECT_NE(error_of([&] { TokenFile::from_documents("mem", {{1}, {}}, nullptr, 8); }).find("mem: document 1 is empty"),
            std::string::npos);
}

TEST_F(TokenData, VersionOneBytesStillRead) {
  // A version 1 file assembled by hand (as older halo and write_tokens.py wrote it).
  std::string b = "HALOTOK1";
  const uint32_t head32[2] = {1, 50};
  const uint64_t head64[2] = {2, 5}, offsets[3] = {0, 3, 5};
  const uint32_t tokens[5] = {7, 8, 9, 40, 41};
  b.append(reinterpret_cast<const char*>(head32), 8);
  b.append(reinterpret_cast<const char*>(head64), 16);
  b.append(reinterpret_cast<const char*>(offsets), 24);
  b.append(reinterpret_cast<const char*>(tokens), 20);
  write_file_atomic(path("old.tok"), b);
  const TokenFile f(path("old.tok"));
  EXPECT_FALSE(f.has_mask());
  Batcher batcher(f, all_documents(f), 1, 6, false, 0);
  const Batch x = batcher.next();
  EXPECT_EQ(ints(x.input_ids), (std::vector<int32_t>{7, 8, 9, 40, 41, 0}));
  EXPECT_EQ(ints(x.targets), (std::vector<int32_t>{8, 9, -100, 41, -100, -100}));
  EXPECT_EQ(x.counted, 3);
  EXPECT_EQ(read_file(path("old.tok")), (write_token_file(path("new.tok"), {{7, 8, 9}, {40, 41}}, 50),
                                         read_file(path("new.tok"))));
}

TEST_F(TokenData, WriterAndReaderRejectBadMasks) {
  EXPECT_NE(error_of([&] { write_token_file(path("x.tok"), {{1, 2}}, {{1}}, 10); }).find("has 1 values for its 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_token_file(path("x.tok"), {{1, 2}}, {{1, 2}}, 10); }).find("holds 2 (0 or 1)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_token_file(path("x.tok"), {{1, 2}}, {}, 10); }).find("0 masks for 1 documents"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(path("x.tok")));
  const std::string p = path("bad.tok");
  write_token_file(p, {{1, 2, 3}, {4, 5}}, {{0, 1, 1}, {1, 0}}, 8);
  const std::string good = read_file(p);
  std::string bad = good;
  bad[good.size() - 2] = 2;  // the mask of token 3 (document 1)
  write_file_atomic(p, bad);
  std::string msg = error_of([&] { TokenFile f(p); });
  EXPECT_NE(msg.find("mask value 2 at position 3 (document 1)"), std::string::npos) << msg;
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  write_file_atomic(p, good.substr(0, good.size() - 1));
  msg = error_of([&] { TokenFile f(p); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mask"), std::string::npos) << msg;
  write_file_atomic(p, good + "x");
  EXPECT_NE(error_of([&] { TokenFile f(p); }).find("unexpected bytes after the mask"), std::string::npos);
}

TEST_F(TokenData, BatcherTargetsFollowTheMask) {
  // Documents [10 11 12 13] masked 0 0 1 1 and [20 21 22] masked 1 0 1: a
  // target where the predicted token's mask is 1.
  write_token_file(path("m.tok"), {{10, 11, 12, 13}, {20, 21, 22}}, {{0, 0, 1, 1}, {1, 0, 1}}, 64);
  const TokenFile f(path("m.tok"));
  Batcher b(f, all_documents(f), 1, 8, false, 0);
  EXPECT_EQ(b.num_targets(), 3);
  const Batch x = b.next();
  EXPECT_EQ(ints(x.input_ids), (std::vector<int32_t>{10, 11, 12, 13, 20, 21, 22, 0}));
  EXPECT_EQ(ints(x.targets), (std::vector<int32_t>{-100, 12, 13, -100, -100, 22, -100, -100}));
  EXPECT_EQ(x.counted, 3);
  // Across a row boundary the mask still decides: rows of 3.
  Batcher c(f, all_documents(f), 3, 3, false, 0);
  const Batch y = c.next();
  EXPECT_EQ(ints(y.input_ids), (std::vector<int32_t>{10, 11, 12, 13, 20, 21, 22, 0, 0}));
  EXPECT_EQ(ints(y.targets), (std::vector<int32_t>{-100, 12, 13, -100, -100, 22, -100, -100, -100}));
}

// The batches of one epoch as token_data.h describes them, built the simple
// way: per document (in the epoch's order) its tokens and targets, laid end to
// end (pack) or each from a row start (pad), then cut into rows and batches.
struct Expected {
  std::vector<int32_t> ids, targets, positions;
};
Expected expected_epoch(const TokenFile& f, const std::vector<int64_t>& order, int64_t rows, int64_t seq_len,
                        Packing packing) {
  Expected e;
  for (const int64_t d : order) {
    const auto s = f.doc(d);
    const auto m = f.doc_mask(d);
    for (size_t i = 0; i < s.size(); ++i) {
      if (static_cast<int64_t>(e.ids.size()) % seq_len == 0 || i == 0)
        e.positions.push_back(0);
      else
        e.positions.push_back(e.positions.back() + 1);
      e.ids.push_back(static_cast<int32_t>(s[i]));
      e.targets.push_back(i + 1 < s.size() && (m.empty() || m[i + 1]) ? static_cast<int32_t>(s[i + 1]) : -100);
    }
    if (packing == Packing::pad)
      while (e.ids.size() % seq_len != 0) e.ids.push_back(0), e.targets.push_back(-100), e.positions.push_back(-1);
  }
  while (e.ids.size() % (rows * seq_len) != 0) e.ids.push_back(0), e.targets.push_back(-100), e.positions.push_back(-1);
  return e;
}

TEST_F(TokenData, PaddingAndMasksMatchTheRules) {
  const Docs docs = random_docs(37, 45, 400, 12);
  const Masks masks = random_masks(docs, 13);
  write_token_file(path("m.tok"), docs, masks, 400);
  const TokenFile f(path("m.tok"));
  const std::vector<int64_t> train = split_documents(f.num_docs(), 0.1, 2).train;
  for (const Packing packing : {Packing::pack, Packing::pad}) {
    for (const auto& [rows, seq_len] : {std::pair{3, 16}, std::pair{1, 7}, std::pair{2, 64}}) {
      Batcher b(f, train, rows, seq_len, /*shuffle=*/true, 4, packing);
      for (int64_t epoch = 0; epoch < 2; ++epoch) {
        const Expected e = expected_epoch(f, b.epoch_order(epoch), rows, seq_len, packing);
        ASSERT_EQ(static_cast<int64_t>(e.ids.size()), b.batches_per_epoch() * rows * seq_len);
        int64_t counted = 0;
        for (int64_t k = 0; k < b.batches_per_epoch(); ++k) {
          const Batch x = b.next();
          const size_t at = static_cast<size_t>(k * rows * seq_len), n = static_cast<size_t>(rows * seq_len);
          const auto slice = [&](const std::vector<int32_t>& v) {
            return std::vector<int32_t>(v.begin() + at, v.begin() + at + n);
          };
          ASSERT_EQ(ints(x.input_ids), slice(e.ids)) << "batch " << k;
          ASSERT_EQ(ints(x.targets), slice(e.targets)) << "batch " << k;
          const auto pos = ints(x.positions), want_pos = slice(e.positions);
          for (size_t i = 0; i < n; ++i)
            if (want_pos[i] >= 0) EXPECT_EQ(pos[i], want_pos[i]) << "batch " << k << " element " << i;
          counted += x.counted;
        }
        EXPECT_EQ(counted, b.num_targets());
        EXPECT_EQ(b.position(), (DataPosition{epoch + 1, 0, 0}));
      }
    }
  }
}

TEST_F(TokenData, HandPaddedExample) {
  // Documents [10 11 12] [20 21 22 23 24] [30 31], rows of 4: each document
  // starts a row; the long one continues in the next row.
  write_token_file(path("a.tok"), {{10, 11, 12}, {20, 21, 22, 23, 24}, {30, 31}}, 64);
  const TokenFile f(path("a.tok"));
  Batcher b(f, all_documents(f), 2, 4, false, 0, Packing::pad);
  EXPECT_EQ(b.batches_per_epoch(), 2);  // 1 + 2 + 1 rows
  const Batch x = b.next();
  EXPECT_EQ(ints(x.input_ids), (std::vector<int32_t>{10, 11, 12, 0, 20, 21, 22, 23}));
  EXPECT_EQ(ints(x.targets), (std::vector<int32_t>{11, 12, -100, -100, 21, 22, 23, 24}));
  EXPECT_EQ(ints(x.positions), (std::vector<int32_t>{0, 1, 2, 0, 0, 1, 2, 3}));
  EXPECT_EQ(ints(x.doc_ids), (std::vector<int32_t>{0, 0, 0, 1, 0, 0, 0, 0}));
  const Batch y = b.next();
  EXPECT_EQ(ints(y.input_ids), (std::vector<int32_t>{24, 0, 0, 0, 30, 31, 0, 0}));
  EXPECT_EQ(ints(y.targets), (std::vector<int32_t>{-100, -100, -100, -100, 31, -100, -100, -100}));
  EXPECT_EQ(ints(y.doc_ids), (std::vector<int32_t>{0, 1, 1, 1, 0, 0, 1, 1}));
  EXPECT_EQ(b.position(), (DataPosition{1, 0, 0}));
  // Resuming mid-epoch in pad mode gives the same batch.
  Batcher c(f, all_documents(f), 2, 4, false, 0, Packing::pad);
  c.next();
  Batcher d(f, all_documents(f), 2, 4, false, 0, Packing::pad);
  d.set_position(c.position());
  expect_same_batch(c.next(), d.next());
  EXPECT_EQ(parse_packing("pad"), Packing::pad);
  EXPECT_EQ(parse_packing("pack"), Packing::pack);
  EXPECT_NE(error_of([] { parse_packing("packed"); }).find("'packed'"), std::string::npos);
}

}  // namespace
}  // namespace halo
