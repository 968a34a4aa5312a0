// Generation with a key/value cache (generate.h): the cached forward of a
// Llama block over new tokens, and the decoding loop around it.
//
// Names: N new tokens in a call, d = hidden_size, Hq / Hkv heads of D =
// head_dim, F = intermediate_size, V = vocab_size; "act" is the model's dtype.
#include "model/generate.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/decode_attention.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/llama.h"

namespace halo {

// ---- the cached forward ------------------------------------------------------------

namespace {
constexpr int64_t kSerialRows = 16;  // CPU appends of at most this many tokens run single-threaded
}  // namespace

struct KvDecoder::Impl {
  LlamaWeights w;
  int64_t d, Hq, Hkv, D, F, V, L, S, Tmax;
  float eps;
  DType act;
  Device dev;
  std::vector<Tensor> k_cache, v_cache;  // per layer act [S, Tmax, Hkv, D]
  std::vector<int64_t> lens;             // tokens held per sequence

  // y [rows, out] = x [rows, in] W^T (+ b), in act. On the CPU straight
  // through BLAS in f32 (gemm_nt's CPU path is the f64-accumulating reference,
  // and sgemm repacks the whole weight on every call, which for the one row
  // of a decoding step costs more than the product): sgemv for a few rows.
  Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) const {
    const int64_t M = x.size(0), N = weight.size(0), K = weight.size(1);
    Tensor y = Tensor::empty({M, N}, act, dev);
    if (dev == Device::cuda) {
      GemmOptions opt;
      if (bias.defined()) opt.bias = &bias;
      gemm_nt(x, weight, y, opt);
      return y;
    }
    HALO_CHECK(x.ndim() == 2 && x.size(1) == K && x.dtype() == DType::f32 && weight.dtype() == DType::f32,
               "KvDecoder: linear of ", x.describe(), " by ", weight.describe());
    const float* X = x.data_as<float>();
    const float* W = weight.data_as<float>();
    float* Y = y.data_as<float>();
    if (M < 8) {
      for (int64_t i = 0; i < M; ++i)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), 1.0f, W,
                    static_cast<int>(K), X + i * K, 1, 0.0f, Y + i * N, 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N),
                  static_cast<int>(K), 1.0f, X, static_cast<int>(K), W, static_cast<int>(K), 0.0f, Y,
                  static_cast<int>(N));
    }
    if (bias.defined()) {
      const float* B = bias.data_as<float>();
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) Y[i * N + j] += B[j];
    }
    return y;
  }

  Tensor int32s(const std::vector<int32_t>& v) const {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
    std::copy(v.begin(), v.end(), t.data_as<int32_t>());
    return t.to(dev);
  }
};

KvDecoder::KvDecoder(LlamaModel& model, int64_t sequences, int64_t max_len) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  const ModelConfig& c = model.config();
  m.w = model.weights();
  m.d = c.hidden_size, m.Hq = c.num_attention_heads, m.Hkv = c.num_key_value_heads, m.D = c.head_dim;
  m.F = c.intermediate_size, m.V = c.vocab_size, m.L = c.num_hidden_layers;
  m.eps = static_cast<float>(c.rms_norm_eps);
  m.act = model.options().dtype;
  m.dev = model.options().device;
  m.S = sequences, m.Tmax = max_len;
  HALO_CHECK(sequences >= 1 && max_len >= 1, "KvDecoder: needs at least one sequence of one token, got ", sequences,
             " sequences of ", max_len);
  HALO_CHECK(m.act == (m.dev == Device::cpu ? DType::f32 : DType::bf16), "KvDecoder: the model must run in ",
             m.dev == Device::cpu ? "f32 on the CPU" : "bf16 on the GPU", ", got dtype ", dtype_name(m.act));
  HALO_CHECK(!c.sliding_window || *c.sliding_window >= max_len, "KvDecoder: sequences of up to ", max_len,
             " tokens exceed the model's sliding_window of ", c.sliding_window.value_or(0),
             ": sliding-window attention is not supported");
  HALO_CHECK(max_len <= std::numeric_limits<int32_t>::max(), "KvDecoder: ", max_len, " tokens are too many");
  for (int64_t l = 0; l < m.L; ++l) {
    m.k_cache.push_back(Tensor::empty({m.S, m.Tmax, m.Hkv, m.D}, m.act, m.dev));
    m.v_cache.push_back(Tensor::empty({m.S, m.Tmax, m.Hkv, m.D}, m.act, m.dev));
  }
  m.lens.assign(static_cast<size_t>(m.S), 0);
}

