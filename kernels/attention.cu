/* attention.cu - backend.h's `attention`: softmax(q k^T / sqrt(head_dim)) v,
 * with no scratch memory: for float32 operands on CUDA cores, for 16-bit
 * operands on tensor cores (attention_tc_kernel, further down).
 *
 * Float32: flash-attention style. A block of 128
 * threads serves ROWS queries of one (image, head); it streams the keys and
 * values through shared memory in tiles of ATTN_KEYS and keeps a running
 * maximum and sum per query (online softmax), so any token count works.
 *
 * Each query row belongs to TPR threads (1 or 2) that each hold CHUNK of its
 * dimensions in registers (q and the output accumulator); the head dimension is
 * zero-padded to CHUNK * TPR. Instantiations cover head_dim <= 128 (16, 32, 64,
 * 72 = 2 x 36, 96 = 2 x 48, 128 = 2 x 64). Shared-memory reads are float4
 * broadcasts: all threads of a row sub-slot read the same key. */
#include <math.h>
#include <mma.h>

#include "cuda_backend.cuh"
#include "operand.cuh"

#define ATTN_THREADS 128
#define ATTN_KEYS 32

template <int CHUNK, int TPR>
__global__ void __launch_bounds__(ATTN_THREADS)
attention_kernel(float *out, const float *qkv, int tokens, int heads, int head_dim, float scale) {
    static_assert(CHUNK % 4 == 0 && (TPR == 1 || TPR == 2), "unsupported attention tiling");
    constexpr int ROWS = ATTN_THREADS / TPR;
    /* Two sub-slots of one key start in different banks. */
    constexpr int CHUNK_STRIDE = CHUNK + (TPR > 1 ? 4 : 0);
    constexpr int KEY_STRIDE = TPR * CHUNK_STRIDE;
    constexpr int PADDED_DIM = TPR * CHUNK;
    __shared__ __align__(16) float k_tile[ATTN_KEYS * KEY_STRIDE];
    __shared__ __align__(16) float v_tile[ATTN_KEYS * KEY_STRIDE];

    const int image = blockIdx.x / heads, head = blockIdx.x % heads;
    const int dim = heads * head_dim;
    const size_t token_stride = 3 * (size_t)dim;
    const float *base = qkv + (size_t)image * tokens * token_stride + (size_t)head * head_dim;
    const int row = threadIdx.x / TPR, sub = threadIdx.x % TPR;
    const int query = blockIdx.y * ROWS + row;
    /* Rows past the end still take part in loads and shuffles, on a valid query. */
    const bool active = query < tokens;
    const float *q_row = base + (size_t)(active ? query : tokens - 1) * token_stride;

    float q[CHUNK], acc[CHUNK];
#pragma unroll
    for (int c = 0; c < CHUNK; c++) {
        int d = sub * CHUNK + c;
        q[c] = d < head_dim ? q_row[d] : 0.0f;
        acc[c] = 0.0f;
    }
    float running_max = -INFINITY, running_sum = 0.0f;

    for (int first_key = 0; first_key < tokens; first_key += ATTN_KEYS) {
        __syncthreads(); /* the previous tile is no longer read */
        for (int idx = threadIdx.x; idx < ATTN_KEYS * PADDED_DIM; idx += ATTN_THREADS) {
            int j = idx / PADDED_DIM, d = idx % PADDED_DIM;
            int key = first_key + j;
            float k_value = 0.0f, v_value = 0.0f;
            if (key < tokens && d < head_dim) {
                const float *k_row = base + (size_t)key * token_stride + dim;
                k_value = k_row[d];
                v_value = k_row[dim + d];
            }
            int slot = j * KEY_STRIDE + (d / CHUNK) * CHUNK_STRIDE + d % CHUNK;
            k_tile[slot] = k_value;
            v_tile[slot] = v_value;
        }
        __syncthreads();

        float scores[ATTN_KEYS];
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < ATTN_KEYS; j++) {
            const float4 *k4 = reinterpret_cast<const float4 *>(k_tile + j * KEY_STRIDE +
                                                                sub * CHUNK_STRIDE);
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < CHUNK / 4; c++) {
                float4 kv = k4[c];
                dot += q[4 * c] * kv.x + q[4 * c + 1] * kv.y + q[4 * c + 2] * kv.z +
                       q[4 * c + 3] * kv.w;
            }
            if (TPR == 2) dot += __shfl_xor_sync(0xffffffffu, dot, 1);
            float s = first_key + j < tokens ? dot * scale : -INFINITY;
            scores[j] = s;
            tile_max = fmaxf(tile_max, s);
        }
        /* Every tile holds at least one real key, so new_max is finite. */
        float new_max = fmaxf(running_max, tile_max);
        float correction = expf(running_max - new_max);
        running_sum *= correction;
