// Visual-token downsample (space-to-depth, ratio 2 or 3) fused with the projector's first
// LayerNorm, in one pass over the features. See downsample.cuh for the math and layouts and
// gpu_kernels/reference.py for the numpy ground truth this is tested against.
//
// One thread block makes one output token: it gathers the r*r source tokens (r*r rows of C
// contiguous channels each, so consecutive threads read consecutive addresses), keeps the
// r*r*C values in shared memory as fp32, reduces the mean, then the variance around that mean
// (two passes over shared memory, not E[x^2] - E[x]^2, which cancels in fp32), and writes
// the normalised row. Global memory is read once and written once: the kernel is bound by
// bandwidth, so loads and stores move 16 bytes per thread where the channels allow.
//
// grid  = (tokens per image out, B)      block = kThreads     shared = downsampleSharedBytes()
//
// The extern "C" kernels are what gpu_kernels/loader.py finds by name in the fatbin; the plugin
// calls downsampleLayerNorm().

#include "downsample.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace vlm_edge
{
namespace
{

constexpr int kThreads = 256;
constexpr size_t kDefaultSharedLimit = 48 * 1024;  // above this a kernel must opt in

__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float toFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// V elements of T moved as one load or store (16 bytes when V * sizeof(T) == 16).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack
{
    T v[V];
};

// Pack k of the fp32 row in shared memory: float4 accesses where V allows (fewer bank conflicts
// than V scalar accesses V words apart).
template <int V>
__device__ __forceinline__ void storeRow(float* row, int k, float const (&v)[V])
{
    if constexpr (V % 4 == 0)
    {
#pragma unroll
        for (int q = 0; q < V / 4; ++q)
            reinterpret_cast<float4*>(row + k * V)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
    else
    {
#pragma unroll
        for (int e = 0; e < V; ++e)
            row[k * V + e] = v[e];
    }
}

template <int V>
__device__ __forceinline__ void loadRow(float const* row, int k, float (&v)[V])
{
    if constexpr (V % 4 == 0)
    {
#pragma unroll
        for (int q = 0; q < V / 4; ++q)
        {
            float4 const f = reinterpret_cast<float4 const*>(row + k * V)[q];
            v[4 * q] = f.x;
            v[4 * q + 1] = f.y;
            v[4 * q + 2] = f.z;
            v[4 * q + 3] = f.w;
        }
    }
    else
    {
#pragma unroll
        for (int e = 0; e < V; ++e)
            v[e] = row[k * V + e];
    }
}

// Sum over the block; every thread gets the total. blockDim.x is a multiple of 32.
__device__ float blockSum(float v, float* scratch)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x % 32;
    __syncthreads();  // scratch may still be read by the previous call
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.0F;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// x [B, S, S, C] -> y [B, half*half, r*r*C]; V channels per load (C % V == 0, 16-byte aligned).
template <typename T, int V>
__device__ void downsampleLayerNormBody(T const* __restrict__ x, T const* __restrict__ weight,
    T const* __restrict__ bias, T* __restrict__ y, int side, int channels, int ratio, int order, float eps)
{
    extern __shared__ float4 sharedAligned[];  // float4: the row is 16-byte aligned for vector access
    float* shared = reinterpret_cast<float*>(sharedAligned);
    int const half = (side + ratio - 1) / ratio;
    int const width = ratio * ratio * channels;  // r*r*C
    float* row = shared;                         // [width]
    float* scratch = shared + width;             // [32]

    int const t = blockIdx.x;      // output token within the image
    int const image = blockIdx.y;  // b
    int const i = order == static_cast<int>(TokenOrder::kColumnMajor) ? t % half : t / half;
    int const j = order == static_cast<int>(TokenOrder::kColumnMajor) ? t / half : t % half;
    T const* src = x + static_cast<size_t>(image) * side * side * channels;
    T* dst = y + (static_cast<size_t>(image) * half * half + t) * width;

    int const packs = width / V;
    int const packsPerPiece = channels / V;

    // gather: pack k lies in piece p = a * r + b, at channel c of source token (r*i + a, r*j + b)
    float sum = 0.0F;
    for (int k = threadIdx.x; k < packs; k += blockDim.x)
    {
        int const piece = k / packsPerPiece;
        int const c = (k - piece * packsPerPiece) * V;
        int const srcRow = ratio * i + piece / ratio;
        int const srcCol = ratio * j + piece % ratio;
        Pack<T, V> p;
        if (srcRow < side && srcCol < side)
            p = *reinterpret_cast<Pack<T, V> const*>(src + (static_cast<size_t>(srcRow) * side + srcCol) * channels + c);
        else
            for (int e = 0; e < V; ++e)
                p.v[e] = fromFloat<T>(0.0F);  // the zero padding is part of the row LayerNorm sees
        float v[V];
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            v[e] = toFloat(p.v[e]);
            sum += v[e];
        }
        storeRow<V>(row, k, v);
    }
    float const mean = blockSum(sum, scratch) / width;

    float squares = 0.0F;  // each thread reads back only the values it wrote: no barrier needed
    for (int k = threadIdx.x; k < packs; k += blockDim.x)
    {
        float v[V];
        loadRow<V>(row, k, v);
#pragma unroll
        for (int e = 0; e < V; ++e)
            squares += (v[e] - mean) * (v[e] - mean);
    }
    float const rstd = rsqrtf(blockSum(squares, scratch) / width + eps);

    for (int k = threadIdx.x; k < packs; k += blockDim.x)
    {
        Pack<T, V> const w = reinterpret_cast<Pack<T, V> const*>(weight)[k];
        Pack<T, V> const b = reinterpret_cast<Pack<T, V> const*>(bias)[k];
        float v[V];
        loadRow<V>(row, k, v);
        Pack<T, V> out;
#pragma unroll
        for (int e = 0; e < V; ++e)
            out.v[e] = fromFloat<T>((v[e] - mean) * rstd * toFloat(w.v[e]) + toFloat(b.v[e]));
        reinterpret_cast<Pack<T, V>*>(dst)[k] = out;
    }
}

} // namespace
} // namespace vlm_edge