KvDecoder::~KvDecoder() = default;

int64_t KvDecoder::length(int64_t seq) const {
  HALO_CHECK(seq >= 0 && seq < impl_->S, "KvDecoder: no sequence ", seq, " (", impl_->S, " sequences)");
  return impl_->lens[seq];
}

void KvDecoder::reset(int64_t seq) {
  HALO_CHECK(seq >= 0 && seq < impl_->S, "KvDecoder: no sequence ", seq, " (", impl_->S, " sequences)");
  impl_->lens[seq] = 0;
}

Tensor KvDecoder::append(const std::vector<int64_t>& seqs, const std::vector<std::vector<uint32_t>>& tokens,
                         bool every_position) {
  Impl& m = *impl_;
  const int64_t n = static_cast<int64_t>(seqs.size());
  HALO_CHECK(n > 0 && tokens.size() == seqs.size(), "KvDecoder append: one token list per sequence expected, got ",
             seqs.size(), " sequences and ", tokens.size(), " lists");
  // Host-side indices of the N new tokens: id, position, sequence, keys seen,
  // document (the list entry), and the row of each sequence's last token.
  std::vector<int32_t> ids, pos, seq_of, kv_len, doc, last;
  std::set<int64_t> seen;
  bool fresh = true;
  int64_t max_len = 1;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t s = seqs[k];
    HALO_CHECK(s >= 0 && s < m.S, "KvDecoder append: no sequence ", s, " (", m.S, " sequences)");
    HALO_CHECK(seen.insert(s).second, "KvDecoder append: sequence ", s, " is listed twice");
    HALO_CHECK(!tokens[k].empty(), "KvDecoder append: no tokens for sequence ", s);
    const int64_t have = m.lens[s], count = static_cast<int64_t>(tokens[k].size());
    HALO_CHECK(have + count <= m.Tmax, "KvDecoder append: sequence ", s, " would hold ", have + count,
               " tokens, more than the cache's ", m.Tmax);
    fresh &= have == 0;
    for (int64_t t = 0; t < count; ++t) {
      const uint32_t id = tokens[k][t];
      HALO_CHECK(id < static_cast<uint64_t>(m.V), "KvDecoder append: token id ", id, " (sequence ", s, ", token ",
                 t, ") is outside the vocabulary of ", m.V);
      ids.push_back(static_cast<int32_t>(id));
      pos.push_back(static_cast<int32_t>(have + t));
      seq_of.push_back(static_cast<int32_t>(s));
      kv_len.push_back(static_cast<int32_t>(have + t + 1));
      doc.push_back(static_cast<int32_t>(k));
    }
    last.push_back(static_cast<int32_t>(ids.size() - 1));
    max_len = std::max(max_len, have + count);
  }
  const int64_t N = static_cast<int64_t>(ids.size());
  // A decoding step on the CPU: the row kernels (norms, RoPE, attention) have
  // a few rows of work, less than what waking OpenMP's threads costs (each
  // parallel region ends at a barrier, which on a busy machine waits for a
  // descheduled thread); they run on this thread, the matmuls on BLAS's.
  const bool serial = m.dev == Device::cpu && N <= kSerialRows;
  const int saved_threads = omp_get_max_threads();
  if (serial) omp_set_num_threads(1);
  struct RestoreThreads {
    bool on;
    int n;
    ~RestoreThreads() {
      if (on) omp_set_num_threads(n);
    }
  } restore{serial, saved_threads};
  const Tensor ids_t = m.int32s(ids), pos_t = m.int32s(pos), seq_t = m.int32s(seq_of);
  const Tensor len_t = fresh ? Tensor() : m.int32s(kv_len);
  AttentionOptions prefill;  // the prompts as documents of one row
  prefill.batch = 1;
  if (fresh && n > 1) prefill.doc_ids = m.int32s(doc);

  Tensor x = Tensor::empty({N, m.d}, m.act, m.dev), a = Tensor::empty({N, m.d}, m.act, m.dev);
  Tensor rstd = Tensor::empty({N}, DType::f32, m.dev);
  embedding_forward(ids_t, m.w.embed, x);
  rmsnorm_forward(x, m.L ? m.w.layers[0].ln1 : m.w.norm, m.eps, a, rstd);
  for (int64_t l = 0; l < m.L; ++l) {
    const LlamaLayerWeights& y = m.w.layers[l];
    Tensor q, k, v;
    if (y.qkv_weight.size() == 1) {  // fused q|k|v
      const Tensor qkv = m.linear(a, y.qkv_weight[0], y.qkv_bias[0]);
      q = Tensor::empty({N, m.Hq * m.D}, m.act, m.dev);
      k = Tensor::empty({N, m.Hkv * m.D}, m.act, m.dev);
      v = Tensor::empty({N, m.Hkv * m.D}, m.act, m.dev);
      copy_columns(qkv, 0, q, 0, m.Hq * m.D);
      copy_columns(qkv, m.Hq * m.D, k, 0, m.Hkv * m.D);
      copy_columns(qkv, (m.Hq + m.Hkv) * m.D, v, 0, m.Hkv * m.D);
    } else {
      HALO_CHECK(y.qkv_weight.size() == 3, "KvDecoder: layer ", l, " has ", y.qkv_weight.size(),
                 " q/k/v projections (1 or 3 expected)");
      q = m.linear(a, y.qkv_weight[0], y.qkv_bias[0]);
      k = m.linear(a, y.qkv_weight[1], y.qkv_bias[1]);
      v = m.linear(a, y.qkv_weight[2], y.qkv_bias[2]);
    }
    q = q.view({N, m.Hq, m.D}), k = k.view({N, m.Hkv, m.D}), v = v.view({N, m.Hkv, m.D});
    rope_forward(q, pos_t, m.w.inv_freq);
    rope_forward(k, pos_t, m.w.inv_freq);
    kv_cache_append(k, seq_t, pos_t, m.k_cache[l]);
    kv_cache_append(v, seq_t, pos_t, m.v_cache[l]);
    Tensor attn = Tensor::empty({N, m.Hq, m.D}, m.act, m.dev);
    if (fresh) {
      Tensor lse = Tensor::empty({N, m.Hq}, DType::f32, m.dev);
      attention_forward(q, k, v, prefill, attn, lse);
    } else {
      decode_attention(q, m.k_cache[l], m.v_cache[l], seq_t, len_t, max_len, attn);
    }
    Tensor branch = m.linear(attn.view({N, m.Hq * m.D}), y.o_weight, y.o_bias);
    residual_rmsnorm_forward(x, branch, y.ln2, m.eps, x, branch, rstd);  // branch := rmsnorm(x + branch) * ln2
    const Tensor gu = m.linear(branch, y.gate_up_weight, y.gate_up_bias);
    Tensor h = Tensor::empty({N, m.F}, m.act, m.dev);
    swiglu_forward_fused(gu, h);
    Tensor z = m.linear(h, y.down_weight, y.down_bias);
    const Tensor& next = l + 1 < m.L ? m.w.layers[l + 1].ln1 : m.w.norm;
    residual_rmsnorm_forward(x, z, next, m.eps, x, z, rstd);  // z := the next block's normed input
    a = z;
  }
  for (int64_t k = 0; k < n; ++k) m.lens[seqs[k]] += static_cast<int64_t>(tokens[k].size());

  Tensor hidden = a;
  if (!every_position && N > n) {  // the last token of each sequence: a gather of rows
    hidden = Tensor::empty({n, m.d}, m.act, m.dev);
    embedding_forward(m.int32s(last), a, hidden);
  }
  return m.linear(hidden, m.w.lm_head, Tensor());
}