#pragma unroll
        for (int c = 0; c < CHUNK; c++) acc[c] *= correction;
#pragma unroll
        for (int j = 0; j < ATTN_KEYS; j++) {
            float p = expf(scores[j] - new_max);
            running_sum += p;
            const float4 *v4 = reinterpret_cast<const float4 *>(v_tile + j * KEY_STRIDE +
                                                                sub * CHUNK_STRIDE);
#pragma unroll
            for (int c = 0; c < CHUNK / 4; c++) {
                float4 vv = v4[c];
                acc[4 * c] += p * vv.x;
                acc[4 * c + 1] += p * vv.y;
                acc[4 * c + 2] += p * vv.z;
                acc[4 * c + 3] += p * vv.w;
            }
        }
        running_max = new_max;
    }
    if (!active) return;
    float inv_sum = 1.0f / running_sum;
    float *out_row = out + ((size_t)image * tokens + query) * dim + (size_t)head * head_dim;
#pragma unroll
    for (int c = 0; c < CHUNK; c++) {
        int d = sub * CHUNK + c;
        if (d < head_dim) out_row[d] = acc[c] * inv_sum;
    }
}

size_t cuda_attention_scratch_floats(backend *be, int batch, int tokens, int heads, int head_dim) {
    (void)be;
    (void)batch;
    (void)tokens;
    (void)heads;
    (void)head_dim;
    return 0;
}

/* 16-bit operands: a block of TC_WARPS warps serves TC_QUERIES queries of one
 * (image, head), 16 per warp, with WMMA 16x16x16 products (bf16 or fp16
 * inputs, float32 accumulators); the head dimension is zero-padded to HD, a
 * multiple of 16. Keys stream through shared memory in tiles of TC_KEYS.
 * Two passes over the keys: the first finds each query's maximum score and
 * softmax sum, the second forms P = exp(s - max) / sum in the operand type
 * (as fused attention kernels do) and accumulates P V. Computing q k^T twice
 * costs half again the products but needs no rescaling of accumulators held
 * in fragments, whose element layout WMMA does not expose. */
#define TC_WARPS 4
#define TC_QUERIES (16 * TC_WARPS)
#define TC_KEYS 32

