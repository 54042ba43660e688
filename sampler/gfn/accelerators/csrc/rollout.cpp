// Native CPU kernels of the diffusion sampler's hot path; sampler/gfn/native.py compiles and loads this file.
//
// Why native: on a CPU a policy step on a [300, 64] batch is ~15 small tensor operations, each below ATen's
// parallel grain (so on one core) and each paying 5-25 µs of dispatch for a few µs of arithmetic. Here:
//   * PolicyRollout runs the sampling loop: per step the rows are split into one chunk per thread and each chunk
//     runs the whole network, the Gaussian update, the recording of every layer (for the gradient) and log P_F
//     on its rows (rows of a rollout never interact), with raw-pointer GEMMs and a fused bias + GELU pass;
//   * mlp_backward is the recorded network's backward pass, tiled over rows so that each tile's activations stay
//     in cache through all layers, with per-thread weight-gradient accumulators;
//   * pf_head_log_prob(_backward) and bridge_log_prob compute log P_F (with its gradient) and the Brownian
//     bridge's log P_B over [T, B, d] in one pass each.
// The formulas are the PyTorch path's (sampler/gfn/diffusion.py, nets.py); results agree to float32 rounding
// (tests/test_native.py checks states, log-densities and every gradient against that path).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <dlfcn.h>
#include <torch/extension.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

using at::Tensor;
using Vec = at::vec::Vectorized<float>;

namespace {

constexpr float kLog2Pi = 1.8378770664093453f;
constexpr int64_t kSmall = 8;  // a GEMM side this small runs in the hand-written kernels below

// ------------------------------------------------------------------------------------------------- GEMM
// Row-major C[m, n] = beta·C + A·B (nn) or beta·C + Aᵀ·B (tn, A [r, m], B [r, n]) through the BLAS sgemm that
// torch links (MKL on x86), found at run time; ATen's mm where there is none.
using sgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

sgemm_t find_sgemm() {
  static sgemm_t fn = reinterpret_cast<sgemm_t>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return fn;
}

Tensor wrap(const float* p, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<float*>(p), {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

void gemm(bool trans_a, const float* A, const float* B, float* C, int64_t m, int64_t k, int64_t n, float beta) {
  if (m == 0 || k == 0) return;
  if (sgemm_t sgemm = find_sgemm()) {  // column-major: Cᵀ = Bᵀ·Aᵀ
    const int M = m, N = n, K = k, lda = trans_a ? m : k;
    const float one = 1.0f;
    sgemm("N", trans_a ? "T" : "N", &N, &M, &K, &one, B, &N, A, &lda, &beta, C, &N);
    return;
  }
  Tensor c = wrap(C, m, n);
  Tensor a = trans_a ? wrap(A, k, m).t() : wrap(A, m, k);
  at::addmm_out(c, c, a, wrap(B, k, n), beta, 1.0f);
}

void gemm_nn(const float* A, const float* B, float* C, int64_t m, int64_t k, int64_t n, float beta) {
  gemm(false, A, B, C, m, k, n, beta);
}

void gemm_tn(const float* A, const float* B, float* C, int64_t r, int64_t m, int64_t n, float beta) {
  gemm(true, A, B, C, m, r, n, beta);
}

// y[m, N] = x[m, K]·w[K, N] (+ y when accumulate) with K ≤ 8: each input broadcast over the output row.
void small_k_gemm(const float* x, const float* w, float* y, int64_t m, int64_t K, int64_t N, bool accumulate) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * K;
    float* yr = y + r * N;
    int64_t n = 0;
    for (; n + Vec::size() <= N; n += Vec::size()) {
      Vec acc = accumulate ? Vec::loadu(yr + n) : Vec(0.0f);
      for (int64_t k = 0; k < K; ++k) acc = at::vec::fmadd(Vec(xr[k]), Vec::loadu(w + k * N + n), acc);
      acc.store(yr + n);
    }
    for (; n < N; ++n) {
      float acc = accumulate ? yr[n] : 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += xr[k] * w[k * N + n];
      yr[n] = acc;
    }
  }
}

inline float hsum(const Vec& x) {
  float buf[Vec::size()];
  x.store(buf);
  float acc = 0.0f;
  for (int64_t q = 0; q < Vec::size(); ++q) acc += buf[q];
  return acc;
}

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t k = 0;
  Vec acc(0.0f);
  for (; k + Vec::size() <= n; k += Vec::size()) acc = at::vec::fmadd(Vec::loadu(a + k), Vec::loadu(b + k), acc);
  float sum = hsum(acc);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// y[m, N] = x[m, K]·w_tᵀ (+ y) with N ≤ 8: N dot products with the rows of w_t [N, K].
void small_n_gemm(const float* x, const float* w_t, float* y, int64_t m, int64_t K, int64_t N, bool accumulate) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t n = 0; n < N; ++n) y[r * N + n] = (accumulate ? y[r * N + n] : 0.0f) + dot(x + r * K, w_t + n * K, K);
}

