/* operand.cuh - the element types of operand buffers (backend.h, "Operands")
 * on the device: float, __nv_bfloat16 or __half, conversions from and to
 * float, their CUDA library data types, and OPERAND_DISPATCH, which runs a
 * statement with `T` bound to the backend's operand type (kernels are
 * templates over T). */
#ifndef FPDM_OPERAND_CUH
#define FPDM_OPERAND_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <library_types.h>

#include "cuda_backend.cuh"

/* The cuBLAS / cuBLASLt data type of a buffer of this type. */
static inline cudaDataType_t cuda_data_type(backend_dtype type) {
    return type == BACKEND_BF16 ? CUDA_R_16BF : type == BACKEND_F16 ? CUDA_R_16F : CUDA_R_32F;
}

template <typename T> __device__ __forceinline__ T operand_from_float(float v);
template <> __device__ __forceinline__ float operand_from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 operand_from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half operand_from_float<__half>(float v) {
    return __float2half_rn(v);
}

__device__ __forceinline__ float operand_to_float(float v) { return v; }
__device__ __forceinline__ float operand_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float operand_to_float(__half v) { return __half2float(v); }

/* Four results, stored as one 16-byte (float) or 8-byte (16-bit) write. */
__device__ __forceinline__ void store4(float *dst, float a, float b, float c, float d) {
    *reinterpret_cast<float4 *>(dst) = make_float4(a, b, c, d);
}

template <typename T>
__device__ __forceinline__ void store4(T *dst, float a, float b, float c, float d) {
    T values[4] = {operand_from_float<T>(a), operand_from_float<T>(b), operand_from_float<T>(c),
                   operand_from_float<T>(d)};
    *reinterpret_cast<uint2 *>(dst) = *reinterpret_cast<const uint2 *>(values);
}

#define OPERAND_DISPATCH(type, ...)                                                            \
    do {                                                                                       \
        switch (type) {                                                                        \
        case BACKEND_BF16: {                                                                   \
            typedef __nv_bfloat16 T;                                                           \
            __VA_ARGS__;                                                                       \
        } break;                                                                               \
        case BACKEND_F16: {                                                                    \
            typedef __half T;                                                                  \
            __VA_ARGS__;                                                                       \
        } break;                                                                               \
        default: {                                                                             \
            typedef float T;                                                                   \
            __VA_ARGS__;                                                                       \
        }                                                                                      \
        }                                                                                      \
    } while (0)

#endif
