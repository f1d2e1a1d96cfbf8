// A 2D convolution (NHWC input, HWIO kernel) for XLA:CPU, as an XLA FFI custom call: the forward pass, and (with
// the kernel flipped and its channel axes swapped) the input gradient of a stride-1 convolution.
//
//   out[b, y, x, o] = sum_{i, j, c} x[b, y*sh + i*dh - pt, x*sw + j*dw - pl, c] * w[i, j, c, o]
//
// with zero padding implicit (positions outside the input contribute nothing; the bottom and right padding follow
// from the output's shape), all float32. XLA:CPU runs the models' layers with 32 or 64 outputs, and 1x1 layers most
// of all, well below the FMA units' rate; this kernel is closer to it (benchmarks/conv_bench.py --forward; the
// figures are in docs/benchmarks.md).
// This is a direct kernel without patches, blocked as a GEMM of output pixels x output channels x (tap, input
// channel): for each tap and chunk of input channels (whose weight panel stays in L1 cache), register blocks of P
// consecutive output pixels x NV vectors of output channels (P * NV = 24 accumulators) are loaded from the output,
// accumulated over the chunk (one broadcast input value times NV weight vectors per pixel and channel) and stored
// back. Work items (a tile of output rows x a block of up to 4 output vectors) are spread over XLA's intra-op
// thread pool; every output element is computed by one item in a fixed order, so results do not depend on the
// threads (deterministic).
//
// Built by segrecon_jax/models/native.py with conv_weight_grad.cc into one library.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "native_common.h"

namespace ffi = xla::ffi;

