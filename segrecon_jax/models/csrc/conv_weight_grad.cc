// Weight gradient of a 2D convolution (NHWC input, HWIO kernel) for XLA:CPU, as an XLA FFI custom call.
//
//   dw[i, j, c, o] = sum_{b, y, x} x[b, y*sh + i*dh - pt, x*sw + j*dw - pl, c] * g[b, y, x, o]
//
// where x is the convolution's input [B, H, W, C] (zero outside it: the padding is implicit, no padded copy; a
// negative pt or pl crops) and g the output cotangent [B, Ho, Wo, O], both float32.
// XLA:CPU computes this as a convolution with a Ho x Wo window and a kh x kw output, which runs far below the
// machine's FMA rate; PyTorch (oneDNN) runs a direct kernel. This is such a direct kernel, without patches:
// register-blocked outer products (a block of CB input channels times NV vectors of output channels stays in
// registers while the kernel walks the output positions of a chunk of rows), chunks of rows spread over XLA's
// intra-op thread pool in fixed slots of rows, each accumulating its own partial dw, summed in slot order at the end
// (deterministic).
//
// Built by segrecon_jax/models/native.py with `g++ -O3 -march=native -shared -fPIC` against jaxlib's FFI headers.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "native_common.h"

namespace ffi = xla::ffi;

