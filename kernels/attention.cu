/* attention.cu - backend.h's `attention`: softmax(q k^T / sqrt(head_dim)) v,
 * with no scratch memory: for float32 operands on CUDA cores, for 16-bit
 * operands on tensor cores (attention_tc_kernel, further down).
 *
 * Float32: flash-attention style. A block of 128 threads serves ROWS queries
 * of one (image, head); it streams the keys and values through shared memory
 * in tiles of ATTN_KEYS and keeps a running maximum and sum per query (online
 * softmax), so any token count works.
 *
 * Each query row belongs to TPR threads (1 or 2) that each hold CHUNK of its
 * dimensions in registers (q and the output accumulator); the head dimension is
 * zero-padded to CHUNK * TPR. Instantiations cover head_dim <= 128 (16, 32, 64,
 * 72 = 2 x 36, 96 = 2 x 48, 128 = 2 x 64). Shared-memory reads are float4
 * broadcasts: all threads of a row sub-slot read the same key. */
#include <math.h>
#include <stdint.h>

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

    const int query_blocks = (tokens + ROWS - 1) / ROWS;
    const int pair = blockIdx.x / query_blocks, query_block = blockIdx.x % query_blocks;
    const int image = pair / heads, head = pair % heads;
    const int dim = heads * head_dim;
    const size_t token_stride = 3 * (size_t)dim;
    const float *base = qkv + (size_t)image * tokens * token_stride + (size_t)head * head_dim;
    const int row = threadIdx.x / TPR, sub = threadIdx.x % TPR;
    const int query = query_block * ROWS + row;
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

/* 16-bit operands: flash attention on the tensor cores with mma.sync
 * m16n8k16 (bf16 or fp16 inputs, float32 accumulators), in the manner of
 * FlashAttention-2. A block of WARPS warps serves the queries of one
 * (image, head), ROW_TILES tiles of 16 per warp; keys and values stream
 * through shared memory in tiles of TK, two stages deep (cp.async copies the
 * next tile while this one is computed on). Each warp keeps the scores of a
 * tile and its output accumulators in registers, whose layout the PTX ISA
 * fixes for m16n8k16: lane l holds rows l/4 and l/4 + 8, columns 2 (l % 4)
 * and 2 (l % 4) + 1 of each 8-column piece. That lets the online softmax
 * rescale the accumulators in place and reuse the score registers, rounded to
 * 16 bits, as the A operand of P V. The head dimension is zero-padded to HD,
 * a multiple of 16.
 *
 * The kernel comes in shapes (tc_shape, below), in the manner of llm.c's
 * dev/cuda files: tests/gpu/test_attention.c checks every one against the
 * CPU and tests/gpu/bench_attention.c times them side by side on DiT's
 * shapes; the backend runs variant 2 for DiT's head widths unless the build
 * names another (FPDM_ATTENTION_VARIANT, below), and 0 for the rest. */

/* WARPS warps a block, each serving ROW_TILES tiles of 16 queries (two tiles
 * share every key and value fragment read from shared memory: half the
 * ldmatrix work per product, two independent accumulator chains). Q_IN_REGS:
 * the queries' fragments are read into registers once; otherwise from shared
 * memory at each key tile (fewer registers). MIN_BLOCKS_SM90: the blocks a
 * Hopper multiprocessor (228 KB of shared memory) is to hold, which caps the
 * registers a thread gets; on sm_80/86/89 the kernel asks for no count, since
 * fewer blocks fit there and a cap would only add spills. */
template <int WARPS_, int ROW_TILES_, bool Q_IN_REGS_, int MIN_BLOCKS_SM90_> struct tc_shape {
    static constexpr int WARPS = WARPS_, ROW_TILES = ROW_TILES_;
    static constexpr bool Q_IN_REGS = Q_IN_REGS_;
    static constexpr int MIN_BLOCKS_SM90 = MIN_BLOCKS_SM90_;
    static constexpr int QUERIES = 16 * ROW_TILES * WARPS;
};