// ---- choosing tokens ---------------------------------------------------------------------

uint32_t sample_token(std::span<const float> logits, float temperature, float top_p, uint64_t seed, uint64_t stream,
                      uint64_t index) {
  const size_t V = logits.size();
  HALO_CHECK(V > 0, "sample_token: no logits");
  const auto key = [&](size_t j) {
    const float v = logits[j];
    return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v;
  };
  size_t best = 0;
  for (size_t j = 1; j < V; ++j)
    if (key(j) > key(best)) best = j;
  if (!(temperature > 0.0f)) return static_cast<uint32_t>(best);
  HALO_CHECK(std::isfinite(temperature), "sample_token: temperature must be finite, got ", temperature);
  HALO_CHECK(top_p > 0.0f && top_p <= 1.0f, "sample_token: top_p must be in (0, 1], got ", top_p);
  const double mx = key(best);
  if (!std::isfinite(mx)) return static_cast<uint32_t>(best);  // nothing finite to sample from
  std::vector<double> p(V);
  double total = 0.0;
  for (size_t j = 0; j < V; ++j) total += p[j] = std::exp((static_cast<double>(key(j)) - mx) / temperature);

  std::vector<uint32_t> kept;
  if (top_p >= 1.0f) {
    kept.resize(V);
    std::iota(kept.begin(), kept.end(), 0u);
  } else {
    // The most probable tokens first; a partial sort of the first k, k growing
    // until they hold top_p of the mass.
    std::vector<uint32_t> order(V);
    std::iota(order.begin(), order.end(), 0u);
    const auto more_probable = [&](uint32_t a, uint32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
    const double want = static_cast<double>(top_p) * total;
    for (size_t k = std::min<size_t>(V, 64);; k = std::min(V, 4 * k)) {
      std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(), more_probable);
      double sum = 0.0;
      size_t cut = 0;
      while (cut < k && sum < want) sum += p[order[cut++]];
      if (sum >= want || k == V) {
        kept.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(std::max<size_t>(cut, 1)));
        break;
      }
    }
    std::sort(kept.begin(), kept.end());
  }
  double kept_total = 0.0;
  for (uint32_t j : kept) kept_total += p[j];
  const double target = static_cast<double>(uniform01(seed, stream, index)) * kept_total;
  double cum = 0.0;
  for (uint32_t j : kept) {
    cum += p[j];
    if (cum > target) return j;
  }
  return kept.back();
}