namespace segrecon_native {
namespace {

#if defined(__AVX512F__)
constexpr int kAccumulators = 24;  // of the 32 vector registers: the rest hold weights and one broadcast input
#else
constexpr int kAccumulators = 12;  // of 16 registers
#endif
constexpr int64_t kPanelBytes = 24 << 10;  // a weight panel (input channels x output vectors) that stays in L1
constexpr int64_t kTilePixels = 64;        // output pixels per work item at least (several rows when rows are short)

struct Geometry {
  int64_t batch, h, w, in_ch, ho, wo, out_ch, kh, kw, sh, sw, dh, dw, pt, pl;
};

// out[p, o0:o0+NV*L] += sum_{c < kc} xs[p*xstep + c] * wt[c*out_ch + o0 + v*L], for P consecutive pixels.
template <int P, int NV>
inline void Micro(const float* xs, int64_t xstep, const float* wt, int64_t out_ch, int64_t kc, float* out) {
  Vec acc[P][NV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = LoadVec(out + p * out_ch + v * kLanes);
  for (int64_t c = 0; c < kc; ++c) {
    Vec wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = LoadVec(wt + c * out_ch + v * kLanes);
    for (int p = 0; p < P; ++p) {
      const Vec xb = Broadcast(xs + p * xstep + c);
      for (int v = 0; v < NV; ++v) acc[p][v] += xb * wv[v];
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) StoreVec(out + p * out_ch + v * kLanes, acc[p][v]);
}

// Micro for the last p < P pixels of a span.
template <int NV, int P = kAccumulators / NV>
inline void MicroTail(int p, const float* xs, int64_t xstep, const float* wt, int64_t out_ch, int64_t kc, float* out) {
  if constexpr (P >= 1) {
    if (p == P) return Micro<P, NV>(xs, xstep, wt, out_ch, kc, out);
    return MicroTail<NV, P - 1>(p, xs, xstep, wt, out_ch, kc, out);
  }
}

// The pixels [x0, x1) of output row `row` (= b*ho + y), output channels o0 + [0, NV*L), tap (i, j), channels
// [c0, c0 + kc).
template <int NV>
void Span(const Geometry& g, const float* x, const float* w, float* out, int64_t row, int64_t x0, int64_t x1,
          int64_t iy, int64_t j, int64_t i, int64_t c0, int64_t kc, int64_t o0) {
  constexpr int P = kAccumulators / NV;
  const int64_t b = row / g.ho;
  const int64_t xstep = g.sw * g.in_ch;
  const float* wt = w + ((i * g.kw + j) * g.in_ch + c0) * g.out_ch + o0;
  const float* xrow = x + ((b * g.h + iy) * g.w) * g.in_ch + c0;
  float* orow = out + row * g.wo * g.out_ch + o0;
  int64_t px = x0;
  for (; px + P <= x1; px += P)
    Micro<P, NV>(xrow + (px * g.sw + j * g.dw - g.pl) * g.in_ch, xstep, wt, g.out_ch, kc, orow + px * g.out_ch);
  if (px < x1)
    MicroTail<NV>(static_cast<int>(x1 - px), xrow + (px * g.sw + j * g.dw - g.pl) * g.in_ch, xstep, wt, g.out_ch, kc,
                  orow + px * g.out_ch);
}

// Output rows [r0, r1) (row = b*ho + y), output channels o0 + [0, NV*L): zeroed, then accumulated tap by tap and
// chunk by chunk of at most kc_max input channels.
template <int NV>
void Tile(const Geometry& g, const float* x, const float* w, float* out, int64_t r0, int64_t r1, int64_t o0,
          int64_t kc_max) {
  for (int64_t r = r0; r < r1; ++r) {
    float* orow = out + r * g.wo * g.out_ch + o0;
    for (int64_t px = 0; px < g.wo; ++px) std::memset(orow + px * g.out_ch, 0, NV * kLanes * sizeof(float));
  }
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      // Output columns whose input column px*sw + j*dw - pl lies inside [0, w).
      const int64_t off = j * g.dw - g.pl;
      int64_t x0 = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
      int64_t x1 = g.w - off <= 0 ? 0 : std::min<int64_t>(g.wo, (g.w - off + g.sw - 1) / g.sw);
      if (x1 <= x0) continue;
      for (int64_t c0 = 0; c0 < g.in_ch; c0 += kc_max) {
        const int64_t kc = std::min<int64_t>(kc_max, g.in_ch - c0);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t y = r % g.ho;
          const int64_t iy = y * g.sh + i * g.dh - g.pt;
          if (iy < 0 || iy >= g.h) continue;
          Span<NV>(g, x, w, out, r, x0, x1, iy, j, i, c0, kc, o0);
        }
      }
    }
  }
}

ffi::Error ConvForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xb, ffi::Buffer<ffi::F32> wb,
                           ffi::ResultBuffer<ffi::F32> ob, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt,
                           int64_t pl) {
  auto xd = xb.dimensions();
  auto wd = wb.dimensions();
  auto od = ob->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || od.size() != 4 || od[0] != xd[0] || wd[2] != xd[3] || wd[3] != od[3])
    return ffi::Error::InvalidArgument("conv_forward: needs x [B, H, W, C], w [kh, kw, C, O] and out [B, Ho, Wo, O]");
  if (sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument("conv_forward: strides and dilations must be positive");
  Geometry g{xd[0], xd[1], xd[2], xd[3], od[1], od[2], od[3], wd[0], wd[1], sh, sw, dh, dw, pt, pl};
  if (g.out_ch % kLanes != 0)
    return ffi::Error::InvalidArgument("conv_forward: output channels must be a multiple of the vector width");
  const int64_t rows = g.batch * g.ho;
  if (rows == 0 || g.wo == 0 || g.out_ch == 0) return ffi::Error::Success();
  const int64_t tile_rows = std::max<int64_t>(1, std::min<int64_t>(rows, (kTilePixels + g.wo - 1) / g.wo));
  const int64_t tiles = (rows + tile_rows - 1) / tile_rows;
  const int64_t vectors = g.out_ch / kLanes;
  const int64_t oblocks = (vectors + kMaxVectors - 1) / kMaxVectors;
  const int64_t items = tiles * oblocks;
  const float* x = xb.typed_data();
  const float* w = wb.typed_data();
  float* out = ob->typed_data();
  auto run_item = [g, x, w, out, tile_rows, rows, oblocks, vectors](int64_t k) {
    const int64_t r0 = (k / oblocks) * tile_rows, r1 = std::min(rows, r0 + tile_rows);
    const int64_t v0 = (k % oblocks) * kMaxVectors;
    const int64_t nv = std::min<int64_t>(kMaxVectors, vectors - v0);
    const int64_t kc = std::max<int64_t>(16, kPanelBytes / (nv * kLanes * 4));
    switch (nv) {
      case 4: return Tile<(kMaxVectors >= 4 ? 4 : 1)>(g, x, w, out, r0, r1, v0 * kLanes, kc);
      case 3: return Tile<(kMaxVectors >= 3 ? 3 : 1)>(g, x, w, out, r0, r1, v0 * kLanes, kc);
      case 2: return Tile<2>(g, x, w, out, r0, r1, v0 * kLanes, kc);
      default: return Tile<1>(g, x, w, out, r0, r1, v0 * kLanes, kc);
    }
  };
  ParallelFor(pool, items, run_item);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace segrecon_native

XLA_FFI_DEFINE_HANDLER_SYMBOL(SegreconConvForward, segrecon_native::ConvForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