// y = x·w (+ y when accumulate) for row-major x [m, K], w [K, N] (w_t = wᵀ [N, K], for the small-N kernel).
void matmul_rows(const float* x, const float* w, const float* w_t, float* y, int64_t m, int64_t K, int64_t N,
                 bool accumulate) {
  if (K <= kSmall) {
    small_k_gemm(x, w, y, m, K, N, accumulate);
  } else if (N <= kSmall) {
    small_n_gemm(x, w_t, y, m, K, N, accumulate);
  } else {
    gemm_nn(x, w, y, m, K, N, accumulate ? 1.0f : 0.0f);
  }
}

// ------------------------------------------------------------------------------------------------- GELU
// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) — the formula of torch's own vectorised CPU erf — with
// ATen's inlined polynomial exp (exp_u20) instead of a call into Sleef: the exact (erf) GELU to float32 rounding,
// at a fraction of the cost.
inline Vec erf_fast(const Vec& x) {
  const Vec one(1.0f), p(0.3275911f), p1(0.254829592f), p2(-0.284496736f), p3(1.421413741f), p4(-1.453152027f),
      p5(1.061405429f);
  const Vec t = one / (p * x.abs() + one);
  const Vec r = (((p5 * t + p4) * t + p3) * t + p2) * t + p1;
  const Vec y = one - r * t * (Vec(0.0f) - x * x).exp_u20();
  return Vec::blendv(y, Vec(0.0f) - y, x < Vec(0.0f));
}

constexpr float kSqrtHalf = 0.70710678118654752f, kInvSqrt2Pi = 0.3989422804014327f;

// Rows of z [m, H]: z += bias (per column), h = GELU(z) = ½z(1 + erf(z/√2)).
void bias_gelu_rows(float* z, const float* bias, float* h, int64_t m, int64_t H) {
  const Vec half(0.5f), one(1.0f), c(kSqrtHalf);
  for (int64_t r = 0; r < m; ++r) {
    float* zr = z + r * H;
    float* hr = h + r * H;
    int64_t k = 0;
    for (; k + Vec::size() <= H; k += Vec::size()) {
      Vec x = Vec::loadu(zr + k) + Vec::loadu(bias + k);
      x.store(zr + k);
      (x * half * (one + erf_fast(x * c))).store(hr + k);
    }
    for (; k < H; ++k) {
      zr[k] += bias[k];
      hr[k] = 0.5f * zr[k] * (1.0f + std::erf(zr[k] * kSqrtHalf));
    }
  }
}

// dz = dh · GELU'(z) = dh·(Φ(z) + z·φ(z)), in place over dh (n values).
void gelu_backward_inplace(float* dh, const float* z, int64_t n) {
  const Vec half(0.5f), one(1.0f), c(kSqrtHalf), c2(kInvSqrt2Pi), nh(-0.5f);
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    Vec x = Vec::loadu(z + k);
    Vec cdf = half * (one + erf_fast(x * c));
    Vec pdf = c2 * (nh * x * x).exp_u20();
    (Vec::loadu(dh + k) * (cdf + x * pdf)).store(dh + k);
  }
  for (; k < n; ++k) {
    float x = z[k];
    dh[k] *= 0.5f * (1.0f + std::erf(x * kSqrtHalf)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
  }
}

// ------------------------------------------------------------------------------------------------- head
inline float clampf(float x, float c) { return x < -c ? -c : (x > c ? c : x); }