// ---- the decoding loop -----------------------------------------------------------------------

std::vector<std::vector<uint32_t>> generate(LlamaModel& model, const std::vector<std::vector<uint32_t>>& prompts,
                                            const GenerateOptions& options, const TokenCallback& on_token,
                                            GenerateStats* stats) {
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  HALO_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  HALO_CHECK(std::isfinite(options.temperature) && options.temperature >= 0.0f,
             "generate: temperature must be finite and >= 0, got ", options.temperature);
  HALO_CHECK(options.top_p > 0.0f && options.top_p <= 1.0f, "generate: top_p must be in (0, 1], got ", options.top_p);
  const int64_t V = model.config().vocab_size;
  int64_t longest = 0, prompt_tokens = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    HALO_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty (it needs at least one token, e.g. a BOS)");
    for (uint32_t id : prompts[i])
      HALO_CHECK(id < static_cast<uint64_t>(V), "generate: prompt ", i, " has token id ", id,
                 ", outside the vocabulary of ", V);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
    prompt_tokens += static_cast<int64_t>(prompts[i].size());
  }
  GenerateStats local;
  GenerateStats& st = stats ? *stats : local;
  st = GenerateStats{};
  st.prompt_tokens = prompt_tokens;
  std::vector<std::vector<uint32_t>> out(prompts.size());
  if (prompts.empty() || options.max_new_tokens == 0) return out;

  const int64_t S = static_cast<int64_t>(prompts.size());
  // The last new token is never fed back: the cache holds at most prompt +
  // max_new - 1 tokens, and no more than max_position_embeddings - 1 (or the
  // longest prompt), so that no sequence passes max_position_embeddings
  // tokens: one that fills the cache ends with the token chosen there.
  int64_t capacity = longest + options.max_new_tokens - 1;
  const int64_t max_pos = model.config().max_position_embeddings;
  if (max_pos > 0) capacity = std::min(capacity, std::max(longest, max_pos - 1));
  KvDecoder decoder(model, S, capacity);
  const std::set<uint32_t> stops(options.stop_ids.begin(), options.stop_ids.end());
  std::vector<bool> done(static_cast<size_t>(S), false);
  const bool greedy = !(options.temperature > 0.0f);

  // Chooses the next token of each of `seqs` from its row of `logits` ([seqs, V] on the device).
  const auto choose = [&](const std::vector<int64_t>& seqs, const Tensor& logits) {
    const int64_t n = static_cast<int64_t>(seqs.size());
    std::vector<uint32_t> picked(static_cast<size_t>(n));
    if (greedy) {
      Tensor best = Tensor::empty({n}, DType::i32, logits.device());
      argmax_rows(logits, best);
      const Tensor host = best.to(Device::cpu);
      for (int64_t k = 0; k < n; ++k) picked[k] = static_cast<uint32_t>(host.data_as<int32_t>()[k]);
    } else {
      const std::vector<float> rows = logits.to_floats();
      for (int64_t k = 0; k < n; ++k) {
        const size_t s = static_cast<size_t>(seqs[k]);
        picked[k] = sample_token(std::span<const float>(rows).subspan(static_cast<size_t>(k * V), static_cast<size_t>(V)),
                                 options.temperature, options.top_p, options.seed, s, out[s].size());
      }
    }
    for (int64_t k = 0; k < n; ++k) {
      const size_t s = static_cast<size_t>(seqs[k]);
      out[s].push_back(picked[k]);
      ++st.new_tokens;
      if (on_token) on_token(s, picked[k]);
      const int64_t held = static_cast<int64_t>(prompts[s].size() + out[s].size());  // with the new token
      if (stops.count(picked[k]) || static_cast<int64_t>(out[s].size()) >= options.max_new_tokens || held > capacity)
        done[s] = true;
    }
  };

  // Prefill: the prompts packed into passes of about kPrefillTokens tokens (a
  // longer prompt goes alone).
  constexpr int64_t kPrefillTokens = 4096;
  auto t0 = Clock::now();
  for (int64_t first = 0; first < S;) {
    std::vector<int64_t> seqs;
    std::vector<std::vector<uint32_t>> toks;
    int64_t count = 0;
    for (int64_t s = first; s < S; ++s) {
      const int64_t len = static_cast<int64_t>(prompts[s].size());
      if (!seqs.empty() && count + len > kPrefillTokens) break;
      seqs.push_back(s);
      toks.push_back(prompts[s]);
      count += len;
    }
    choose(seqs, decoder.append(seqs, toks));
    first += static_cast<int64_t>(seqs.size());
  }
  st.prefill_seconds = seconds_since(t0);

  t0 = Clock::now();
  for (;;) {
    std::vector<int64_t> seqs;
    std::vector<std::vector<uint32_t>> toks;
    for (int64_t s = 0; s < S; ++s)
      if (!done[s]) {
        seqs.push_back(s);
        toks.push_back({out[s].back()});
      }
    if (seqs.empty()) break;
    choose(seqs, decoder.append(seqs, toks));
  }
  st.decode_seconds = seconds_since(t0);
  return out;
}

}  // namespace halo
