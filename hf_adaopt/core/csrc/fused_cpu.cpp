// AdaOpt's fused CPU step, written in torch's own fused-kernel pattern (aten/src/ATen/native/cpu/FusedAdamKernel.cpp:
// ATen's Vectorized<T> loops over fixed chunks of each tensor, the chunks in parallel with at::parallel_for).
//
// Why not torch.compile: inductor (torch 2.13, CPU) gives every reduction its own loop, so each statistic the
// controller reads cost one more pass over memory; its outer-loop fusion, which would put them in the update's loop,
// fails to compile an update that reads a tensor another output overwrites (the Adam update does).
//
// One entry point, `apply`, the whole step on the device side: Adam's moments, decoupled weight decay and the
// parameter update, reading p, g, m, v and writing p, m, v once (AdamW's own traffic). On the subsample (blocks of
// 16 of every 256 elements, small tensors whole) the same loop writes the new direction and sums everything the
// next step's controller reads: this step's reading for the secant (g.d_old, g^2, and the last `pre`), the new
// `pre` (g.d_new), and the state's m^2, v, d_new^2 and p^2. Elements whose gradient is not finite are left as they
// were (parameter, both moments and the direction), count as a zero gradient in the sums, and are counted.
// Per-chunk partial sums are added in chunk order: the result does not depend on the number of threads.
#include <torch/extension.h>
#include <torch/csrc/autograd/variable.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

// kBlock, kPeriod, kSmall (the subsample), the scalar table's rows (kOneMinusBeta1 ... kNumScalars), the rows this
// kernel returns (kCarriedMSq ... kNumCarried) and the reading's (kReadingAfter ... kNumReading) are not defined here:
// hf_adaopt/core/fused_cpu.py generates them from the Python definitions (functional.py, fused.py) as a prelude to this
// file, so the two sides cannot disagree (see `constants_header()`).
// Rows (periods of 256 elements) per parallel task: 16K elements, 64 KB per fp32 stream.
constexpr int64_t kChunkRows = 64;
// The accumulators (internal to this file): over the subsample the reading (g.d_old, g^2), the new pre (g.d_new), and
// the state (m^2, v, d^2, p^2); over the whole tensor, the number of elements whose gradient was not finite.
enum { kAfter, kGradSq, kPre, kMSq, kVSum, kDirSq, kParamSq, kMasked, kNumSums };

template <typename state_t>
using Vec = at::vec::Vectorized<state_t>;

// Parameters and gradients are param_t (fp32, fp64, bf16 or fp16); the math runs in state_t (fp32 or fp64).
template <typename param_t, typename state_t>
inline Vec<state_t> load(const param_t* ptr, int64_t count) {
  if constexpr (std::is_same_v<param_t, state_t>) {
    return Vec<state_t>::loadu(ptr, count);
  } else {
    if (count == Vec<state_t>::size()) {
      Vec<state_t> out;
      at::vec::load_to_float<param_t>(ptr, out);
      return out;
    }
    state_t buf[Vec<state_t>::size()] = {};
    for (int64_t k = 0; k < count; ++k) buf[k] = static_cast<state_t>(ptr[k]);
    return Vec<state_t>::loadu(buf);
  }
}

template <typename param_t, typename state_t>
inline void store(param_t* ptr, const Vec<state_t>& x, int64_t count) {
  if constexpr (std::is_same_v<param_t, state_t>) {
    x.store(ptr, count);
  } else {
    at::vec::convert_from_float<param_t>(x, x).store(ptr, count);  // one rounding, from the fp32 result
  }
}

template <typename state_t>
inline double hsum(const Vec<state_t>& x) {
  state_t buf[Vec<state_t>::size()];
  x.store(buf);
  double s = 0.0;
  for (int64_t k = 0; k < Vec<state_t>::size(); ++k) s += buf[k];
  return s;
}