// ---- kernels by name (gpu_kernels/loader.py): vlm_downsample_ln_<dtype>_v<elements per load> ----------
#define VLM_DOWNSAMPLE_KERNEL(NAME, T, V)                                                                     \
    extern "C" __global__ void __launch_bounds__(vlm_edge::kThreads) NAME(T const* x, T const* weight,         \
        T const* bias, T* y, int side, int channels, int ratio, int order, float eps)                          \
    {                                                                                                          \
        vlm_edge::downsampleLayerNormBody<T, V>(x, weight, bias, y, side, channels, ratio, order, eps);       \
    }

VLM_DOWNSAMPLE_KERNEL(vlm_downsample_ln_f32_v4, float, 4)
VLM_DOWNSAMPLE_KERNEL(vlm_downsample_ln_f32_v1, float, 1)
VLM_DOWNSAMPLE_KERNEL(vlm_downsample_ln_f16_v8, __half, 8)
VLM_DOWNSAMPLE_KERNEL(vlm_downsample_ln_f16_v1, __half, 1)
VLM_DOWNSAMPLE_KERNEL(vlm_downsample_ln_bf16_v8, __nv_bfloat16, 8)
VLM_DOWNSAMPLE_KERNEL(vlm_downsample_ln_bf16_v1, __nv_bfloat16, 1)

// ---- host launcher (the TensorRT plugin) --------------------------------------------------------------
#ifndef VLM_EDGE_CUDA_EMULATION  // tests/native/ runs the kernels above on the CPU, without this part
namespace vlm_edge
{
namespace
{

using KernelFn = void (*)(void const*, void const*, void const*, void*, int, int, int, int, float);

template <typename T>
KernelFn asFn(void (*k)(T const*, T const*, T const*, T*, int, int, int, int, float))
{
    return reinterpret_cast<KernelFn>(k);
}

bool aligned16(void const* p)
{
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

} // namespace

bool downsampleFits(int channels, int ratio)
{
    int device = 0;
    int limit = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    {
        cudaGetLastError();  // no device to ask: leave the verdict to the launch
        return true;
    }
    return downsampleSharedBytes(channels, ratio) <= static_cast<size_t>(limit);
}

cudaError_t downsampleLayerNorm(Dtype dtype, void const* x, void const* weight, void const* bias, void* y,
    DownsampleShape shape, TokenOrder order, float eps, cudaStream_t stream)
{
    if ((shape.ratio != 2 && shape.ratio != 3) || shape.batch < 0 || shape.side <= 0 || shape.channels <= 0
        || shape.batch > 65535)
        return cudaErrorInvalidValue;
    if (shape.batch == 0)
        return cudaSuccess;  // an empty batch: nothing to write
    int const elementBytes = dtype == Dtype::kFloat32 ? 4 : 2;
    int const vector = 16 / elementBytes;
    bool const wide = shape.channels % vector == 0 && aligned16(x) && aligned16(weight) && aligned16(bias)
        && aligned16(y);
    KernelFn kernel = nullptr;
    switch (dtype)
    {
    case Dtype::kFloat32: kernel = wide ? asFn(vlm_downsample_ln_f32_v4) : asFn(vlm_downsample_ln_f32_v1); break;
    case Dtype::kFloat16: kernel = wide ? asFn(vlm_downsample_ln_f16_v8) : asFn(vlm_downsample_ln_f16_v1); break;
    case Dtype::kBFloat16: kernel = wide ? asFn(vlm_downsample_ln_bf16_v8) : asFn(vlm_downsample_ln_bf16_v1); break;
    default: return cudaErrorInvalidValue;
    }
    size_t const sharedBytes = downsampleSharedBytes(shape.channels, shape.ratio);
    if (sharedBytes > kDefaultSharedLimit)
    {
        // opt in once per kernel and size (a race here only repeats the same call)
        static size_t optedIn[6] = {};
        int const slot = static_cast<int>(dtype) * 2 + (wide ? 1 : 0);
        if (optedIn[slot] < sharedBytes)
        {
            cudaError_t const err = cudaFuncSetAttribute(reinterpret_cast<void const*>(kernel),
                cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sharedBytes));
            if (err != cudaSuccess)
                return err;  // the row does not fit this GPU's shared memory
            optedIn[slot] = sharedBytes;
        }
    }
    int const half = downsampleOutputSide(shape.side, shape.ratio);
    dim3 const grid(static_cast<unsigned>(half * half), static_cast<unsigned>(shape.batch));
    int side = shape.side;
    int channels = shape.channels;
    int ratio = shape.ratio;
    int orderValue = static_cast<int>(order);
    void* args[] = {&x, &weight, &bias, &y, &side, &channels, &ratio, &orderValue, &eps};
    return cudaLaunchKernel(reinterpret_cast<void const*>(kernel), grid, dim3(kThreads), args, sharedBytes, stream);
}

} // namespace vlm_edge
#endif // VLM_EDGE_CUDA_EMULATION