namespace segrecon_native {
namespace {

constexpr int kMaxChannelBlock = 6;  // input channels per register block

struct Geometry {
  int64_t batch, h, w, in_ch, ho, wo, out_ch, kh, kw, sh, sw, dh, dw, pt, pl;
};

// acc[c0:c0+CB, o0:o0+NV*kLanes] of tap (i, j) += over the rows [row_begin, row_end) of (b, y), for the output
// columns [x0, x1) (those whose input column lies inside the input; rows outside it are skipped).
template <int CB, int NV>
void Block(const Geometry& g, const float* xd, const float* cot, float* dw_tap, int64_t i, int64_t j, int64_t c0,
           int64_t o0, int64_t row_begin, int64_t row_end, int64_t x0, int64_t x1) {
  Vec acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = LoadVec(dw_tap + (c0 + c) * g.out_ch + o0 + v * kLanes);
  const int64_t x_step = g.sw * g.in_ch;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / g.ho, y = row % g.ho;
    const int64_t iy = y * g.sh + i * g.dh - g.pt;
    if (iy < 0 || iy >= g.h) continue;  // A padding row: zero.
    const float* x_row = xd + ((b * g.h + iy) * g.w + x0 * g.sw + j * g.dw - g.pl) * g.in_ch + c0;
    const float* g_row = cot + row * g.wo * g.out_ch + o0;
    for (int64_t x = x0; x < x1; ++x) {
      Vec gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = LoadVec(g_row + x * g.out_ch + v * kLanes);
      const float* xs = x_row + (x - x0) * x_step;
      for (int c = 0; c < CB; ++c) {
        const Vec xb = Broadcast(xs + c);
        for (int v = 0; v < NV; ++v) acc[c][v] += xb * gv[v];
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) StoreVec(dw_tap + (c0 + c) * g.out_ch + o0 + v * kLanes, acc[c][v]);
}

template <int NV>
void BlockC(int cb, const Geometry& g, const float* xd, const float* cot, float* dw_tap, int64_t i, int64_t j,
            int64_t c0, int64_t o0, int64_t r0, int64_t r1, int64_t x0, int64_t x1) {
  switch (cb) {
    case 6: return Block<6, NV>(g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1);
    case 5: return Block<5, NV>(g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1);
    case 4: return Block<4, NV>(g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1);
    case 3: return Block<3, NV>(g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1);
    case 2: return Block<2, NV>(g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1);
    default: return Block<1, NV>(g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1);
  }
}

// Adds the rows [r0, r1) into `dw` [kh, kw, C, O].
void Rows(const Geometry& g, const float* xd, const float* cot, float* dw, int64_t r0, int64_t r1) {
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      float* dw_tap = dw + (i * g.kw + j) * g.in_ch * g.out_ch;
      // Output columns whose input column x*sw + j*dw - pl lies inside [0, w).
      const int64_t off = j * g.dw - g.pl;
      const int64_t x0 = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
      const int64_t x1 = g.w - off <= 0 ? 0 : std::min<int64_t>(g.wo, (g.w - off + g.sw - 1) / g.sw);
      if (x1 <= x0) continue;
      for (int64_t c0 = 0; c0 < g.in_ch; c0 += kMaxChannelBlock) {
        const int cb = static_cast<int>(std::min<int64_t>(kMaxChannelBlock, g.in_ch - c0));
        for (int64_t o0 = 0; o0 < g.out_ch;) {
          const int64_t vectors = std::min<int64_t>(kMaxVectors, (g.out_ch - o0) / kLanes);
          switch (vectors) {
            case 4: BlockC<(kMaxVectors >= 4 ? 4 : 1)>(cb, g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1); break;
            case 3: BlockC<(kMaxVectors >= 3 ? 3 : 1)>(cb, g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1); break;
            case 2: BlockC<2>(cb, g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1); break;
            default: BlockC<1>(cb, g, xd, cot, dw_tap, i, j, c0, o0, r0, r1, x0, x1); break;
          }
          o0 += vectors * kLanes;
        }
      }
    }
  }
}

ffi::Error ConvWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xb, ffi::Buffer<ffi::F32> cot,
                              ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                              int64_t dh, int64_t dw_, int64_t pt, int64_t pl) {
  auto xd = xb.dimensions();
  auto gd = cot.dimensions();
  if (xd.size() != 4 || gd.size() != 4 || xd[0] != gd[0])
    return ffi::Error::InvalidArgument("conv_weight_grad: needs x [B, H, W, C] and g [B, Ho, Wo, O]");
  Geometry g{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], kh, kw, sh, sw, dh, dw_, pt, pl};
  if (g.out_ch % kLanes != 0)
    return ffi::Error::InvalidArgument("conv_weight_grad: output channels must be a multiple of the vector width");
  if (sh < 1 || sw < 1 || dh < 1 || dw_ < 1)
    return ffi::Error::InvalidArgument("conv_weight_grad: strides and dilation must be positive");
  const int64_t size = kh * kw * g.in_ch * g.out_ch;
  const int64_t rows = g.batch * g.ho;
  // Chunks of rows whose cotangent and input rows stay in L2 (about 256 KiB) while every tap and block walks them.
  const int64_t row_bytes = g.wo * (g.out_ch + g.sw * g.in_ch) * 4;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, (256 << 10) / std::max<int64_t>(1, row_bytes)));
  const int64_t num_chunks = (rows + chunk - 1) / chunk;
  if (rows == 0 || size == 0) {  // Nothing to sum over (an empty batch): the gradient is zero.
    std::fill(out->typed_data(), out->typed_data() + size, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), num_chunks));
  // Up to 4 slots per thread, so that a thread that starts late or runs slowly leaves at most a small slot behind,
  // while the partial sums beyond one per thread stay under 16 MiB (they are added up on one thread at the end).
  const int64_t extra = std::min<int64_t>(3 * workers, (int64_t{16} << 20) / (4 * size));
  const int64_t num_slots = std::max<int64_t>(1, std::min<int64_t>(num_chunks, workers + extra));

  std::vector<float> partials(static_cast<size_t>((num_slots - 1) * size), 0.0f);
  float* result = out->typed_data();
  std::fill(result, result + size, 0.0f);
  const float* x_data = xb.typed_data();
  const float* g_data = cot.typed_data();

  // The rows are split into `num_slots` slots of consecutive chunks; slot s sums its chunks in order into its own
  // buffer (slot 0 into the result), and the buffers are added in slot order at the end, so the result does not
  // depend on which thread ran which slot: the same inputs give the same bits on every run (of one machine: the
  // slots follow the thread count and the layer's size).
  ParallelFor(pool, num_slots, [&](int64_t w) {
    float* acc = w == 0 ? result : partials.data() + (w - 1) * size;
    for (int64_t k = w * num_chunks / num_slots; k < (w + 1) * num_chunks / num_slots; ++k)
      Rows(g, x_data, g_data, acc, k * chunk, std::min(rows, (k + 1) * chunk));
  });
  for (int64_t w = 1; w < num_slots; ++w) {
    const float* p = partials.data() + (w - 1) * size;
    for (int64_t n = 0; n < size; ++n) result[n] += p[n];
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace segrecon_native

XLA_FFI_DEFINE_HANDLER_SYMBOL(SegreconConvWeightGrad, segrecon_native::ConvWeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

// The vector width the library was built with: the output channels the caller passes must be a multiple of it.
extern "C" int SegreconConvWeightGradLanes() { return segrecon_native::kLanes; }