/* The shared memory of one block: two stages of (key tile, value tile), then
 * the query tile unless it borrows stage 1 (queries kept in registers are read
 * once, before stage 1 first takes keys). */
template <typename T, int HD, typename S> struct tc_layout {
    /* Keys per tile: 64, or 32 where the head is wider than 80. */
    static constexpr int TK = HD <= 80 ? 64 : 32;
    /* Rows padded by 16 bytes: ldmatrix's eight row reads hit distinct banks. */
    static constexpr int LD = HD + 8;
    static constexpr int STAGE = 2 * TK * LD;
    static constexpr bool Q_IN_STAGE = S::Q_IN_REGS && S::QUERIES * LD <= STAGE;
    static constexpr size_t BYTES = sizeof(T) * (2 * STAGE + (Q_IN_STAGE ? 0 : S::QUERIES * LD));
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
#define TC_ON_HOPPER 1
#else
#define TC_ON_HOPPER 0
#endif

__device__ __forceinline__ uint32_t shared_address(const void *pointer) {
    return (uint32_t)__cvta_generic_to_shared(pointer);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

/* c += a b for one m16n8k16 tile. */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2],
                                          __nv_bfloat16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2],
                                          __half) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Two floats as a 16-bit pair, the first in the low half. */
__device__ __forceinline__ uint32_t pack_pair(float low, float high, __nv_bfloat16) {
    __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<uint32_t *>(&pair);
}

__device__ __forceinline__ uint32_t pack_pair(float low, float high, __half) {
    __half2 pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<uint32_t *>(&pair);
}

