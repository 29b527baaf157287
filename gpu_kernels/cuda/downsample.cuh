// Visual-token downsample fused with the projector's first LayerNorm: the CUDA kernel's host API.
//
// It knows nothing of TensorRT: the plugin (gpu_kernels/trt/) and the cuda-python loader
// (gpu_kernels/loader.py) both call into it. The math is gpu_kernels/reference.py's downsample_layernorm:
//
//   x      [B, S, S, C]            row-major grid of one image's visual tokens (fp32, fp16 or bf16)
//   pad    zero rows at the bottom and zero columns on the right up to S' = r * ceil(S / r)
//   token  (i, j) = concat over a = 0..r-1, then b = 0..r-1, of x[r*i + a, r*j + b]    (r*r*C wide)
//   order  column-major (t = j * S'/r + i) or row-major (t = i * S'/r + j)
//   y      [B, (S'/r)^2, r*r*C] = LayerNorm over r*r*C with weight, bias; fp32 mean and variance
//
// weight and bias are [r*r*C] in the same dtype as x and y.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace vlm_edge
{

enum class Dtype : int
{
    kFloat32 = 0,
    kFloat16 = 1,
    kBFloat16 = 2,
};

enum class TokenOrder : int
{
    kColumnMajor = 0,  // VILA1.5-era checkpoints
    kRowMajor = 1,
};

struct DownsampleShape
{
    int batch;     // B, images (frames or dynamic-resolution tiles)
    int side;      // S, the grid's side in tokens
    int channels;  // C, the vision tower's width
    int ratio;     // r, 2 (mlp_downsample) or 3 (mlp_downsample_3x3_fix)
};

// S' / r: the output grid's side.
inline int downsampleOutputSide(int side, int ratio)
{
    return (side + ratio - 1) / ratio;
}

// Dynamic shared memory one block needs: the r*r*C fp32 row plus the reduction scratch.
inline size_t downsampleSharedBytes(int channels, int ratio)
{
    return (static_cast<size_t>(ratio) * ratio * channels + 32) * sizeof(float);
}

// Whether one block's row fits the current device's shared memory (it opts in above 48 KB); true
// when no device can be asked (the launch then reports it):
// r*r*C up to about 12,000 on Orin (163 KB per block), 14,000 on Hopper (227 KB).
bool downsampleFits(int channels, int ratio);

// Launches the kernel on `stream`; an empty batch launches nothing. Returns cudaErrorInvalidValue for a shape it does not take
// (ratio not 2 or 3, a non-positive size, a row that does not fit in shared memory).
cudaError_t downsampleLayerNorm(Dtype dtype, void const* x, void const* weight, void const* bias, void* y,
    DownsampleShape shape, TokenOrder order, float eps, cudaStream_t stream);

} // namespace vlm_edge