// Scalar and 8-lane versions of the few functions the head needs, so each formula below is written once.
// tanh(x) = sign(x)·(1 − e^{−2|x|})/(1 + e^{−2|x|}) with the inlined exp: absolute error ~1e-7 (the head uses it
// through range·tanh, a log-variance, where absolute error is what matters).
inline float v_tanh(float x) { return std::tanh(x); }
inline Vec v_tanh(const Vec& x) {
  const Vec one(1.0f), t = (Vec(-2.0f) * x.abs()).exp_u20();
  const Vec y = (one - t) / (one + t);
  return Vec::blendv(y, Vec(0.0f) - y, x < Vec(0.0f));
}
inline float v_exp(float x) { return std::exp(x); }
inline Vec v_exp(const Vec& x) { return x.exp_u20(); }
inline float v_sqrt(float x) { return std::sqrt(x); }
inline Vec v_sqrt(const Vec& x) { return x.sqrt(); }
inline float v_clamp(float x, float c) { return clampf(x, c); }
inline Vec v_clamp(const Vec& x, float c) { return at::vec::clamp(x, Vec(-c), Vec(c)); }
// x where |raw| ≤ c (torch.clamp passes the gradient there, bounds included), else 0
inline float v_pass(float x, float raw, float c) { return std::fabs(raw) <= c ? x : 0.0f; }
inline Vec v_pass(const Vec& x, const Vec& raw, float c) { return x & (raw.abs() <= Vec(c)); }
inline float v_sum(float x) { return x; }
inline float v_sum(const Vec& x) { return hsum(x); }
template <typename V>
V v_load(const float* p) {
  if constexpr (std::is_same_v<V, float>) return *p; else return Vec::loadu(p);
}
template <typename V>
void v_store(float* p, const V& x) {
  if constexpr (std::is_same_v<V, float>) *p = x; else x.store(p);
}

// The forward policy's head: from the raw network output o = [o_μ, o_v], drift clip(o_μ) (+ an extra drift, the
// Langevin term) and variance dt·σ²·exp(range·tanh(clip(o_v))) (or dt·σ² for a fixed variance).
struct Head {
  int64_t d;
  float dt, var0, log_var0, lvr, clip;
  bool learned;

  Head(int64_t dim, double dt_, double var0_, double lvr_, bool learned_, bool clipping, double clip_)
      : d(dim),
        dt(static_cast<float>(dt_)),
        var0(static_cast<float>(var0_)),
        log_var0(static_cast<float>(std::log(var0_))),
        lvr(static_cast<float>(lvr_)),
        clip(clipping ? static_cast<float>(clip_) : INFINITY),
        learned(learned_) {}

  int64_t out_dim() const { return learned ? 2 * d : d; }

  // Calls f(j, lane) over j = 0..d-1: 8 lanes at a time (lane a Vec), then one at a time (lane a float).
  template <typename F>
  void over_dims(const F& f) const {
    int64_t j = 0;
    for (; j + Vec::size() <= d; j += Vec::size()) f(j, Vec());
    for (; j < d; ++j) f(j, 0.0f);
  }

  // Drift μ_j = clip(o_μ,j), plus the Langevin term extra_j when `extra` is given (row pointers).
  template <typename V>
  V drift(const float* o, const float* extra, int64_t j) const {
    V mu = v_clamp(v_load<V>(o + j), clip);
    return extra ? mu + v_load<V>(extra + j) : mu;
  }

  // Log-variance multiplier t = range·tanh(clip(o_v)) (0 for a fixed variance).
  template <typename V>
  V log_mult(const float* o_v) const {
    return learned ? V(lvr) * v_tanh(v_clamp(v_load<V>(o_v), clip)) : V(0.0f);
  }

  // Σ_j log N(x_j; s_j + dt·μ_j, v_j) for one row from its residual sum Σ_j [(x − μ)²/v + t].
  float log_prob(float acc) const { return -0.5f * (acc + d * (kLog2Pi + log_var0)); }
};

// Row ranges [r0, r1) of `n` rows, one per thread (at least `min_rows` rows each).
template <typename F>
void over_row_chunks(int64_t n, int64_t min_rows, const F& f) {
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / std::max<int64_t>(min_rows, 1)));
  int64_t per = (n + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t r0 = c * per, r1 = std::min(n, r0 + per);
      if (r0 < r1) f(r0, r1);
    }
  });
}

const float* opt_ptr(const std::optional<Tensor>& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }
float* opt_mut_ptr(const std::optional<Tensor>& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

void check_f32_contiguous(const Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), what,
              " must be a contiguous CPU float32 tensor");
}

}  // namespace

// ----------------------------------------------------------------------------------------- the network
// A StateTimeNet at fixed weights (what FrozenNet holds): input layer w_in [d, H] with a per-time bias
// time_bias [T', H] (time embedding + input bias), hidden layers [H, H], output [H, out]; GELU after every layer
// but the last. `forward_rows` evaluates m rows at time index i, writing each layer's pre-activation z[k] and GELU
// output h[k] (row-major [m, H]; the same buffer for every k when nothing is recorded) and the raw output.
struct FrozenMLP {
  std::vector<Tensor> w, w_t, b;  // per layer: [K, N] weight, its transpose, bias (b[0] unused: time_bias)
  Tensor time_bias;
  int64_t H = 0, out_dim = 0, in_dim = 0;

