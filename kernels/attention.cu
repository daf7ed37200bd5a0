/* attention.cu - backend.h's `attention`: softmax(q k^T / sqrt(head_dim)) v in
 * float32, flash-attention style, with no scratch memory. A block of 128
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

#include "cuda_backend.cuh"

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

template <int CHUNK, int TPR>
static void launch(cuda_backend *cb, float *out, const float *qkv, int batch, int tokens,
                   int heads, int head_dim) {
    constexpr int rows = ATTN_THREADS / TPR;
    long long pairs = (long long)batch * heads;
    long long query_blocks = (tokens + rows - 1) / rows;
    if (pairs > 0x7fffffffLL || query_blocks > 65535) {
        cuda_fail(cb, "attention: batch %d x heads %d x tokens %d exceeds the grid", batch, heads,
                  tokens);
        return;
    }
    dim3 grid((unsigned int)pairs, (unsigned int)query_blocks);
    float scale = 1.0f / sqrtf((float)head_dim);
    attention_kernel<CHUNK, TPR><<<grid, ATTN_THREADS, 0, cb->stream>>>(out, qkv, tokens, heads,
                                                                      head_dim, scale);
    cuda_check_launch(cb, "attention_kernel");
}

void cuda_attention(backend *be, float *out, const float *qkv, int batch, int tokens, int heads,
                    int head_dim, float *scratch) {
    (void)scratch;
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || tokens <= 0 || heads <= 0 || head_dim <= 0 || !cuda_enter(cb)) return;
    if (head_dim <= 16) launch<16, 1>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 32) launch<32, 1>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 64) launch<64, 1>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 72) launch<36, 2>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 96) launch<48, 2>(cb, out, qkv, batch, tokens, heads, head_dim);
    else if (head_dim <= 128) launch<64, 2>(cb, out, qkv, batch, tokens, heads, head_dim);
    else cuda_fail(cb, "attention: head_dim %d is over the supported 128", head_dim);
}