/* 2^x in one MUFU.EX2 (exp2f adds a range check and rescaling for results
 * below 2^-126, four instructions more a score); a probability that small
 * flushes to 0, which the softmax cannot tell from its true value. */
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* 16 bytes from global to shared memory without passing through registers
 * (sm_80's cp.async); with `fill` false the 16 bytes are zeros. The copies a
 * thread issued become visible after cp_async_wait and a barrier. */
__device__ __forceinline__ void cp_async_16(void *dst, const void *src, bool fill) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
                 "l"(src), "r"(fill ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

/* Waits until at most PENDING of this thread's committed groups are in flight. */
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
}

/* ROWS x HD of a [tokens, 3 * dim] operand buffer (`first_row` on, from
 * `source`, which points at this head's column) into a tile with row stride
 * LD, zero where the row is past `tokens` or the column past head_dim, by a
 * block of THREADS threads. Thread t always moves the 16-byte piece t % PIECES
 * of rows t / PIECES, + GROUPS, + 2 GROUPS, ... (threads past GROUPS x PIECES
 * idle), so its column, and what head_dim does to it, stay put and only rows
 * move: about a dozen instructions a piece, where dividing a running index
 * by PIECES took some forty. Where head_dim allows, pieces move asynchronously
 * (commit and wait for them); a piece that head_dim cuts, or every piece when
 * rows are not 16-byte aligned, goes through registers. */
template <typename T, int HD, int LD, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(T *tile, const T *source, int first_row, int tokens,
                                          int head_dim, size_t token_stride, bool vector_ok) {
    constexpr int PIECES = HD / 8, GROUPS = THREADS / PIECES;
    static_assert(GROUPS >= 1, "fewer threads than 16-byte pieces in a row");
    const int t = threadIdx.x;
    if (t >= GROUPS * PIECES) return;
    const int first_r = t / PIECES, d = 8 * (t % PIECES);
    const bool whole = d + 8 <= head_dim;
    constexpr int STEPS = (ROWS + GROUPS - 1) / GROUPS;
    if (vector_ok && (whole || d >= head_dim)) {
        /* This thread's rows are GROUPS apart: the source moves by a fixed stride. */
        const T *src = source + (size_t)(first_row + first_r) * token_stride + d;
        const size_t src_step = (size_t)GROUPS * token_stride;
#pragma unroll
        for (int k = 0; k < STEPS; k++, src += src_step) {
            const int r = first_r + k * GROUPS;
            if (r >= ROWS) break;
            const bool fill = whole && first_row + r < tokens;
            cp_async_16(tile + r * LD + d, fill ? src : source, fill);
        }
        return;
    }
    const T zero = operand_from_float<T>(0.0f);
#pragma unroll
    for (int k = 0; k < STEPS; k++) {
        const int r = first_r + k * GROUPS, row = first_row + r;
        if (r >= ROWS) break;
        const T *src = source + (size_t)(row < tokens ? row : 0) * token_stride + d;
#pragma unroll
        for (int e = 0; e < 8; e++)
            tile[r * LD + d + e] = row < tokens && d + e < head_dim ? src[e] : zero;
    }
}

/* The query fragments a warp keeps for the whole block (Q_IN_REGS), or none. */
template <int ROW_TILES, int STEPS, bool KEEP> struct tc_query_fragments {
    uint32_t frag[ROW_TILES][STEPS][4];
};
template <int ROW_TILES, int STEPS> struct tc_query_fragments<ROW_TILES, STEPS, false> {};

template <typename T, int HD, typename S>
__global__ void __launch_bounds__(S::WARPS * 32, TC_ON_HOPPER ? S::MIN_BLOCKS_SM90 : 1)
attention_tc_kernel(T *out, const T *qkv, int tokens, int heads, int head_dim, float scale_log2) {
    using L = tc_layout<T, HD, S>;
    constexpr int TK = L::TK, LD = L::LD, RT = S::ROW_TILES;
    static_assert(HD % 16 == 0 && HD <= 128, "unsupported head dimension");
    extern __shared__ __align__(16) unsigned char tc_shared[];
    T *const stages = reinterpret_cast<T *>(tc_shared);
    T *const q_tile = stages + (L::Q_IN_STAGE ? L::STAGE : 2 * L::STAGE);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int query_blocks = (tokens + S::QUERIES - 1) / S::QUERIES;
    const int pair = blockIdx.x / query_blocks, query_block = blockIdx.x % query_blocks;
    const int image = pair / heads, head = pair % heads;
    const int dim = heads * head_dim;
    const size_t token_stride = 3 * (size_t)dim;
    const T *q_base = qkv + (size_t)image * tokens * token_stride + (size_t)head * head_dim;
    const T *k_base = q_base + dim, *v_base = q_base + 2 * dim;
    const int first_query = query_block * S::QUERIES;
    /* This warp's first query row within the block's tile. */
    const int warp_row = warp * 16 * RT;
    const bool vector_ok = head_dim % 8 == 0 && (reinterpret_cast<uintptr_t>(qkv) & 15) == 0;

    constexpr int THREADS = S::WARPS * 32;
    load_tile<T, HD, LD, S::QUERIES, THREADS>(q_tile, q_base, first_query, tokens, head_dim,
                                              token_stride, vector_ok);
    load_tile<T, HD, LD, TK, THREADS>(stages, k_base, 0, tokens, head_dim, token_stride, vector_ok);
    load_tile<T, HD, LD, TK, THREADS>(stages + TK * LD, v_base, 0, tokens, head_dim, token_stride,
                                      vector_ok);
    cp_async_commit();
    tc_query_fragments<RT, HD / 16, S::Q_IN_REGS> q;
    if constexpr (S::Q_IN_REGS) {
        cp_async_wait<0>();
        __syncthreads();
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
                ldmatrix_x4(q.frag[rt][kk],
                            q_tile + (warp_row + rt * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
        /* The query tile is read before stage 1 takes keys. */
        if constexpr (L::Q_IN_STAGE) __syncthreads();
    }

    /* Per lane and row tile: rows lane / 4 (index 0) and lane / 4 + 8 (index 1). */
    float row_max[RT][2], row_sum[RT][2];
    float o[RT][HD / 8][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
        row_max[rt][0] = row_max[rt][1] = -INFINITY;
        row_sum[rt][0] = row_sum[rt][1] = 0.0f;
#pragma unroll
        for (int j = 0; j < HD / 8; j++) o[rt][j][0] = o[rt][j][1] = o[rt][j][2] = o[rt][j][3] = 0.0f;
    }

    const int num_tiles = (tokens + TK - 1) / TK;
    for (int tile = 0; tile < num_tiles; tile++) {
        const int first_key = tile * TK;
        if (tile + 1 < num_tiles) {
            T *next = stages + ((tile + 1) % 2) * L::STAGE;
            load_tile<T, HD, LD, TK, THREADS>(next, k_base, first_key + TK, tokens, head_dim,
                                              token_stride, vector_ok);
            load_tile<T, HD, LD, TK, THREADS>(next + TK * LD, v_base, first_key + TK, tokens,
                                              head_dim, token_stride, vector_ok);
            cp_async_commit();
            cp_async_wait<1>(); /* this tile's copies are done; the next one's may fly */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* every thread's part of this tile is in */
        const T *k_tile = stages + (tile % 2) * L::STAGE, *v_tile = k_tile + TK * LD;

        /* S = Q K^T: one ldmatrix.x4 gives the key fragments of two 8-key pieces. */
        float s[RT][TK / 8][4];
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int n = 0; n < TK / 8; n++) s[rt][n][0] = s[rt][n][1] = s[rt][n][2] = s[rt][n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t a[RT][4];
#pragma unroll
            for (int rt = 0; rt < RT; rt++) {
                if constexpr (S::Q_IN_REGS) {
#pragma unroll
                    for (int i = 0; i < 4; i++) a[rt][i] = q.frag[rt][kk][i];
                } else {
                    ldmatrix_x4(a[rt], q_tile + (warp_row + rt * 16 + lane % 16) * LD + kk * 16 +
                                           (lane / 16) * 8);
                }
            }
#pragma unroll
            for (int n = 0; n < TK / 8; n += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, k_tile + ((n + lane / 16) * 8 + lane % 8) * LD + kk * 16 +
                                   ((lane / 8) % 2) * 8);
#pragma unroll
                for (int rt = 0; rt < RT; rt++) {
                    mma_16816(s[rt][n], a[rt], b, T());
                    mma_16816(s[rt][n + 1], a[rt], b + 2, T());
                }
            }
        }
        /* Only a tile cut by the end holds keys past it, which count for nothing. */
        if (first_key + TK > tokens) {
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int n = 0; n < TK / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (first_key + n * 8 + 2 * (lane % 4) + (e & 1) >= tokens) s[rt][n][e] = -INFINITY;
        }
        /* Online softmax on raw scores; exp(x / sqrt(d)) = 2^(x scale_log2),
         * with the running maximum folded into one fma per score. */
#pragma unroll
        for (int rt = 0; rt < RT; rt++) {
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < TK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[rt][n][e]);
            float correction[2], max_log2[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                /* The four lanes of a row hold its columns. */
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
                /* Every tile starts at a real key, so the new maximum is finite
                 * (and the first correction 2^-inf = 0, which ex2 gives). */
                float new_max = fmaxf(row_max[rt][r], tile_max[r]);
                correction[r] = fast_exp2((row_max[rt][r] - new_max) * scale_log2);
                row_max[rt][r] = new_max;
                row_sum[rt][r] *= correction[r];
                max_log2[r] = new_max * scale_log2;
            }
#pragma unroll
            for (int n = 0; n < TK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[rt][n][e] = fast_exp2(fmaf(s[rt][n][e], scale_log2, -max_log2[e / 2]));
                    row_sum[rt][e / 2] += s[rt][n][e];
                }
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                o[rt][j][0] *= correction[0];
                o[rt][j][1] *= correction[0];
                o[rt][j][2] *= correction[1];
                o[rt][j][3] *= correction[1];
            }
        }
        /* O += P V: the score registers of keys 16 kk .. 16 kk + 15 are an A
         * fragment; one ldmatrix.x4.trans gives the value fragments of two
         * 8-column pieces. */
#pragma unroll
        for (int kk = 0; kk < TK / 16; kk++) {
            uint32_t a[RT][4];
#pragma unroll
            for (int rt = 0; rt < RT; rt++) {
                a[rt][0] = pack_pair(s[rt][2 * kk][0], s[rt][2 * kk][1], T());
                a[rt][1] = pack_pair(s[rt][2 * kk][2], s[rt][2 * kk][3], T());
                a[rt][2] = pack_pair(s[rt][2 * kk + 1][0], s[rt][2 * kk + 1][1], T());
                a[rt][3] = pack_pair(s[rt][2 * kk + 1][2], s[rt][2 * kk + 1][3], T());
            }
#pragma unroll
            for (int j = 0; j < HD / 8; j += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_tile + (kk * 16 + lane % 16) * LD + (j + lane / 16) * 8);
#pragma unroll
                for (int rt = 0; rt < RT; rt++) {
                    mma_16816(o[rt][j], a[rt], b, T());
                    mma_16816(o[rt][j + 1], a[rt], b + 2, T());
                }
            }
        }
        __syncthreads(); /* this stage is read before the tile after next refills it */
    }

    /* Out rows in pairs of 16-bit values where head_dim and the buffer allow. */
    const bool pair_ok = head_dim % 2 == 0 && (reinterpret_cast<uintptr_t>(out) & 3) == 0;
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            row_sum[rt][r] += __shfl_xor_sync(0xffffffffu, row_sum[rt][r], 1);
            row_sum[rt][r] += __shfl_xor_sync(0xffffffffu, row_sum[rt][r], 2);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int query = first_query + warp_row + rt * 16 + lane / 4 + 8 * r;
            if (query >= tokens) continue;
            const float inv_sum = 1.0f / row_sum[rt][r];
            T *out_row = out + ((size_t)image * tokens + query) * dim + (size_t)head * head_dim;
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                const int d = j * 8 + 2 * (lane % 4);
                const float low = o[rt][j][2 * r] * inv_sum, high = o[rt][j][2 * r + 1] * inv_sum;
                if (pair_ok) {
                    if (d < head_dim) *reinterpret_cast<uint32_t *>(out_row + d) = pack_pair(low, high, T());
                } else {
                    if (d < head_dim) out_row[d] = operand_from_float<T>(low);
                    if (d + 1 < head_dim) out_row[d + 1] = operand_from_float<T>(high);
                }
            }
        }
    }
}