  FrozenMLP(const Tensor& w_in, const Tensor& time_bias_, const std::vector<Tensor>& hidden_w,
            const std::vector<Tensor>& hidden_b, const Tensor& w_out, const Tensor& b_out)
      : time_bias(time_bias_.contiguous()) {
    w.push_back(w_in.contiguous());
    b.push_back(Tensor());
    for (size_t k = 0; k < hidden_w.size(); ++k) {
      w.push_back(hidden_w[k].contiguous());
      b.push_back(hidden_b[k].contiguous());
    }
    w.push_back(w_out.contiguous());
    b.push_back(b_out.contiguous());
    for (auto& wk : w) w_t.push_back(wk.t().contiguous());
    in_dim = w[0].size(0);
    H = w[0].size(1);
    out_dim = w.back().size(1);
  }

  int64_t n_act() const { return static_cast<int64_t>(w.size()) - 1; }

  void forward_rows(const float* x, int64_t m, int64_t i, float* const* z, float* const* h, float* out) const {
    const int64_t L = n_act();
    matmul_rows(x, w[0].data_ptr<float>(), w_t[0].data_ptr<float>(), z[0], m, in_dim, H, false);
    bias_gelu_rows(z[0], time_bias.data_ptr<float>() + i * H, h[0], m, H);
    for (int64_t k = 1; k < L; ++k) {
      matmul_rows(h[k - 1], w[k].data_ptr<float>(), w_t[k].data_ptr<float>(), z[k], m, H, H, false);
      bias_gelu_rows(z[k], b[k].data_ptr<float>(), h[k], m, H);
    }
    const float* bo = b[L].data_ptr<float>();
    for (int64_t r = 0; r < m; ++r) std::memcpy(out + r * out_dim, bo, sizeof(float) * out_dim);
    matmul_rows(h[L - 1], w[L].data_ptr<float>(), w_t[L].data_ptr<float>(), out, m, H, out_dim, true);
  }
};

// Pointers to layer k's rows [r0, r0 + m) of step i in a recording z, h [n_act, T, B, H] and out [T, B, out], or
// to a thread's scratch (one z and one h buffer shared by all layers; and the output, when `tout` is None too)
// where nothing is recorded.
struct LayerRows {
  std::vector<float*> z, h;
  float* out;

  LayerRows(const FrozenMLP& net, const std::optional<Tensor>& tz, const std::optional<Tensor>& th,
            const std::optional<Tensor>& tout, int64_t T, int64_t B, int64_t i, int64_t r0, int64_t m) {
    const int64_t L = net.n_act(), H = net.H;
    if (tz.has_value()) {
      for (int64_t k = 0; k < L; ++k) {
        z.push_back(tz->data_ptr<float>() + ((k * T + i) * B + r0) * H);
        h.push_back(th->data_ptr<float>() + ((k * T + i) * B + r0) * H);
      }
    } else {
      thread_local std::vector<float> scratch;  // per thread, reused across calls
      const size_t need = static_cast<size_t>(m * (2 * H + net.out_dim));
      if (scratch.size() < need) scratch.resize(need);
      z.assign(L, scratch.data());
      h.assign(L, scratch.data() + m * H);
      out = scratch.data() + 2 * m * H;
    }
    if (tout.has_value()) out = tout->data_ptr<float>() + (i * B + r0) * net.out_dim;
  }
};

void check_recording(const std::optional<Tensor>& tz, const std::optional<Tensor>& th,
                     const std::optional<Tensor>& tout) {
  if (tout.has_value()) check_f32_contiguous(*tout, "tape.out");
  if (!tz.has_value()) return;
  TORCH_CHECK(th.has_value() && tout.has_value(), "a recording needs z, h and out");
  check_f32_contiguous(*tz, "tape.z");
  check_f32_contiguous(*th, "tape.h");
}

