// gpu_kernels/cuda/downsample.cu's kernels, run on the CPU through cuda_emulation.h.
//
//   downsample_emulated KERNEL BATCH SIDE CHANNELS RATIO ORDER EPS X W B Y
//
// KERNEL is one of the extern "C" names (vlm_downsample_ln_f16_v8, ...); X, W, B are raw arrays
// in the kernel's dtype ([B, S, S, C], [r*r*C], [r*r*C]); Y is written the same way
// ([B, ceil(S/r)^2, r*r*C]). The grid and block are the host launcher's. tests/test_kernel_build.py
// compares Y with gpu_kernels/reference.py.

#include "cuda_emulation.h"

#define VLM_EDGE_CUDA_EMULATION
#include "../../gpu_kernels/cuda/downsample.cu"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace vlm_edge
{
namespace
{
float4 sharedAligned[1 << 15];  // the kernels' extern __shared__ row: 512 KB, more than any GPU has
} // namespace
} // namespace vlm_edge

namespace
{

std::vector<char> readFile(char const* path)
{
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
using Kernel = void (*)(T const*, T const*, T const*, T*, int, int, int, int, float);

struct Launch
{
    int batch, side, channels, ratio, order;
    float eps;
    char** files;  // X W B Y
};

template <typename T>
int run(Kernel<T> kernel, Launch const& launch)
{
    auto const [batch, side, channels, ratio, order, eps, files] = launch;
    std::vector<char> const x = readFile(files[0]);
    std::vector<char> const w = readFile(files[1]);
    std::vector<char> const b = readFile(files[2]);
    int const half = (side + ratio - 1) / ratio;
    size_t const width = static_cast<size_t>(ratio) * ratio * channels;
    if (x.size() != sizeof(T) * batch * side * side * channels || w.size() != sizeof(T) * width || b.size() != w.size())
    {
        std::fprintf(stderr, "input sizes do not match the shape\n");
        return 2;
    }
    std::vector<T> xs(x.size() / sizeof(T)), ws(width), bs(width), ys(static_cast<size_t>(batch) * half * half * width);
    std::memcpy(xs.data(), x.data(), x.size());
    std::memcpy(ws.data(), w.data(), w.size());
    std::memcpy(bs.data(), b.data(), b.size());
    emulation::launch(dim3(half * half, batch), dim3(vlm_edge::kThreads),
        [&] { kernel(xs.data(), ws.data(), bs.data(), ys.data(), side, channels, ratio, order, eps); });
    std::ofstream(files[3], std::ios::binary).write(reinterpret_cast<char const*>(ys.data()), ys.size() * sizeof(T));
    return 0;
}

template <typename T, Kernel<T> K>
int runKernel(Launch const& launch)
{
    return run<T>(K, launch);
}

struct Entry
{
    char const* name;
    int (*runner)(Launch const&);
};

// every extern "C" kernel of downsample.cu, by the name gpu_kernels/loader.py asks for
Entry const kKernels[] = {
    {"vlm_downsample_ln_f32_v4", runKernel<float, vlm_downsample_ln_f32_v4>},
    {"vlm_downsample_ln_f32_v1", runKernel<float, vlm_downsample_ln_f32_v1>},
    {"vlm_downsample_ln_f16_v8", runKernel<__half, vlm_downsample_ln_f16_v8>},
    {"vlm_downsample_ln_f16_v1", runKernel<__half, vlm_downsample_ln_f16_v1>},
    {"vlm_downsample_ln_bf16_v8", runKernel<__nv_bfloat16, vlm_downsample_ln_bf16_v8>},
    {"vlm_downsample_ln_bf16_v1", runKernel<__nv_bfloat16, vlm_downsample_ln_bf16_v1>},
};

} // namespace

int main(int argc, char** argv)
{
    if (argc != 12)
    {
        std::fprintf(stderr, "usage: %s KERNEL BATCH SIDE CHANNELS RATIO ORDER EPS X W B Y\n", argv[0]);
        return 2;
    }
    std::string const name = argv[1];
    Launch const launch{std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
        std::atoi(argv[6]), std::strtof(argv[7], nullptr), argv + 8};
    for (Entry const& entry : kKernels)
        if (name == entry.name)
            return entry.runner(launch);
    std::fprintf(stderr, "unknown kernel %s\n", name.c_str());
    return 2;
}