/* The grid of either kernel: one block per (image, head, block of queries),
 * the query blocks of a pair next to each other. Blocks run in about that
 * order, so the blocks that read a pair's keys and values run together and
 * all but the first find them in L2; with the pairs outermost they were
 * read from memory once per query block (the qkv tensor of 128 DiT-XL rows
 * is 226 MB, L2 50 MB). */
static int attention_grid(cuda_backend *cb, int batch, int tokens, int heads, int queries_per_block,
                          dim3 *grid) {
    long long pairs = (long long)batch * heads;
    long long query_blocks = (tokens + queries_per_block - 1) / queries_per_block;
    if (pairs * query_blocks > 0x7fffffffLL) {
        cuda_fail(cb, "attention: batch %d x heads %d x tokens %d exceeds the grid", batch, heads,
                  tokens);
        return -1;
    }
    *grid = dim3((unsigned int)(pairs * query_blocks));
    return 0;
}

template <typename T, int HD, typename S>
static void launch_tc(cuda_backend *cb, void *out, const void *qkv, int batch, int tokens,
                      int heads, int head_dim) {
    dim3 grid;
    if (attention_grid(cb, batch, tokens, heads, S::QUERIES, &grid)) return;
    const size_t shared_bytes = tc_layout<T, HD, S>::BYTES;
    /* Past 48 KB a kernel must ask for its shared memory. */
    if (shared_bytes > 48 * 1024 &&
        cudaFuncSetAttribute(attention_tc_kernel<T, HD, S>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)shared_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        cuda_fail(cb, "attention: this GPU cannot give a block %zu bytes of shared memory",
                  shared_bytes);
        return;
    }
    /* exp(x) = exp2(x log2 e): scores are scaled into log2 units. */
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)head_dim);
    attention_tc_kernel<T, HD, S><<<grid, S::WARPS * 32, shared_bytes, cb->stream>>>(
        (T *)out, (const T *)qkv, tokens, heads, head_dim, scale_log2);
    cuda_check_launch(cb, "attention_tc_kernel");
}

