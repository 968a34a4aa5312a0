// Construction of the K x K Hadamard matrices H_K (H H^T = K I, entries +-1).
//
// Constructions, tried in this order for a given K:
//   K = 2^k            Sylvester: H[i][j] = (-1)^popcount(i & j)
//   K = 2 (q + 1)      Paley II, q = 1 mod 4 a prime power (symmetric result)
//   K = q + 1          Paley I,  q = 3 mod 4 a prime power
//   K = 172            Williamson array with four symmetric circulants of order 43
//   K = 2 K'           Sylvester doubling [[H, H], [H, -H]] of a buildable K'
// Prime powers need the finite field GF(p^e): elements are the integers
// 0..q-1 read as base-p digit vectors (polynomials over GF(p)); products are
// reduced by a monic irreducible polynomial of degree e found by search.
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "kernels/hadamard.h"

namespace halo {
namespace {

using Matrix = std::vector<int8_t>;  // K x K row-major

// ---- GF(p^e) -------------------------------------------------------------------

// q = p^e with p prime, e >= 1; false otherwise.
bool prime_power(int64_t q, int64_t* p_out, int* e_out) {
  if (q < 2) return false;
  int64_t p = 2;
  while (p * p <= q && q % p != 0) ++p;
  if (q % p != 0) p = q;  // q itself is prime
  int e = 0;
  int64_t r = q;
  while (r % p == 0) {
    r /= p;
    ++e;
  }
  if (r != 1) return false;
  *p_out = p;
  *e_out = e;
  return true;
}

class FiniteField {
 public:
  FiniteField(int p, int e) : p_(p), e_(e), q_(1) {
    for (int i = 0; i < e; ++i) q_ *= p;
    // Monic modulus x^e + c_{e-1} x^{e-1} + ... + c_0: try the low coefficients
    // (as a base-p number) until multiplication has no zero divisors, which
    // holds exactly when the modulus is irreducible.
    for (int c = 0; c < q_; ++c) {
      modulus_ = digits(c);
      if (e_ == 1 || is_field()) break;
    }
    square_.assign(q_, false);
    for (int x = 1; x < q_; ++x) square_[mul(x, x)] = true;
  }
  int size() const { return q_; }
  int sub(int a, int b) const {
    std::vector<int> da = digits(a), db = digits(b);
    for (int i = 0; i < e_; ++i) da[i] = ((da[i] - db[i]) % p_ + p_) % p_;
    return number(da);
  }
  int mul(int a, int b) const {
    std::vector<int> da = digits(a), db = digits(b), prod(2 * e_, 0);
    for (int i = 0; i < e_; ++i)
      for (int j = 0; j < e_; ++j) prod[i + j] = (prod[i + j] + da[i] * db[j]) % p_;
    // Reduce with x^e = -(c_{e-1} x^{e-1} + ... + c_0), from the top degree down.
    for (int deg = 2 * e_ - 1; deg >= e_; --deg) {
      const int t = prod[deg];
      if (t == 0) continue;
      prod[deg] = 0;
      for (int i = 0; i < e_; ++i)
        prod[deg - e_ + i] = ((prod[deg - e_ + i] - t * modulus_[i]) % p_ + p_) % p_;
    }
    prod.resize(e_);
    return number(prod);
  }
  // Quadratic character: 0 for 0, +1 for a nonzero square, -1 otherwise.
  int chi(int a) const { return a == 0 ? 0 : (square_[a] ? 1 : -1); }