// The network's output out [T, B, out] at states x [T, B, d], step i's time bias for x[i]; with z, h
// [n_act, T, B, H] every layer is recorded too (StateTimeNet.batched's no-grad pass). (Step, row chunk) pairs are
// split over the threads.
void mlp_record(const Tensor& w_in, const Tensor& time_bias, const std::vector<Tensor>& hidden_w,
                const std::vector<Tensor>& hidden_b, const Tensor& w_out, const Tensor& b_out, const Tensor& x,
                const std::optional<Tensor>& z, const std::optional<Tensor>& h, const Tensor& out) {
  const FrozenMLP net(w_in, time_bias, hidden_w, hidden_b, w_out, b_out);
  check_f32_contiguous(x, "states");
  check_recording(z, h, out);
  const int64_t T = x.size(0), B = x.size(1), d = x.size(2);
  constexpr int64_t kRows = 128;
  const int64_t per_step = (B + kRows - 1) / kRows;
  at::parallel_for(0, T * per_step, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i = c / per_step, r0 = (c % per_step) * kRows, m = std::min(kRows, B - r0);
      LayerRows rows(net, z, h, out, T, B, i, r0, m);
      net.forward_rows(x.data_ptr<float>() + (i * B + r0) * d, m, i, rows.z.data(), rows.h.data(), rows.out);
    }
  });
}

// --------------------------------------------------------------------------------------------- the rollout
// The sampling loop of one rollout at fixed weights. States S [T+1, B, d] (S[0] given); with a tape, every
// step's pre-activations z [n_act, T, B, H], GELU outputs h and raw outputs out [T, B, out] are recorded; with
// log_pf [T, B], log P_F of each step under the unexplored policy is written.
class PolicyRollout {
 public:
  PolicyRollout(Tensor w_in, Tensor time_bias, std::vector<Tensor> hidden_w, std::vector<Tensor> hidden_b, Tensor w_out,
                Tensor b_out, double dt, double var0, double log_var_range, bool learned_variance, bool clipping,
                double out_clip, double eps2, Tensor states, std::optional<Tensor> tape_z, std::optional<Tensor> tape_h,
                std::optional<Tensor> tape_out, std::optional<Tensor> log_pf)
      : net_(w_in, time_bias, hidden_w, hidden_b, w_out, b_out),
        head_(states.size(2), dt, var0, log_var_range, learned_variance, clipping, out_clip),
        e2_(static_cast<float>(eps2)),
        S_(states),
        tape_z_(std::move(tape_z)),
        tape_h_(std::move(tape_h)),
        tape_out_(std::move(tape_out)),
        log_pf_(std::move(log_pf)) {
    T_ = S_.size(0) - 1;
    B_ = S_.size(1);
    check_f32_contiguous(S_, "states");
    TORCH_CHECK(net_.out_dim == head_.out_dim(), "policy output width does not match the state dimension");
    check_recording(tape_z_, tape_h_, tape_out_);
    if (log_pf_.has_value()) check_f32_contiguous(*log_pf_, "log_pf");
  }

  // Step i: S[i] → S[i+1] with the step's N(0, I) noise [B, d] and an optional extra drift [B, d].
  void step(int64_t i, const Tensor& noise, const std::optional<Tensor>& extra) {
    TORCH_CHECK(i >= 0 && i < T_, "step index out of range");
    check_f32_contiguous(noise, "noise");
    if (extra.has_value()) check_f32_contiguous(*extra, "extra drift");
    const float* zp = noise.data_ptr<float>();
    const float* xp = opt_ptr(extra);
    const int64_t d = head_.d;
    over_row_chunks(B_, 16, [&](int64_t r0, int64_t r1) {
      const int64_t m = r1 - r0;
      LayerRows rows(net_, tape_z_, tape_h_, tape_out_, T_, B_, i, r0, m);
      const float* s = S_.data_ptr<float>() + (i * B_ + r0) * d;
      net_.forward_rows(s, m, i, rows.z.data(), rows.h.data(), rows.out);
      update(s, rows.out, zp + r0 * d, xp ? xp + r0 * d : nullptr, S_.data_ptr<float>() + ((i + 1) * B_ + r0) * d,
             log_pf_.has_value() ? opt_mut_ptr(log_pf_) + i * B_ + r0 : nullptr, m);
    });
  }

  // All T steps, the noise drawn step by step from `generator` exactly as torch.randn(B, d, generator=...) would.
  void run(std::optional<at::Generator> generator) {
    for (int64_t i = 0; i < T_; ++i) step(i, at::randn({B_, head_.d}, generator, S_.options()), std::nullopt);
  }