/* The variants. 0, the one the backend runs for head widths outside 49 to
 * 80: 4 warps of 16 queries, 4 blocks a Hopper multiprocessor (128 registers
 * a thread; head widths 64 and 72 spill a few). 1: 8 warps of 16 (a
 * key/value tile serves twice the queries: half the tile loads per product).
 * 2: 4 warps of 32 queries read from shared memory (two row tiles per
 * fragment read; 247 registers, 2 blocks a multiprocessor). 3: 16 warps of
 * 16, a whole 256-token (image, head) in one block (keys and values read
 * once). 4: 0 with 3 blocks a Hopper multiprocessor (no spills, less latency
 * hidden). 5: 2 at 3 blocks a multiprocessor (168 registers: a few bytes
 * spill, half as many warps again in flight). 6: 8 warps of 32 queries, a
 * whole 256-token (image, head) in one block with 2's fragment reuse (238
 * registers, no spills; keys and values read once). Variants above 0 are
 * built for head_dim 49 to 80 only (DiT's 64 and 72), to keep the build
 * short. */
typedef tc_shape<4, 1, true, 4> tc_variant_0;
typedef tc_shape<8, 1, true, 2> tc_variant_1;
typedef tc_shape<4, 2, false, 2> tc_variant_2;
typedef tc_shape<16, 1, true, 1> tc_variant_3;
typedef tc_shape<4, 1, true, 3> tc_variant_4;
typedef tc_shape<4, 2, false, 3> tc_variant_5;
typedef tc_shape<8, 2, false, 1> tc_variant_6;
static const char *const tc_variant_names[] = {
    "4 warps x 16 queries, q in registers", "8 warps x 16 queries, q in registers",
    "4 warps x 32 queries, q in shared memory", "16 warps x 16 queries, q in registers",
    "4 warps x 16 queries, q in registers, 3 blocks",
    "4 warps x 32 queries, q in shared memory, 3 blocks",
    "8 warps x 32 queries, q in shared memory"};