 private:
  std::vector<int> digits(int a) const {
    std::vector<int> d(e_);
    for (int i = 0; i < e_; ++i, a /= p_) d[i] = a % p_;
    return d;
  }
  int number(const std::vector<int>& d) const {
    int a = 0;
    for (int i = e_ - 1; i >= 0; --i) a = a * p_ + d[i];
    return a;
  }
  bool is_field() const {
    for (int a = 1; a < q_; ++a)
      for (int b = 1; b < q_; ++b)
        if (mul(a, b) == 0) return false;
    return true;
  }
  int p_, e_, q_;
  std::vector<int> modulus_;  // c_0 .. c_{e-1}
  std::vector<bool> square_;
};

// Jacobsthal matrix Q[i][j] = chi(x_i - x_j) over GF(q).
std::vector<int> jacobsthal(const FiniteField& f) {
  const int q = f.size();
  std::vector<int> Q(static_cast<size_t>(q) * q);
  for (int i = 0; i < q; ++i)
    for (int j = 0; j < q; ++j) Q[i * q + j] = f.chi(f.sub(i, j));
  return Q;
}

// ---- constructions ----------------------------------------------------------------

Matrix sylvester(int64_t k) {
  Matrix h(static_cast<size_t>(k * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) h[i * k + j] = (__builtin_popcountll(i & j) & 1) ? -1 : 1;
  return h;
}

// Paley I, q = 3 mod 4: H = I + S with S = [[0, 1^T], [-1, Q]] skew-symmetric
// (chi(-1) = -1 makes Q antisymmetric), so H H^T = I + S S^T = (q + 1) I.
Matrix paley1(int p, int e) {
  const FiniteField f(p, e);
  const int q = f.size(), k = q + 1;
  const std::vector<int> Q = jacobsthal(f);
  Matrix h(static_cast<size_t>(k) * k);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      int s;
      if (i == 0) s = (j == 0) ? 0 : 1;
      else if (j == 0) s = -1;
      else s = Q[(i - 1) * q + (j - 1)];
      h[i * k + j] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  return h;
}

// Paley II, q = 1 mod 4: C = [[0, 1^T], [1, Q]] is a symmetric conference
// matrix (C C^T = q I); H = C kron [[1, -1], [-1, -1]] + I kron [[1, 1], [1, -1]]
// has H H^T = 2 (q + 1) I and is symmetric. Index (i, e) -> 2 i + e.
Matrix paley2(int p, int e) {
  const FiniteField f(p, e);
  const int q = f.size(), n = q + 1, k = 2 * n;
  const std::vector<int> Q = jacobsthal(f);
  static const int A[2][2] = {{1, -1}, {-1, -1}}, B[2][2] = {{1, 1}, {1, -1}};
  Matrix h(static_cast<size_t>(k) * k);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      int c;
      if (i == 0) c = (j == 0) ? 0 : 1;
      else if (j == 0) c = 1;
      else c = Q[(i - 1) * q + (j - 1)];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
          h[(2 * i + a) * k + (2 * j + b)] = static_cast<int8_t>(c * A[a][b] + (i == j ? B[a][b] : 0));
    }
  return h;
}

// Williamson: symmetric circulant +-1 matrices A, B, C, D of odd order n that
// commute, with A^2 + B^2 + C^2 + D^2 = 4n I, plugged into
//   [[ A,  B,  C,  D],
//    [-B,  A, -D,  C],
//    [-C,  D,  A, -B],
//    [-D, -C,  B,  A]]
// give a Hadamard matrix of order 4n (the off-diagonal blocks cancel because
// the circulants commute and are symmetric).
//
// Order 43 (K = 172): no Paley construction exists (171 and 85 are not prime
// powers), so the four first rows below were found by an exhaustive-style
// search written for this project (not copied from any table): enumerate the
// symmetric +-1 sequences of length 43 with first entry +1 (2^21 of them),
// keep those whose power spectral density is <= 172 at every frequency and
// whose row sum is the one wanted, keep A canonical under the multipliers
// i -> m i mod 43, tabulate the pairs (A, B) by their summed periodic
// autocorrelation and look up every pair (C, D) whose autocorrelation cancels
// it (then A^2 + B^2 + C^2 + D^2 = 172 I). Row sums (-13, -1, -1, -1) and
// (-9, -9, 3, -1) gave nothing; (11, -5, -5, -1) (121 + 25 + 25 + 1 = 172)
// gave these after about 4 minutes on one core. Each string lists the signs of
// entries 0..42 of a first row. The unit test checks H H^T = 172 I.
constexpr const char* kWilliamson43[4] = {
    "++--++++--+--+-+-++++++++++-+-+--+--++++--+",  // A, row sum 11
    "+++---+--++---+-++--+--+--++-+---++--+---++",  // B, row sum -5
    "+-+-+---++++-+----+-+--+-+----+-++++---+-+-",  // C, row sum -5
    "+++++-+--+--++---++------++---++--+--+-++++",  // D, row sum -1
};

Matrix williamson(const char* const rows[4], int n) {
  std::vector<std::vector<int>> first(4, std::vector<int>(n));
  for (int m = 0; m < 4; ++m) {
    for (int i = 0; i < n; ++i) {
      const char c = rows[m][i];
      HALO_CHECK(c == '+' || c == '-', "williamson: bad sign string");
      first[m][i] = c == '+' ? 1 : -1;
    }
    HALO_CHECK(rows[m][n] == '\0', "williamson: sign string of the wrong length");
  }
  // Block (r, c) of the array: which circulant and its sign.
  static const int which[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
  static const int sign[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
  const int k = 4 * n;
  Matrix h(static_cast<size_t>(k) * k);
  for (int br = 0; br < 4; ++br)
    for (int bc = 0; bc < 4; ++bc)
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j)
          h[(br * n + i) * k + (bc * n + j)] =
              static_cast<int8_t>(sign[br][bc] * first[which[br][bc]][((j - i) % n + n) % n]);
  return h;
}

Matrix doubled(const Matrix& g, int64_t k) {  // [[G, G], [G, -G]], order 2k
  Matrix h(static_cast<size_t>(4 * k * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int8_t v = g[i * k + j];
      h[i * 2 * k + j] = v;
      h[i * 2 * k + j + k] = v;
      h[(i + k) * 2 * k + j] = v;
      h[(i + k) * 2 * k + j + k] = static_cast<int8_t>(-v);
    }
  return h;
}

constexpr int64_t kMaxOrder = 256;  // orders offered; larger K makes the K-mix costly

Matrix build(int64_t k) {
  if (k < 1 || k > kMaxOrder) return {};
  if ((k & (k - 1)) == 0) return sylvester(k);
  if (k % 4 != 0) return {};  // Hadamard orders above 2 are multiples of 4
  int64_t p;
  int e;
  const int64_t q2 = k / 2 - 1;
  if (prime_power(q2, &p, &e) && q2 % 4 == 1) return paley2(static_cast<int>(p), e);
  const int64_t q1 = k - 1;
  if (prime_power(q1, &p, &e) && q1 % 4 == 3) return paley1(static_cast<int>(p), e);
  if (k == 172) return williamson(kWilliamson43, 43);
  const Matrix half = build(k / 2);
  if (!half.empty()) return doubled(half, k / 2);
  return {};
}

}  // namespace

std::vector<int8_t> hadamard_matrix(int64_t k) {
  static std::mutex mu;
  static std::map<int64_t, Matrix> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it == cache.end()) it = cache.emplace(k, build(k)).first;
  return it->second;
}

std::vector<int64_t> hadamard_orders() {
  static const std::vector<int64_t> orders = [] {
    std::vector<int64_t> v;
    for (int64_t k = 2; k <= kMaxOrder; ++k)
      if (!build(k).empty()) v.push_back(k);
    return v;
  }();
  return orders;
}

}  // namespace halo