template <typename T, int HD>
__global__ void __launch_bounds__(TC_WARPS * 32)
attention_tc_kernel(T *out, const T *qkv, int tokens, int heads, int head_dim, float scale) {
    using namespace nvcuda;
    static_assert(HD % 16 == 0 && HD <= 128, "unsupported head dimension");
    /* Row strides padded by 16 bytes against bank conflicts; every fragment
     * pointer stays 32-byte aligned. */
    constexpr int LD = HD + 8, S_LD = TC_KEYS + 4, P_LD = TC_KEYS + 8;
    __shared__ __align__(32) T q_tile[TC_QUERIES * LD];
    __shared__ __align__(32) T k_tile[TC_KEYS * LD];
    __shared__ __align__(32) T v_tile[TC_KEYS * LD];
    __shared__ __align__(32) float s_tile[TC_WARPS][16 * S_LD];
    __shared__ __align__(32) T p_tile[TC_WARPS][16 * P_LD];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int image = blockIdx.x / heads, head = blockIdx.x % heads;
    const int dim = heads * head_dim;
    const size_t token_stride = 3 * (size_t)dim;
    const T *base = qkv + (size_t)image * tokens * token_stride + (size_t)head * head_dim;
    const int first_query = blockIdx.y * TC_QUERIES;
    const T zero = operand_from_float<T>(0.0f);

    for (int idx = threadIdx.x; idx < TC_QUERIES * HD; idx += blockDim.x) {
        int r = idx / HD, d = idx % HD, query = first_query + r;
        q_tile[r * LD + d] =
            query < tokens && d < head_dim ? base[(size_t)query * token_stride + d] : zero;
    }
    auto load_keys = [&](int first_key, bool with_values) {
        for (int idx = threadIdx.x; idx < TC_KEYS * HD; idx += blockDim.x) {
            int j = idx / HD, d = idx % HD, key = first_key + j;
            bool real = key < tokens && d < head_dim;
            const T *k_row = base + (size_t)(real ? key : 0) * token_stride + dim;
            k_tile[j * LD + d] = real ? k_row[d] : zero;
            if (with_values) v_tile[j * LD + d] = real ? k_row[dim + d] : zero;
        }
    };
    /* s_tile[warp] = this warp's 16 queries . the tile's keys (unscaled). */
    auto scores = [&]() {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[TC_KEYS / 16];
#pragma unroll
        for (int n = 0; n < TC_KEYS / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
        for (int kk = 0; kk < HD; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::load_matrix_sync(a, q_tile + warp * 16 * LD + kk, LD);
#pragma unroll
            for (int n = 0; n < TC_KEYS / 16; n++) {
                /* k^T as a column-major operand: element (d, key) at key * LD + d. */
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                wmma::load_matrix_sync(b, k_tile + n * 16 * LD + kk, LD);
                wmma::mma_sync(acc[n], a, b, acc[n]);
            }
        }
#pragma unroll
        for (int n = 0; n < TC_KEYS / 16; n++)
            wmma::store_matrix_sync(s_tile[warp] + n * 16, acc[n], S_LD, wmma::mem_row_major);
        __syncwarp();
    };
    /* Each lane owns half a row of the warp's score tile: row lane / 2,
     * columns (lane % 2) * 16 .. + 15. */
    const int my_row = lane / 2, my_first_col = (lane % 2) * 16;

    float row_max = -INFINITY, row_sum = 0.0f;
    for (int first_key = 0; first_key < tokens; first_key += TC_KEYS) {
        __syncthreads(); /* the previous tile is no longer read */
        load_keys(first_key, false);
        __syncthreads();
        scores();
        const float *srow = s_tile[warp] + my_row * S_LD + my_first_col;
        float s[16], tile_max = -INFINITY;
#pragma unroll
        for (int c = 0; c < 16; c++) {
            s[c] = first_key + my_first_col + c < tokens ? srow[c] * scale : -INFINITY;
            tile_max = fmaxf(tile_max, s[c]);
        }
        if (tile_max > -INFINITY) { /* this half-row may hold padding only */
            float new_max = fmaxf(row_max, tile_max);
            row_sum *= expf(row_max - new_max);
#pragma unroll
            for (int c = 0; c < 16; c++) row_sum += expf(s[c] - new_max);
            row_max = new_max;
        }
        __syncwarp(); /* scores are read before the next tile's overwrite them */
    }
    /* Join the two halves of each row; every row saw a real key, so m is finite. */
    float other_max = __shfl_xor_sync(0xffffffffu, row_max, 1);
    float other_sum = __shfl_xor_sync(0xffffffffu, row_sum, 1);
    const float m = fmaxf(row_max, other_max);
    const float inv_sum = 1.0f / (row_sum * expf(row_max - m) + other_sum * expf(other_max - m));

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[HD / 16];
#pragma unroll
    for (int j = 0; j < HD / 16; j++) wmma::fill_fragment(o[j], 0.0f);
    for (int first_key = 0; first_key < tokens; first_key += TC_KEYS) {
        __syncthreads();
        load_keys(first_key, true);
        __syncthreads();
        scores();
        const float *srow = s_tile[warp] + my_row * S_LD + my_first_col;
        T *prow = p_tile[warp] + my_row * P_LD + my_first_col;
#pragma unroll
        for (int c = 0; c < 16; c++) {
            bool real = first_key + my_first_col + c < tokens;
            prow[c] = operand_from_float<T>(real ? expf(srow[c] * scale - m) * inv_sum : 0.0f);
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < TC_KEYS; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p;
            wmma::load_matrix_sync(p, p_tile[warp] + kk, P_LD);
#pragma unroll
            for (int j = 0; j < HD / 16; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v;
                wmma::load_matrix_sync(v, v_tile + kk * LD + j * 16, LD);
                wmma::mma_sync(o[j], p, v, o[j]);
            }
        }
        __syncwarp();
    }
    /* Out through the warp's score tile, one 16 x 16 fragment at a time. */
#pragma unroll
    for (int j = 0; j < HD / 16; j++) {
        wmma::store_matrix_sync(s_tile[warp], o[j], S_LD, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            int r = e / 16, c = e % 16;
            int query = first_query + warp * 16 + r, d = j * 16 + c;
            if (query < tokens && d < head_dim)
                out[((size_t)image * tokens + query) * dim + (size_t)head * head_dim + d] =
                    operand_from_float<T>(s_tile[warp][r * S_LD + c]);
        }
        __syncwarp();
    }
}

/* The grid of either kernel: (image, head) pairs by blocks of queries. */
static int attention_grid(cuda_backend *cb, int batch, int tokens, int heads, int queries_per_block,
                          dim3 *grid) {
    long long pairs = (long long)batch * heads;
    long long query_blocks = (tokens + queries_per_block - 1) / queries_per_block;
    if (pairs > 0x7fffffffLL || query_blocks > 65535) {
        cuda_fail(cb, "attention: batch %d x heads %d x tokens %d exceeds the grid", batch, heads,
                  tokens);
        return -1;
    }
    *grid = dim3((unsigned int)pairs, (unsigned int)query_blocks);
    return 0;
}

template <typename T, int HD>
static void launch_tc(cuda_backend *cb, void *out, const void *qkv, int batch, int tokens,
                      int heads, int head_dim) {
    dim3 grid;
    if (attention_grid(cb, batch, tokens, heads, TC_QUERIES, &grid)) return;
    attention_tc_kernel<T, HD><<<grid, TC_WARPS * 32, 0, cb->stream>>>(
        (T *)out, (const T *)qkv, tokens, heads, head_dim, 1.0f / sqrtf((float)head_dim));
    cuda_check_launch(cb, "attention_tc_kernel");
}

template <typename T>
static void attention_16bit(cuda_backend *cb, void *out, const void *qkv, int batch, int tokens,
                            int heads, int head_dim) {
    switch ((head_dim + 15) / 16) {
    case 1: launch_tc<T, 16>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 2: launch_tc<T, 32>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 3: launch_tc<T, 48>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 4: launch_tc<T, 64>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 5: launch_tc<T, 80>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 6: launch_tc<T, 96>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 7: launch_tc<T, 112>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    case 8: launch_tc<T, 128>(cb, out, qkv, batch, tokens, heads, head_dim); break;
    default: cuda_fail(cb, "attention: head_dim %d is over the supported 128", head_dim);
    }
}

template <int CHUNK, int TPR>
static void launch(cuda_backend *cb, float *out, const float *qkv, int batch, int tokens,
                   int heads, int head_dim) {
    dim3 grid;
    if (attention_grid(cb, batch, tokens, heads, ATTN_THREADS / TPR, &grid)) return;
    float scale = 1.0f / sqrtf((float)head_dim);
    attention_kernel<CHUNK, TPR><<<grid, ATTN_THREADS, 0, cb->stream>>>(out, qkv, tokens, heads,
                                                                      head_dim, scale);
    cuda_check_launch(cb, "attention_kernel");
}

void cuda_attention(backend *be, void *out_buffer, const void *qkv_buffer, int batch, int tokens,
                    int heads, int head_dim, float *scratch) {
    (void)scratch;
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || tokens <= 0 || heads <= 0 || head_dim <= 0 || !cuda_enter(cb)) return;
    if (be->operand_type == BACKEND_BF16) {
        attention_16bit<__nv_bfloat16>(cb, out_buffer, qkv_buffer, batch, tokens, heads, head_dim);
        return;
    }
    if (be->operand_type == BACKEND_F16) {
        attention_16bit<__half>(cb, out_buffer, qkv_buffer, batch, tokens, heads, head_dim);
        return;
    }
    float *out = (float *)out_buffer;
    const float *qkv = (const float *)qkv_buffer;
    if (head_dim <= 16) launch<16, 1>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 32) launch<32, 1>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 64) launch<64, 1>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 72) launch<36, 2>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 96) launch<48, 2>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 128) launch<64, 2>(cb, out, qkv, batch, tokens, heads, head_dim);
    else cuda_fail(cb, "attention: head_dim %d is over the supported 128", head_dim);
}