#define TC_VARIANTS ((int)(sizeof tc_variant_names / sizeof tc_variant_names[0]))
/* The variant the backend runs for head widths 49 to 80: 2 unless the build
 * names another (CMake's FPDM_ATTENTION_VARIANT, which tests/gpu/run.sh sets
 * to the fastest on the GPU at hand). On an H100 (2026-11-27, 16 heads of
 * 72, bf16) 2 took 0.198 ms at 128 x 256 tokens and 0.626 ms at 32 x 1024,
 * against 0.237 and 0.697 for 0 and 0.215 and 0.660 for 1, the next best. */
#ifndef FPDM_ATTENTION_VARIANT
#define FPDM_ATTENTION_VARIANT 2
#endif
static_assert(FPDM_ATTENTION_VARIANT >= 0 && FPDM_ATTENTION_VARIANT < TC_VARIANTS,
              "FPDM_ATTENTION_VARIANT names no variant");

template <typename T, typename S, bool ALL_WIDTHS>
static void attention_16bit(cuda_backend *cb, void *out, const void *qkv, int batch, int tokens,
                            int heads, int head_dim) {
    const int steps = (head_dim + 15) / 16;
    if (steps == 4) return launch_tc<T, 64, S>(cb, out, qkv, batch, tokens, heads, head_dim);
    if (steps == 5) return launch_tc<T, 80, S>(cb, out, qkv, batch, tokens, heads, head_dim);
    if constexpr (ALL_WIDTHS) {
        switch (steps) {
        case 1: launch_tc<T, 16, S>(cb, out, qkv, batch, tokens, heads, head_dim); return;
        case 2: launch_tc<T, 32, S>(cb, out, qkv, batch, tokens, heads, head_dim); return;
        case 3: launch_tc<T, 48, S>(cb, out, qkv, batch, tokens, heads, head_dim); return;
        case 6: launch_tc<T, 96, S>(cb, out, qkv, batch, tokens, heads, head_dim); return;
        case 7: launch_tc<T, 112, S>(cb, out, qkv, batch, tokens, heads, head_dim); return;
        case 8: launch_tc<T, 128, S>(cb, out, qkv, batch, tokens, heads, head_dim); return;
        default: break;
        }
        cuda_fail(cb, "attention: head_dim %d is over the supported 128", head_dim);
    } else {
        cuda_fail(cb, "attention: this variant is built for head_dim 49 to 80, not %d", head_dim);
    }
}