// The subsample of a tensor of n elements as rows: `rows` segments of `row_len` elements, segment r starting at
// element r * stride of the tensor and at r * row_len of the subsample.
struct Layout {
  int64_t rows, row_len, stride;
  explicit Layout(int64_t n)
      : rows(n <= kSmall ? (n > 0 ? 1 : 0) : n / kPeriod),
        row_len(n <= kSmall ? n : kBlock),
        stride(n <= kSmall ? 0 : kPeriod) {}
  int64_t chunks() const { return (rows + kChunkRows - 1) / kChunkRows; }
};

template <typename param_t, typename state_t>
struct Apply {
  using V = Vec<state_t>;
  param_t* p;
  const param_t* g;
  state_t* m;
  state_t* v;
  state_t* d;
  V one_minus_beta1, beta2, one_minus_beta2, eps_c2, keep, step_c2_c1, dir_c2_c1;

  Apply(const at::Tensor& p_t, const at::Tensor& g_t, const at::Tensor& m_t, const at::Tensor& v_t,
        const at::Tensor& d_t, const double* s)
      : p(p_t.data_ptr<param_t>()), g(g_t.const_data_ptr<param_t>()), m(m_t.data_ptr<state_t>()),
        v(v_t.data_ptr<state_t>()), d(d_t.data_ptr<state_t>()), one_minus_beta1(s[kOneMinusBeta1]),
        beta2(s[kBeta2]), one_minus_beta2(s[kOneMinusBeta2]), eps_c2(s[kEpsC2]), keep(s[kKeep]),
        step_c2_c1(s[kStepC2C1]), dir_c2_c1(s[kDirC2C1]) {}

  // Elements [i, i + count) of the tensor (count <= V::size()); on the subsample, j is their index in it and
  // sums[] collects (kAfter ... kParamSq).
  // Always inlined: built with OpenMP (for at::parallel_for), the compiler kept it out of line otherwise, and the
  // step ran 5-10% slower on one core.
  template <bool kSub>
  C10_ALWAYS_INLINE void operator()(int64_t i, int64_t count, int64_t j, V* sums) const {
    const V gv = load<param_t, state_t>(g + i, count);
    const V mv = V::loadu(m + i, count);
    const V vv = V::loadu(v + i, count);
    const V pv = load<param_t, state_t>(p + i, count);
    const V m_new = mv + one_minus_beta1 * (gv - mv);  // m.lerp_(g, 1 - beta1)
    const V v_new = vv * beta2 + one_minus_beta2 * (gv * gv);
    // the bias corrections are folded into the scalars: u = (c2 / c1) m / (sqrt(v) + c2 eps)
    const V u = m_new / (v_new.sqrt() + eps_c2);
    const V p_new = pv * keep - step_c2_c1 * u;
    const V finite = (gv - gv) == V(0);  // inf - inf and NaN - NaN are NaN
    sums[kMasked] = sums[kMasked] + V::blendv(V(1), V(0), finite);
    V m_out = V::blendv(mv, m_new, finite), v_out = V::blendv(vv, v_new, finite), p_out = V::blendv(pv, p_new, finite);
    m_out.store(m + i, count);
    v_out.store(v + i, count);
    store<param_t, state_t>(p + i, p_out, count);
    if constexpr (kSub) {
      const V d_old = V::loadu(d + j, count);  // u_{t-1}, before this step replaces it
      V direction = V::blendv(d_old, dir_c2_c1 * u, finite);
      direction.store(d + j, count);
      if (count < V::size()) {  // lanes past the end hold u = 0 / eps: keep them out of the sums
        direction = V::set(V(0), direction, count);
        m_out = V::set(V(0), m_out, count);
        v_out = V::set(V(0), v_out, count);
        p_out = V::set(V(0), p_out, count);
      }
      // (loads past the end are zero: g and d_old need no such care)
      const V g_kept = V::blendv(V(0), gv, finite);
      sums[kAfter] = sums[kAfter] + g_kept * d_old;
      sums[kGradSq] = sums[kGradSq] + g_kept * g_kept;
      sums[kPre] = sums[kPre] + g_kept * direction;
      sums[kMSq] = sums[kMSq] + m_out * m_out;
      sums[kVSum] = sums[kVSum] + v_out;
      sums[kDirSq] = sums[kDirSq] + direction * direction;
      sums[kParamSq] = sums[kParamSq] + p_out * p_out;
    }
  }
};