 private:
  // s_next = s + dt·μ + noise·√(v + ε²) on m rows, and optionally log P_F of s_next under ε = 0.
  void update(const float* s, const float* out, const float* noise, const float* extra, float* s_next, float* lp,
              int64_t m) const {
    const Head& hd = head_;
    const int64_t d = hd.d, od = hd.out_dim();
    for (int64_t r = 0; r < m; ++r) {
      const float* o = out + r * od;
      const int64_t base = r * d;
      float acc = 0.0f;
      hd.over_dims([&](int64_t j, auto lane) {
        using V = decltype(lane);
        V mu = hd.drift<V>(o, extra ? extra + base : nullptr, j);
        V t = hd.log_mult<V>(o + d + j);
        V v = V(hd.var0) * v_exp(t);
        V dev = v_load<V>(noise + base + j) * v_sqrt(v + V(e2_));
        v_store(s_next + base + j, v_load<V>(s + base + j) + V(hd.dt) * mu + dev);
        if (lp) acc += v_sum(dev * dev / v + t);
      });
      if (lp) lp[r] = hd.log_prob(acc);
    }
  }

  FrozenMLP net_;
  Head head_;
  float e2_;
  Tensor S_;
  std::optional<Tensor> tape_z_, tape_h_, tape_out_, log_pf_;
  int64_t T_ = 0, B_ = 0;
};

// ------------------------------------------------------------------------------------- recorded backward
// Backward pass of the recorded MLP (what _TapedNet.backward computes with batched matmuls): from the gradient
// of the raw output g [N, out] and the recording z, h [n_act, N, H] at inputs s [N, d] (N = T·B rows, step-major),
// the gradients of every weight (nn.Linear layout [out, in]) and bias, and of the per-step time bias d_t [T, H].
// weights: [w_in [H, d], hidden [H, H]..., w_out [out, H]]. Returns [dW_in, db_in, dW_1, db_1, ..., dW_out, db_out,
// d_t]. Tiles of rows go through all layers while in cache; each thread accumulates its own gradients.
std::vector<Tensor> mlp_backward(const Tensor& grad_out, const Tensor& z, const Tensor& h, const Tensor& s,
                                 const std::vector<Tensor>& weights, int64_t T) {
  const int64_t n_act = z.size(0), N = z.size(1), H = z.size(2), od = grad_out.size(1), d = s.size(1);
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK(L == n_act + 1, "mlp_backward: one weight per layer");
  Tensor g_c = grad_out.contiguous(), s_c = s.contiguous();
  check_f32_contiguous(z, "tape.z");
  check_f32_contiguous(h, "tape.h");
  std::vector<Tensor> w, w_t;  // row-major [in, out] views for dh = dz·W: W_layer is [out, in]
  for (const auto& wk : weights) {
    w.push_back(wk.contiguous());
    w_t.push_back(wk.t().contiguous());
  }
  const int64_t B = N / T;
  const int nthreads = at::get_num_threads();
  // per-thread accumulators: for each layer dW [out, in] and db [out]; and d_t [T, H]
  std::vector<int64_t> w_off(L), b_off(L);
  int64_t total = 0;
  for (int64_t k = 0; k < L; ++k) {
    w_off[k] = total;
    total += w[k].numel();
    b_off[k] = total;
    total += w[k].size(0);
  }
  const int64_t t_off = total;
  total += T * H;
  std::vector<std::vector<float>> acc(nthreads, std::vector<float>(total, 0.0f));
  constexpr int64_t kTile = 256;
  const int64_t n_tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, n_tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float>& a = acc[at::get_thread_num()];
    std::vector<float> dh(kTile * std::max(H, od)), dh2(kTile * H);
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t r0 = tile * kTile, m = std::min(kTile, N - r0);
      const float* g = g_c.data_ptr<float>() + r0 * od;
      auto z_at = [&](int64_t k) { return z.data_ptr<float>() + (k * N + r0) * H; };
      auto h_at = [&](int64_t k) { return h.data_ptr<float>() + (k * N + r0) * H; };
      // output layer: dW_out += gᵀ·h_last, db_out += Σ g, dh = g·W_out
      gemm_tn(g, h_at(n_act - 1), a.data() + w_off[L - 1], m, od, H, 1.0f);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t o = 0; o < od; ++o) a[b_off[L - 1] + o] += g[r * od + o];
      matmul_rows(g, w[L - 1].data_ptr<float>(), w_t[L - 1].data_ptr<float>(), dh.data(), m, od, H, false);
      for (int64_t k = n_act - 1; k >= 0; --k) {
        gelu_backward_inplace(dh.data(), z_at(k), m * H);  // dz of layer k
        float* db = a.data() + b_off[k];
        if (k > 0) {
          gemm_tn(dh.data(), h_at(k - 1), a.data() + w_off[k], m, H, H, 1.0f);
          for (int64_t r = 0; r < m; ++r) at::vec::map2<float>([](Vec x, Vec y) { return x + y; }, db, db, dh.data() + r * H, H);
          matmul_rows(dh.data(), w[k].data_ptr<float>(), w_t[k].data_ptr<float>(), dh2.data(), m, H, H, false);
          std::swap(dh, dh2);
        } else {
          // input layer: dW_in += dzᵀ·s; the time bias of each row's step collects dz (db_in is Σ_t d_t)
          if (d <= kSmall) {
            float* dw = a.data() + w_off[0];
            for (int64_t r = 0; r < m; ++r)
              for (int64_t j = 0; j < d; ++j) {
                const float sj = s_c.data_ptr<float>()[(r0 + r) * d + j];
                for (int64_t q = 0; q < H; ++q) dw[q * d + j] += dh[r * H + q] * sj;
              }
          } else {
            gemm_tn(dh.data(), s_c.data_ptr<float>() + r0 * d, a.data() + w_off[0], m, H, d, 1.0f);
          }
          for (int64_t r = 0; r < m; ++r) {
            float* dt = a.data() + t_off + ((r0 + r) / B) * H;
            at::vec::map2<float>([](Vec x, Vec y) { return x + y; }, dt, dt, dh.data() + r * H, H);
          }
        }
      }
    }
  });
  for (int t = 1; t < nthreads; ++t)
    for (int64_t q = 0; q < total; ++q) acc[0][q] += acc[t][q];
  std::vector<Tensor> grads;
  auto opts = s.options();
  for (int64_t k = 0; k < L; ++k) {
    grads.push_back(at::from_blob(acc[0].data() + w_off[k], w[k].sizes(), opts.dtype(at::kFloat)).clone());
    Tensor db = at::from_blob(acc[0].data() + b_off[k], {w[k].size(0)}, opts.dtype(at::kFloat)).clone();
    grads.push_back(db);
  }
  Tensor d_t = at::from_blob(acc[0].data() + t_off, {T, H}, opts.dtype(at::kFloat)).clone();
  grads[1] = d_t.sum(0);
  grads.push_back(d_t);
  return grads;
}