template <typename T>
static void attention_16bit_variant(cuda_backend *cb, int variant, void *out, const void *qkv,
                                    int batch, int tokens, int heads, int head_dim) {
    switch (variant) {
    case 0: attention_16bit<T, tc_variant_0, true>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    case 1: attention_16bit<T, tc_variant_1, false>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    case 2: attention_16bit<T, tc_variant_2, false>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    case 3: attention_16bit<T, tc_variant_3, false>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    case 4: attention_16bit<T, tc_variant_4, false>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    case 5: attention_16bit<T, tc_variant_5, false>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    case 6: attention_16bit<T, tc_variant_6, false>(cb, out, qkv, batch, tokens, heads, head_dim); return;
    default: cuda_fail(cb, "attention: no variant %d (there are %d)", variant, TC_VARIANTS);
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
    /* Variants above 0 serve head_dim 49 to 80 only. */
    const int variant = head_dim > 48 && head_dim <= 80 ? FPDM_ATTENTION_VARIANT : 0;
    if (be->operand_type == BACKEND_BF16) {
        attention_16bit_variant<__nv_bfloat16>(cb, variant, out_buffer, qkv_buffer, batch, tokens,
                                               heads, head_dim);
        return;
    }
    if (be->operand_type == BACKEND_F16) {
        attention_16bit_variant<__half>(cb, variant, out_buffer, qkv_buffer, batch, tokens, heads,
                                        head_dim);
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

int backend_cuda_attention_variant_count(void) { return TC_VARIANTS; }

const char *backend_cuda_attention_variant_name(int variant) {
    return variant >= 0 && variant < TC_VARIANTS ? tc_variant_names[variant] : "no such variant";
}

void backend_cuda_attention_variant(backend *be, int variant, void *out, const void *qkv, int batch,
                                    int tokens, int heads, int head_dim) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || tokens <= 0 || heads <= 0 || head_dim <= 0 || !cuda_enter(cb)) return;
    if (be->operand_type == BACKEND_BF16)
        attention_16bit_variant<__nv_bfloat16>(cb, variant, out, qkv, batch, tokens, heads, head_dim);
    else if (be->operand_type == BACKEND_F16)
        attention_16bit_variant<__half>(cb, variant, out, qkv, batch, tokens, heads, head_dim);
    else
        cuda_fail(cb, "attention variants are for bf16 and fp16 backends");
}
