/* operand.cuh - the element types of operand buffers (backend.h, "Operands")
 * on the device: float, __nv_bfloat16 or __half, conversions from and to
 * float, their CUDA library data types, and OPERAND_DISPATCH, which runs a
 * statement with `T` bound to the backend's operand type (kernels are
 * templates over T). */
#ifndef FPDM_OPERAND_CUH
#define FPDM_OPERAND_CUH

#include <stdint.h>

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

/* Four values read as one 16-byte (float) or 8-byte (16-bit) load (src
 * aligned to 4 elements). */
__device__ __forceinline__ float4 load4(const float *src) {
    return *reinterpret_cast<const float4 *>(src);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16 *src) {
    uint2 bits = *reinterpret_cast<const uint2 *>(src);
    float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&bits.x));
    float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&bits.y));
    return make_float4(low.x, low.y, high.x, high.y);
}
__device__ __forceinline__ float4 load4(const __half *src) {
    uint2 bits = *reinterpret_cast<const uint2 *>(src);
    float2 low = __half22float2(*reinterpret_cast<const __half2 *>(&bits.x));
    float2 high = __half22float2(*reinterpret_cast<const __half2 *>(&bits.y));
    return make_float4(low.x, low.y, high.x, high.y);
}

/* Four results, stored as one 16-byte (float) or 8-byte (16-bit) write. */
__device__ __forceinline__ void store4(float *dst, float a, float b, float c, float d) {
    *reinterpret_cast<float4 *>(dst) = make_float4(a, b, c, d);
}

/* Packed in pairs and stored with one 8-byte instruction (dst 8-byte
 * aligned, in global memory, whose generic addresses are its global ones):
 * from a 16-bit type's pointer the compiler would split the store in two. */
__device__ __forceinline__ void store_pairs(void *dst, uint32_t low, uint32_t high) {
    asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(dst), "r"(low), "r"(high) : "memory");
}

__device__ __forceinline__ void store4(__nv_bfloat16 *dst, float a, float b, float c, float d) {
    __nv_bfloat162 low = __floats2bfloat162_rn(a, b), high = __floats2bfloat162_rn(c, d);
    store_pairs(dst, *reinterpret_cast<const uint32_t *>(&low),
                *reinterpret_cast<const uint32_t *>(&high));
}

__device__ __forceinline__ void store4(__half *dst, float a, float b, float c, float d) {
    __half2 low = __floats2half2_rn(a, b), high = __floats2half2_rn(c, d);
    store_pairs(dst, *reinterpret_cast<const uint32_t *>(&low),
                *reinterpret_cast<const uint32_t *>(&high));
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