// ------------------------------------------------------------------------------------------ batched head
// The forward policy's head and Gaussian log-density over all steps at once (the gradient path of log P_F):
// rows n of `out` [N, out], `s`, `s_next`, `extra` [N, d]; μ = s + dt·(clip(out[:, :d]) + extra),
// v = dt·σ²·exp(range·tanh(clip(out[:, d:]))), log P_F = Σ_j log N(s_next_j; μ_j, v_j).
Tensor pf_head_log_prob(const Tensor& out, const Tensor& s, const Tensor& s_next, const std::optional<Tensor>& extra,
                        double dt, double var0, double lvr, bool learned, bool clipping, double clip) {
  const Head hd(s.size(-1), dt, var0, lvr, learned, clipping, clip);
  const int64_t d = hd.d, N = s.numel() / d, od = out.size(-1);
  Tensor o_c = out.contiguous(), s_c = s.contiguous(), x_c = s_next.contiguous();
  Tensor e_c = extra.has_value() ? extra->contiguous() : Tensor();
  Tensor lp = at::empty({N}, s.options());
  const float *o = o_c.data_ptr<float>(), *sp = s_c.data_ptr<float>(), *xp = x_c.data_ptr<float>();
  const float* ep = e_c.defined() ? e_c.data_ptr<float>() : nullptr;
  float* lpp = lp.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* orow = o + n * od;
      const int64_t base = n * d;
      float acc = 0.0f;
      hd.over_dims([&](int64_t j, auto lane) {
        using V = decltype(lane);
        V mu = hd.drift<V>(orow, ep ? ep + base : nullptr, j);
        V r = v_load<V>(xp + base + j) - v_load<V>(sp + base + j) - V(hd.dt) * mu;
        V t = hd.log_mult<V>(orow + d + j);
        acc += v_sum(r * r / (V(hd.var0) * v_exp(t)) + t);
      });
      lpp[n] = hd.log_prob(acc);
    }
  });
  return lp.view(s.sizes().slice(0, s.dim() - 1));
}