template <typename param_t, typename state_t>
void apply_one(const at::Tensor& p_t, const at::Tensor& g_t, const at::Tensor& m_t, const at::Tensor& v_t,
               const at::Tensor& d_t, const at::Tensor& pre_t, const at::Tensor& reading_t, const double* s,
               double* out) {
  using V = Vec<state_t>;
  static_assert((kPeriod - kBlock) % V::size() == 0, "the rest of a period must be whole vectors");
  const Apply<param_t, state_t> op(p_t, g_t, m_t, v_t, d_t, s);
  const int64_t n = p_t.numel();
  const Layout lay(n);
  const int64_t tail_start = lay.stride == 0 ? n : lay.rows * kPeriod;  // past the last full period: no subsample
  std::vector<double> partial(kNumSums * lay.chunks(), 0.0);
  // Nothing below throws: the tensor is written whole or not at all. Its version counters move first, as any in-place
  // op's do (autograd sees the write; fused.py reads them to know which tensors a failed call wrote).
  for (const at::Tensor* t : {&p_t, &m_t, &v_t, &d_t, &pre_t, &reading_t})
    if (!t->is_inference()) torch::autograd::impl::bump_version(*t);
  auto chunks = [&](int64_t c0, int64_t c1) {
    const Apply<param_t, state_t> op_local = op;  // the step's constants, local to the task
    for (int64_t c = c0; c < c1; ++c) {
      V sums[kNumSums];
      for (auto& x : sums) x = V(0);
      for (int64_t r = c * kChunkRows; r < std::min(lay.rows, (c + 1) * kChunkRows); ++r) {
        const int64_t start = r * lay.stride;
        for (int64_t k = 0; k < lay.row_len; k += V::size())
          op_local.template operator()<true>(start + k, std::min<int64_t>(V::size(), lay.row_len - k),
                                             r * lay.row_len + k, sums);
        const int64_t end = lay.stride == 0 ? start : start + kPeriod;
        for (int64_t i = start + lay.row_len; i < end; i += V::size())
          op_local.template operator()<false>(i, V::size(), 0, sums);  // whole vectors (static_assert above)
      }
      for (int j = 0; j < kNumSums; ++j) partial[kNumSums * c + j] = hsum(sums[j]);
    }
  };
  if (at::get_num_threads() == 1 || lay.chunks() < 2)
    chunks(0, lay.chunks());
  else
    at::parallel_for(0, lay.chunks(), 1, chunks);
  V tail_sums[kNumSums];
  for (auto& x : tail_sums) x = V(0);
  for (int64_t i = tail_start; i < n; i += V::size())
    op.template operator()<false>(i, std::min<int64_t>(V::size(), n - i), 0, tail_sums);
  double total[kNumSums] = {};
  total[kMasked] = hsum(tail_sums[kMasked]);
  for (int64_t c = 0; c < lay.chunks(); ++c)
    for (int j = 0; j < kNumSums; ++j) total[j] += partial[kNumSums * c + j];
  state_t* reading = reading_t.data_ptr<state_t>();  // as single_tensor_apply writes it
  state_t* pre = pre_t.data_ptr<state_t>();
  reading[kReadingAfter] = static_cast<state_t>(total[kAfter]);
  reading[kReadingGradSq] = static_cast<state_t>(total[kGradSq]);
  reading[kReadingPre] = pre[0];  // the last step's pre, before this step replaces it
  pre[0] = static_cast<state_t>(total[kPre]);
  out[kCarriedMSq] = total[kMSq];
  out[kCarriedVSum] = total[kVSum];
  out[kCarriedParamSq] = total[kParamSq];
  out[kCarriedDirSq] = total[kDirSq];
  out[kCarriedMasked] = total[kMasked];
}

