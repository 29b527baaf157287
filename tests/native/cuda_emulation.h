// Runs CUDA kernel source on the CPU, for tests on machines without a GPU.
//
// Each CUDA thread of a block is a std::thread; blocks run one after another. __syncthreads is a
// std::barrier over the block's threads and __shfl_xor_sync exchanges values through an array
// between two barriers, so every thread of the block must make the same sequence of these calls
// (true of kernels whose reductions run in every thread, as ours). Shared memory is one static
// buffer the including file defines. This checks a kernel's indexing, its barriers' placement,
// its reductions and its loads and stores as written; it says nothing about speed, and nothing
// about what only hardware does (memory ordering without barriers, bank conflicts, occupancy).
#pragma once

#include <cuda_runtime.h>  // first: the kernel's headers include it, and it defines the qualifiers

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__

namespace emulation
{
inline thread_local uint3 threadIndex;
inline thread_local uint3 blockIndex;
inline dim3 blockDimension;
inline dim3 gridDimension;
inline std::barrier<>* blockBarrier = nullptr;
inline std::vector<float> lanes;  // one slot per thread of the block, for shuffles

template <typename Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel)
{
    gridDimension = grid;
    blockDimension = block;
    for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x)
        {
            std::barrier<> barrier(static_cast<std::ptrdiff_t>(block.x));
            blockBarrier = &barrier;
            lanes.assign(block.x, 0.0F);
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < block.x; ++t)
                threads.emplace_back([=] {
                    threadIndex = make_uint3(t, 0, 0);
                    blockIndex = make_uint3(x, y, 0);
                    kernel();
                });
            for (std::thread& thread : threads)
                thread.join();
        }
}
} // namespace emulation

#define threadIdx (emulation::threadIndex)
#define blockIdx (emulation::blockIndex)
#define blockDim (emulation::blockDimension)
#define gridDim (emulation::gridDimension)

inline void __syncthreads()
{
    emulation::blockBarrier->arrive_and_wait();
}

inline float __shfl_xor_sync(unsigned /*mask*/, float value, int laneMask)
{
    unsigned const t = threadIdx.x;
    emulation::lanes[t] = value;
    __syncthreads();
    float const other = emulation::lanes[t ^ static_cast<unsigned>(laneMask)];
    __syncthreads();
    return other;
}

inline float rsqrtf(float x)
{
    return 1.0F / std::sqrt(x);
}