// Gradients of pf_head_log_prob with respect to `out` and `extra` (None when extra is None):
// ∂lp/∂μ = r/v with r = x − μ; ∂lp/∂o_v = ½(r²/v − 1)·range·(1 − tanh²); both zero where the clip is active.
std::vector<std::optional<Tensor>> pf_head_log_prob_backward(const Tensor& grad, const Tensor& out, const Tensor& s,
                                                              const Tensor& s_next,
                                                              const std::optional<Tensor>& extra, double dt,
                                                              double var0, double lvr, bool learned, bool clipping,
                                                              double clip) {
  const Head hd(s.size(-1), dt, var0, lvr, learned, clipping, clip);
  const int64_t d = hd.d, N = s.numel() / d, od = out.size(-1);
  Tensor o_c = out.contiguous(), s_c = s.contiguous(), x_c = s_next.contiguous(), g_c = grad.contiguous();
  Tensor e_c = extra.has_value() ? extra->contiguous() : Tensor();
  Tensor d_out = at::empty_like(o_c);
  Tensor d_extra = extra.has_value() ? at::empty_like(s_c) : Tensor();
  const float *o = o_c.data_ptr<float>(), *sp = s_c.data_ptr<float>(), *xp = x_c.data_ptr<float>();
  const float* gp = g_c.data_ptr<float>();
  const float* ep = e_c.defined() ? e_c.data_ptr<float>() : nullptr;
  float* dop = d_out.data_ptr<float>();
  float* dep = d_extra.defined() ? d_extra.data_ptr<float>() : nullptr;
  at::parallel_for(0, N, 1024, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* orow = o + n * od;
      float* drow = dop + n * od;
      const int64_t base = n * d;
      const float g = gp[n];
      hd.over_dims([&](int64_t j, auto lane) {
        using V = decltype(lane);
        V om = v_load<V>(orow + j);
        V mu = hd.drift<V>(orow, ep ? ep + base : nullptr, j);
        V r = v_load<V>(xp + base + j) - v_load<V>(sp + base + j) - V(hd.dt) * mu;
        V v = V(hd.var0);
        if (hd.learned) {
          V ov = v_load<V>(orow + d + j);
          V th = v_tanh(v_clamp(ov, hd.clip));
          v = v * v_exp(V(hd.lvr) * th);
          V dv = V(0.5f * g * hd.lvr) * (r * r / v - V(1.0f)) * (V(1.0f) - th * th);
          v_store(drow + d + j, v_pass(dv, ov, hd.clip));
        }
        V dmu = V(g * hd.dt) * r / v;  // ∂lp/∂(drift before the step)
        v_store(drow + j, v_pass(dmu, om, hd.clip));
        if (dep) v_store(dep + base + j, dmu);
      });
    }
  });
  return {d_out.view(out.sizes()), d_extra.defined() ? std::optional<Tensor>(d_extra.view(s.sizes())) : std::nullopt};
}

// ---------------------------------------------------------------------------------------- Brownian bridge
// log P_B(s_i | s_{i+1}) of the σ²-Brownian bridge pinned at 0 for states S [T+1, B, d]: row i ≥ 1 is
// log N(s_i; s_{i+1}·i/(i+1), σ²·dt·i/(i+1)·I); row 0 (the deterministic step to s_0) is 0. Returns [T, B].
Tensor bridge_log_prob(const Tensor& states, double t_scale, double dt) {
  Tensor S = states.contiguous();
  const int64_t T = S.size(0) - 1, B = S.size(1), d = S.size(2);
  Tensor lp = at::zeros({T, B}, S.options());
  const float* sp = S.data_ptr<float>();
  float* lpp = lp.data_ptr<float>();
  at::parallel_for(1, T, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float frac = static_cast<float>(i) / static_cast<float>(i + 1);
      const float var = static_cast<float>(t_scale * dt) * frac;
      const float inv_var = 1.0f / var, norm = d * (kLog2Pi + std::log(var));
      const float* prev = sp + i * B * d;
      const float* next = sp + (i + 1) * B * d;
      for (int64_t b = 0; b < B; ++b) {
        float acc = 0.0f;
        for (int64_t j = 0; j < d; ++j) {
          float r = prev[b * d + j] - (next[b * d + j] - next[b * d + j] / static_cast<float>(i + 1));
          acc += r * r;
        }
        lpp[i * B + b] = -0.5f * (acc * inv_var + norm);
      }
    }
  });
  return lp;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<PolicyRollout>(m, "PolicyRollout")
      .def(pybind11::init<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, Tensor, Tensor, double, double,
                          double, bool, bool, double, double, Tensor, std::optional<Tensor>, std::optional<Tensor>,
                          std::optional<Tensor>, std::optional<Tensor>>())
      .def("step", &PolicyRollout::step)
      .def("run", &PolicyRollout::run);
  m.def("mlp_record", &mlp_record);
  m.def("mlp_backward", &mlp_backward);
  m.def("pf_head_log_prob", &pf_head_log_prob);
  m.def("pf_head_log_prob_backward", &pf_head_log_prob_backward);
  m.def("bridge_log_prob", &bridge_log_prob);
}