// (param dtype, state dtype) -> the instantiation; anything else is refused (the caller falls back to foreach)
template <typename F>
void dispatch(const at::Tensor& p, const at::Tensor& m, F&& f) {
  const auto pt = p.scalar_type(), st = m.scalar_type();
  if (pt == at::kFloat && st == at::kFloat) return f(float{}, float{});
  if (pt == at::kDouble && st == at::kDouble) return f(double{}, double{});
  if (pt == at::kBFloat16 && st == at::kFloat) return f(at::BFloat16{}, float{});
  if (pt == at::kHalf && st == at::kFloat) return f(at::Half{}, float{});
  TORCH_CHECK(false, "AdaOpt fused CPU step: unsupported dtypes (parameter ", pt, ", state ", st, ")");
}

// Every tensor is checked before any is written: a refused step leaves nothing half-done for the fallback.
void check(const std::vector<at::Tensor>& ts, const std::vector<at::Tensor>& params, const char* what) {
  TORCH_CHECK(ts.size() == params.size(), "AdaOpt fused CPU step: ", what, ": ", ts.size(), " tensors for ",
              params.size(), " parameters");
  for (size_t i = 0; i < ts.size(); ++i)
    TORCH_CHECK(ts[i].device().is_cpu() && ts[i].is_contiguous(), "AdaOpt fused CPU step: ", what, " ", i,
                " must be a contiguous CPU tensor");
}

void check_dtypes(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<at::Tensor>& states) {
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(grads[i].scalar_type() == params[i].scalar_type() && grads[i].numel() == params[i].numel(),
                "AdaOpt fused CPU step: gradient ", i, " differs from its parameter in dtype or size");
    dispatch(params[i], states[i], [](auto, auto) {});
  }
}

}  // namespace

// Updates every tensor in place, one after the other, each whole or not at all; `scalars` is the (kNumScalars, n)
// float64 table. Writes each tensor's reading (g.d_old, g^2, the last pre) and new pre (g.d_new), and returns a
// (kNumCarried, n) float64 tensor: the subsample's sums of m^2, v, p^2 and d_new^2 after the update, and the number of
// elements whose gradient was not finite.
at::Tensor apply(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> exp_avgs,
                 std::vector<at::Tensor> exp_avg_sqs, std::vector<at::Tensor> directions, std::vector<at::Tensor> pres,
                 std::vector<at::Tensor> readings, at::Tensor scalars) {
  const int64_t n = params.size();
  TORCH_CHECK(scalars.scalar_type() == at::kDouble && scalars.is_contiguous() && scalars.dim() == 2 &&
                  scalars.size(0) == kNumScalars && scalars.size(1) == n,
              "apply: scalars must be a contiguous float64 (", kNumScalars, ", ", n, ") tensor");
  check(params, params, "parameter");
  check(grads, params, "gradient");
  check(exp_avgs, params, "exp_avg");
  check(exp_avg_sqs, params, "exp_avg_sq");
  check(directions, params, "direction");
  check(pres, params, "pre");
  check(readings, params, "reading");
  check_dtypes(params, grads, exp_avgs);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(exp_avg_sqs[i].scalar_type() == exp_avgs[i].scalar_type() &&
                    directions[i].scalar_type() == exp_avgs[i].scalar_type() &&
                    pres[i].scalar_type() == exp_avgs[i].scalar_type() && pres[i].numel() == 1 &&
                    readings[i].scalar_type() == exp_avgs[i].scalar_type() && readings[i].numel() == kNumReading &&
                    exp_avgs[i].numel() == params[i].numel() && exp_avg_sqs[i].numel() == params[i].numel() &&
                    directions[i].numel() == Layout(params[i].numel()).rows * Layout(params[i].numel()).row_len,
                "AdaOpt fused CPU step: the state of parameter ", i, " does not match it in dtype or size");
  at::Tensor out = at::zeros({kNumCarried, n}, at::kDouble);
  double* rows = out.data_ptr<double>();
  const double* table = scalars.const_data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    double s[kNumScalars];
    for (int k = 0; k < kNumScalars; ++k) s[k] = table[k * n + i];
    double row[kNumCarried];
    dispatch(params[i], exp_avgs[i], [&](auto param_v, auto state_v) {
      apply_one<decltype(param_v), decltype(state_v)>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                                      directions[i], pres[i], readings[i], s, row);
    });
    for (int j = 0; j < kNumCarried; ++j) rows[j * n + i] = row[j];
  }
  return out;
}
