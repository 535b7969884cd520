// Tensor-core rate of wgmma m64nNk16 (fp16 -> fp32) by N and by where A comes from (shared memory: "ss",
// registers: "rs"), with `ACC` independent accumulators issued per commit group, as a block-skipping GEMM
// with one 16-row block per wgmma (N = 16) would issue them. Operands are whatever shared memory holds: only
// the rate matters. Built by wgmma_rate.py (nvcc, sm_90a), run on the GPU host through libcuda.
#include <cstdint>

__device__ __forceinline__ uint64_t desc(const void* p, uint32_t lbo, uint32_t sbo) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}

template <int N> struct Acc { float r[N / 2] = {}; };  // zeroed

#define FENCE() asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")
#define COMMIT() asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory")
#define WAIT1() asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory")
#define WAIT0() asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory")

__device__ __forceinline__ void rs16(Acc<16>& d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1, 0;\n}\n"
               : "+f"(d.r[0]), "+f"(d.r[1]), "+f"(d.r[2]), "+f"(d.r[3]), "+f"(d.r[4]), "+f"(d.r[5]), "+f"(d.r[6]), "+f"(d.r[7])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

__device__ __forceinline__ void ss16(Acc<16>& d, uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
               : "+f"(d.r[0]), "+f"(d.r[1]), "+f"(d.r[2]), "+f"(d.r[3]), "+f"(d.r[4]), "+f"(d.r[5]), "+f"(d.r[6]), "+f"(d.r[7])
               : "l"(a), "l"(b));
}

__device__ __forceinline__ void rs32(Acc<32>& d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15},"
               " {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
               : "+f"(d.r[0]), "+f"(d.r[1]), "+f"(d.r[2]), "+f"(d.r[3]), "+f"(d.r[4]), "+f"(d.r[5]), "+f"(d.r[6]), "+f"(d.r[7]),
                 "+f"(d.r[8]), "+f"(d.r[9]), "+f"(d.r[10]), "+f"(d.r[11]), "+f"(d.r[12]), "+f"(d.r[13]), "+f"(d.r[14]), "+f"(d.r[15])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

__device__ __forceinline__ void ss128(Acc<128>& d, uint64_t a, uint64_t b) {
#define R(i) "+f"(d.r[i])
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
               "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
               "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
               " %64, %65, p, 1, 1, 0, 0;\n}\n"
               : R(0), R(1), R(2), R(3), R(4), R(5), R(6), R(7), R(8), R(9), R(10), R(11), R(12), R(13), R(14), R(15),
                 R(16), R(17), R(18), R(19), R(20), R(21), R(22), R(23), R(24), R(25), R(26), R(27), R(28), R(29), R(30), R(31),
                 R(32), R(33), R(34), R(35), R(36), R(37), R(38), R(39), R(40), R(41), R(42), R(43), R(44), R(45), R(46), R(47),
                 R(48), R(49), R(50), R(51), R(52), R(53), R(54), R(55), R(56), R(57), R(58), R(59), R(60), R(61), R(62), R(63)
               : "l"(a), "l"(b));
#undef R
}

template <int N> __device__ void sink(const Acc<N>& d, float* out) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s += d.r[i];
  if (s == 123.f) out[threadIdx.x] = s;  // never true for zeros: keeps the wgmma's alive
}

// ACC accumulators of m64n16, per iteration one wgmma into each (a 256-row tile of 16-row blocks, k16)
template <int ACC, bool RS>
__device__ __forceinline__ void n16(int iters, float* out) {
  __shared__ __align__(1024) uint16_t sm[64 * 64 + 16 * 16 * ACC];
  for (int i = threadIdx.x; i < 64 * 64 + 256 * ACC; i += blockDim.x) sm[i] = 0;
  __syncthreads();
  Acc<16> d[ACC];
  uint32_t a[4] = {0, 0, 0, 0};
  uint64_t da = desc(sm, 128, 256);
  for (int it = 0; it < iters; ++it) {
    FENCE();
#pragma unroll
    for (int j = 0; j < ACC; ++j) {
      uint64_t db = desc(sm + 64 * 64 + 256 * j, 128, 256);
      if (RS) rs16(d[j], a, db); else ss16(d[j], da, db);
    }
    COMMIT();
    WAIT1();
  }
  WAIT0();
#pragma unroll
  for (int j = 0; j < ACC; ++j) sink(d[j], out);
}

template <int ACC>
__device__ __forceinline__ void n32rs(int iters, float* out) {
  __shared__ __align__(1024) uint16_t sm[16 * 32 * ACC];
  for (int i = threadIdx.x; i < 512 * ACC; i += blockDim.x) sm[i] = 0;
  __syncthreads();
  Acc<32> d[ACC];
  uint32_t a[4] = {0, 0, 0, 0};
  for (int it = 0; it < iters; ++it) {
    FENCE();
#pragma unroll
    for (int j = 0; j < ACC; ++j) rs32(d[j], a, desc(sm + 512 * j, 128, 256));
    COMMIT();
    WAIT1();
  }
  WAIT0();
#pragma unroll
  for (int j = 0; j < ACC; ++j) sink(d[j], out);
}

// the dense reference: m64n128k16 from shared memory, 2 accumulators (a 256-row tile)
extern "C" __global__ void __launch_bounds__(256, 1) ss128_acc2(int iters, float* out) {
  __shared__ __align__(1024) uint16_t sm[64 * 16 + 256 * 16];
  for (int i = threadIdx.x; i < 64 * 16 + 256 * 16; i += blockDim.x) sm[i] = 0;
  __syncthreads();
  Acc<128> d[2];
  uint64_t da = desc(sm, 128, 256);
  for (int it = 0; it < iters; ++it) {
    FENCE();
#pragma unroll
    for (int j = 0; j < 2; ++j) ss128(d[j], da, desc(sm + 1024 + 128 * 16 * j, 128, 256));
    COMMIT();
    WAIT1();
  }
  WAIT0();
#pragma unroll
  for (int j = 0; j < 2; ++j) sink(d[j], out);
}

#define K(name, body) extern "C" __global__ void __launch_bounds__(256, 1) name(int iters, float* out) { body(iters, out); }
K(rs16_acc16, (n16<16, true>))
K(ss16_acc16, (n16<16, false>))
K(rs16_acc8, (n16<8, true>))
K(rs16_acc4, (n16<4, true>))
K(rs32_acc8, n32rs<8>)
