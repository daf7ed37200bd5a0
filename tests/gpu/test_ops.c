/* test_ops.c - every CUDA backend op but attention and noise (see
 * test_attention.c, test_noise.c) against the CPU backend, the oracle, on
 * fresh random inputs: outputs are poisoned with NaN first, and each result
 * must be within relative L2 1e-5 in fp32. The bf16 and fp16 backends keep
 * operands in 16 bits: their inputs are drawn, rounded to 16 bits, and the
 * CPU gets the rounded values, so float32 results must still agree to 1e-4
 * and 16-bit results to 1e-2 (their own rounding, ~1e-3).
 * Also checks that a failing op is reported by synchronize. Exits 77
 * (SKIPPED) without a GPU. Run: ctest -L gpu (FPDM_TEST_SEED=N repeats a
 * run); `test_ops GROUP` runs one group of checks (the names in main), as
 * run.sh does under compute-sanitizer's racecheck, which should not see the
 * cuBLAS kernels. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "diffusion.h"
#include "test_util.h"

static backend *cpu, *gpu;
/* The same tensor in both backends; on the GPU in `type` (float32, or the
 * 16-bit operand type), on the CPU always float32. */
typedef struct twin {
    float *on_cpu, *on_gpu;
    size_t n;
    backend_dtype type;
} twin;

/* Element `offset` of a twin's GPU copy, whatever its type. */
static void *gpu_at(twin t, size_t offset) {
    return (char *)t.on_gpu + offset * backend_dtype_bytes(t.type);
}

static twin twin_from(const float *host, size_t n) {
    twin t = {cpu->alloc(cpu, n), gpu->alloc(gpu, n), n, BACKEND_F32};
    if (!t.on_cpu || !t.on_gpu) {
        fprintf(stderr, "out of memory for %zu floats\n", n);
        exit(1);
    }
    cpu->upload(cpu, t.on_cpu, host, n);
    CHECK(gpu->upload(gpu, t.on_gpu, host, n) == 0);
    return t;
}

/* host values in the GPU's operand type; the CPU gets them rounded alike. */
static twin twin_operand_from(const float *host, size_t n) {
    backend_dtype type = gpu->operand_type;
    if (type == BACKEND_F32) return twin_from(host, n);
    float *rounded = malloc((n ? n : 1) * sizeof(float));
    memcpy(rounded, host, n * sizeof(float));
    twin t = {cpu->alloc(cpu, n), test_upload_operand(gpu, rounded, n), n, type};
    if (!t.on_cpu || !t.on_gpu) {
        fprintf(stderr, "out of memory for %zu floats\n", n);
        exit(1);
    }
    cpu->upload(cpu, t.on_cpu, rounded, n);
    free(rounded);
    return t;
}

/* n values: uniform in [-amplitude, amplitude), or all NaN (poison) when
 * amplitude is NaN; in the GPU's operand type or in float32. */
static twin twin_filled(size_t n, float amplitude, int operand) {
    float *host = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = isnan(amplitude) ? NAN : amplitude * test_uniform();
    twin t = operand ? twin_operand_from(host, n) : twin_from(host, n);
    free(host);
    return t;
}

static twin twin_operand_random(size_t n, float amplitude) { return twin_filled(n, amplitude, 1); }
static twin twin_operand_nan(size_t n) { return twin_filled(n, NAN, 1); }
static twin twin_random(size_t n, float amplitude) { return twin_filled(n, amplitude, 0); }
static twin twin_nan(size_t n) { return twin_filled(n, NAN, 0); }

static void twin_free(twin t) {
    cpu->release(cpu, t.on_cpu);
    gpu->release(gpu, t.on_gpu);
}

static void twin_check(const char *what, twin t, double tolerance) {
    float *expected = malloc(t.n * sizeof(float)), *actual = malloc(t.n * sizeof(float));
    CHECK(cpu->download(cpu, expected, t.on_cpu, t.n) == 0);
    /* A float32 twin on a 16-bit backend is a plain float32 buffer. */
    int status = t.type == BACKEND_F32 ? gpu->download(gpu, actual, t.on_gpu, t.n)
                                       : test_download_operand(gpu, actual, t.on_gpu, t.n);
    CHECK_MSG(status == 0, "%s: %s", what, backend_cuda_error(gpu));
    check_close(what, actual, expected, t.n, tolerance);
    free(expected);
    free(actual);
}

static void test_linear_case(backend *device, const char *what, int rows, int out_dim, int in_dim,
                             int column_offset, int with_bias, int add_mode,
                             backend_activation act, backend_output output, double tolerance) {
    backend *saved = gpu;
    gpu = device;
    int stride = in_dim + column_offset + 5 * (column_offset > 0);
    twin weight = twin_operand_random((size_t)out_dim * stride, 1.0f / sqrtf((float)in_dim));
    /* Bias values the operand type holds exactly, so that the float32 and
     * the operand copies are the same numbers. */
    size_t bias_n = (size_t)out_dim + 1;
    float *bias_host = malloc(bias_n * sizeof(float));
    for (size_t i = 0; i < bias_n; i++) {
        bias_host[i] = test_operand_value(0.5f * test_uniform(), device->operand_type);
    }
    twin bias = twin_from(bias_host, bias_n);
    twin bias_operand = twin_operand_from(bias_host, bias_n);
    free(bias_host);
    twin in = twin_operand_random((size_t)rows * in_dim, 1.0f);
    size_t out_n = (size_t)rows * out_dim;
    int operand_out = output == BACKEND_OUT_OPERAND;
    twin add = operand_out ? twin_operand_random(out_n, 1.0f) : twin_random(out_n, 1.0f);
    twin out = add_mode == 2 ? add : operand_out ? twin_operand_nan(out_n) : twin_nan(out_n);
    /* add_mode: 0 none, 1 a separate matrix, 2 in place (add == out). An odd
     * bias offset leaves the bias pointer 4-byte (2-byte) aligned only. */
    size_t bias_offset = with_bias ? (size_t)with_bias - 1 : 0;
    backend_linear w_cpu = {weight.on_cpu + column_offset,
                            with_bias ? bias.on_cpu + bias_offset : NULL,
                            with_bias ? bias.on_cpu + bias_offset : NULL, out_dim, in_dim, stride};
    backend_linear w_gpu = {gpu_at(weight, (size_t)column_offset),
                            with_bias ? bias.on_gpu + bias_offset : NULL,
                            with_bias ? gpu_at(bias_operand, bias_offset) : NULL, out_dim, in_dim,
                            stride};
    cpu->linear(cpu, out.on_cpu, output, in.on_cpu, rows, &w_cpu, add_mode ? add.on_cpu : NULL, act);
    gpu->linear(gpu, out.on_gpu, output, in.on_gpu, rows, &w_gpu, add_mode ? add.on_gpu : NULL,
                act);
    twin_check(what, out, tolerance);
    twin_free(weight);
    twin_free(bias);
    twin_free(bias_operand);
    twin_free(in);
    if (add_mode != 2) twin_free(out);
    twin_free(add);
    gpu = saved;
}

/* Every variant of the cached LayerNorm kernel (backend_cuda.h) against the
 * CPU, plain and with the gated residual, outputs in the operand type checked
 * to `tolerance`. Shapes: DiT-XL/2's width with 17 tokens an image, so that a
 * block's 8 rows reach into the next image (variant 1 stages one image's
 * modulation and must read the others' from global memory); 5 tokens, so a
 * block spans up to three images; and width 72, whose rows leave most lanes
 * idle and stage fewer vectors than a warp has lanes. */
static void test_layernorm_variant(int variant, int batch, int tokens, int dim,
                                   const char *type_name, double tolerance) {
    const int mod_stride = 6 * dim;
    size_t n = (size_t)batch * tokens * dim;
    twin mod = twin_random((size_t)batch * mod_stride, 1.0f);
    for (int with_residual = 0; with_residual < 2; with_residual++) {
        char what[128];
        twin x = twin_random(n, 2.0f), y = twin_operand_random(n, 1.0f);
        twin out = twin_operand_nan(n);
        if (with_residual)
            cpu->gated_residual(cpu, x.on_cpu, y.on_cpu, mod.on_cpu + 2 * dim, mod_stride, batch,
                                tokens, dim);
        cpu->layernorm_modulate(cpu, out.on_cpu, x.on_cpu, mod.on_cpu + 3 * dim,
                                mod.on_cpu + 4 * dim, mod_stride, batch, tokens, dim);
        backend_cuda_layernorm_variant(gpu, variant, out.on_gpu, x.on_gpu,
                                       with_residual ? y.on_gpu : NULL,
                                       with_residual ? mod.on_gpu + 2 * dim : NULL,
                                       mod.on_gpu + 3 * dim, mod.on_gpu + 4 * dim, mod_stride,
                                       batch, tokens, dim);
        snprintf(what, sizeof what, "layernorm variant %d%s %s, %d x %d x %d: out", variant,
                 with_residual ? " with residual" : "", type_name, batch, tokens, dim);
        twin_check(what, out, tolerance);
        snprintf(what, sizeof what, "layernorm variant %d%s %s, %d x %d x %d: x", variant,
                 with_residual ? " with residual" : "", type_name, batch, tokens, dim);
        twin_check(what, x, 1e-5);
        twin_free(x);
        twin_free(y);
        twin_free(out);
    }
    twin_free(mod);
}

static void test_layernorm_variants(const char *type_name, double tolerance) {
    for (int variant = 0; variant < backend_cuda_layernorm_variant_count(); variant++) {
        test_layernorm_variant(variant, 3, 17, 1152, type_name, tolerance);
        test_layernorm_variant(variant, 4, 5, 1152, type_name, tolerance);
        test_layernorm_variant(variant, 5, 7, 72, type_name, tolerance);
    }
}

/* The ops whose output is an operand, on a 16-bit backend: the output's own
 * rounding is the only difference from the CPU. */
static void test_operand_outputs(backend *device, const char *type_name) {
    backend *saved = gpu;
    gpu = device;
    char what[96];
    const int batch = 3, tokens = 17, dim = 1152, mod_stride = 6 * dim;
    size_t n = (size_t)batch * tokens * dim;
    twin x = twin_random(n, 2.0f);
    twin mod = twin_random((size_t)batch * mod_stride, 1.0f);
    twin out = twin_operand_nan(n);
    cpu->layernorm_modulate(cpu, out.on_cpu, x.on_cpu, mod.on_cpu, mod.on_cpu + 2 * dim, mod_stride,
                            batch, tokens, dim);
    gpu->layernorm_modulate(gpu, out.on_gpu, x.on_gpu, mod.on_gpu, mod.on_gpu + 2 * dim, mod_stride,
                            batch, tokens, dim);
    snprintf(what, sizeof what, "layernorm_modulate %s out", type_name);
    twin_check(what, out, 1e-2);
    /* The fused gated residual + LayerNorm the bf16 forward runs: x (the
     * float32 token stream) exactly as in float32, the output rounded. */
    if (gpu->residual_layernorm_modulate) {
        twin y = twin_operand_random(n, 1.0f);
        /* A fresh poisoned output: an element the fused kernel leaves
         * unwritten must show, not keep the last op's value. */
        twin_free(out);
        out = twin_operand_nan(n);
        cpu->gated_residual(cpu, x.on_cpu, y.on_cpu, mod.on_cpu + 2 * dim, mod_stride, batch, tokens,
                            dim);
        cpu->layernorm_modulate(cpu, out.on_cpu, x.on_cpu, mod.on_cpu + 3 * dim,
                                mod.on_cpu + 4 * dim, mod_stride, batch, tokens, dim);
        gpu->residual_layernorm_modulate(gpu, out.on_gpu, x.on_gpu, y.on_gpu, mod.on_gpu + 2 * dim,
                                         mod.on_gpu + 3 * dim, mod.on_gpu + 4 * dim, mod_stride,
                                         batch, tokens, dim);
        snprintf(what, sizeof what, "residual_layernorm_modulate %s out", type_name);
        twin_check(what, out, 1e-2);
        snprintf(what, sizeof what, "residual_layernorm_modulate %s x", type_name);
        twin_check(what, x, 1e-5);
        twin_free(y);
    }
    /* The gated residual FPDM's iterations end with: x exactly as in
     * float32, its copy rounded; a row width that is a multiple of 4 (float4
     * path) and one that is not. */
    CHECK_MSG(gpu->gated_residual_to_operand != NULL, "no fused gated_residual_to_operand");
    for (int pass = 0; pass < 2 && gpu->gated_residual_to_operand; pass++) {
        int width = pass ? 37 : dim;
        size_t count = (size_t)batch * tokens * width;
        twin rx = twin_random(count, 2.0f), ry = twin_operand_random(count, 1.0f);
        twin copy = twin_operand_nan(count);
        cpu->gated_residual(cpu, rx.on_cpu, ry.on_cpu, mod.on_cpu + 5 * dim, mod_stride, batch,
                            tokens, width);
        cpu->to_operand(cpu, copy.on_cpu, rx.on_cpu, count);
        gpu->gated_residual_to_operand(gpu, copy.on_gpu, rx.on_gpu, ry.on_gpu, mod.on_gpu + 5 * dim,
                                       mod_stride, batch, tokens, width);
        snprintf(what, sizeof what, "gated_residual_to_operand %s width %d copy", type_name, width);
        twin_check(what, copy, 1e-2);
        snprintf(what, sizeof what, "gated_residual_to_operand %s width %d x", type_name, width);
        twin_check(what, rx, 1e-5);
        twin_free(rx);
        twin_free(ry);
        twin_free(copy);
    }
    /* The plain gated residual with a 16-bit y (FPDM's pre and post blocks):
     * float4 path and scalar path. */
    for (int pass = 0; pass < 2; pass++) {
        int width = pass ? 37 : dim;
        size_t count = (size_t)batch * tokens * width;
        twin rx = twin_random(count, 2.0f), ry = twin_operand_random(count, 1.0f);
        cpu->gated_residual(cpu, rx.on_cpu, ry.on_cpu, mod.on_cpu + 5 * dim, mod_stride, batch,
                            tokens, width);
        gpu->gated_residual(gpu, rx.on_gpu, ry.on_gpu, mod.on_gpu + 5 * dim, mod_stride, batch,
                            tokens, width);
        snprintf(what, sizeof what, "gated_residual %s y, width %d", type_name, width);
        twin_check(what, rx, 1e-5);
        twin_free(rx);
        twin_free(ry);
    }
    cpu->activation(cpu, out.on_cpu, x.on_cpu, n, BACKEND_ACT_SILU);
    gpu->activation(gpu, out.on_gpu, x.on_gpu, n, BACKEND_ACT_SILU);
    snprintf(what, sizeof what, "activation silu %s out", type_name);
    twin_check(what, out, 1e-2);
    cpu->to_operand(cpu, out.on_cpu, x.on_cpu, n - 1);
    gpu->to_operand(gpu, out.on_gpu, x.on_gpu, n - 1);
    snprintf(what, sizeof what, "to_operand %s", type_name);
    twin_check(what, out, 4e-3);

    const int channels = 4, size = 32, patch = 2;
    size_t image_n = (size_t)batch * channels * size * size;
    twin images = twin_random(image_n, 1.0f), patches = twin_operand_nan(image_n);
    cpu->patchify(cpu, patches.on_cpu, images.on_cpu, batch, channels, size, patch);
    gpu->patchify(gpu, patches.on_gpu, images.on_gpu, batch, channels, size, patch);
    snprintf(what, sizeof what, "patchify %s out", type_name);
    twin_check(what, patches, 1e-2);

    float timesteps[5] = {999.0f, 0.0f, 1.5f, 500.0f, 250.25f};
    twin freqs = twin_operand_nan(5 * 256);
    cpu->timestep_frequencies(cpu, freqs.on_cpu, timesteps, 5, 256);
    gpu->timestep_frequencies(gpu, freqs.on_gpu, timesteps, 5, 256);
    snprintf(what, sizeof what, "timestep_frequencies %s out", type_name);
    twin_check(what, freqs, 1e-2);
    twin_free(x);
    twin_free(mod);
    twin_free(out);
    twin_free(images);
    twin_free(patches);
    twin_free(freqs);
    gpu = saved;
}

/* Runs `check` with a fresh bf16, then fp16 CUDA backend as `gpu`, the
 * precision's name passed for its messages; the float32 backend is `gpu`
 * again after. */
static void on_half_backends(void (*check)(const char *type_name)) {
    const fpdm_precision precisions[2] = {FPDM_PRECISION_BF16, FPDM_PRECISION_FP16};
    const char *names[2] = {"bf16", "fp16"};
    for (int p = 0; p < 2; p++) {
        char err[256];
        backend *half = backend_cuda_create(0, precisions[p], err, sizeof err);
        CHECK_MSG(half != NULL, "%s", err);
        if (!half) continue;
        backend *saved = gpu;
        gpu = half;
        check(names[p]);
        gpu = saved;
        half->destroy(half);
    }
}

/* Products on a 16-bit backend (`gpu` here, see on_half_backends). */
static void test_linear_half(const char *type_name) {
    const backend_output f32 = BACKEND_OUT_F32, operand = BACKEND_OUT_OPERAND;
    char what[96];
#define HALF_CASE(label, rows, out, in, offset, bias, add, act, output, tol)                   \
    (snprintf(what, sizeof what, "linear %s %s", type_name, label),                            \
     test_linear_case(gpu, what, rows, out, in, offset, bias, add, act, output, tol))
    HALF_CASE("bias gelu -> operand", 257, 4608, 1152, 0, 1, 0, BACKEND_ACT_GELU_TANH, operand,
              1e-2);
    HALF_CASE("bias -> f32", 300, 1152, 4608, 0, 1, 0, BACKEND_ACT_NONE, f32, 1e-4);
    HALF_CASE("add gelu -> operand", 100, 2304, 1152, 0, 1, 1, BACKEND_ACT_GELU_TANH, operand,
              1e-2);
    HALF_CASE("add in place -> f32", 100, 384, 384, 0, 1, 2, BACKEND_ACT_NONE, f32, 1e-4);
    HALF_CASE("column block -> operand", 70, 1152, 1152, 1152, 1, 0, BACKEND_ACT_NONE, operand,
              1e-2);
    HALF_CASE("odd column block, unaligned bias", 70, 130, 64, 3, 2, 0, BACKEND_ACT_GELU_TANH,
              f32, 1e-4);
    HALF_CASE("silu -> operand", 33, 384, 256, 0, 1, 0, BACKEND_ACT_SILU, operand, 1e-2);
#undef HALF_CASE
    test_operand_outputs(gpu, type_name);
}

static void test_linear(void) {
    const backend_output f32 = BACKEND_OUT_F32, operand = BACKEND_OUT_OPERAND;
    /* rows, out, in, column offset, bias (0 none, 1 aligned, 2 offset by one), add, act */
    test_linear_case(gpu, "linear bias", 300, 1152, 1152, 0, 1, 0, BACKEND_ACT_NONE, f32, 1e-5);
    test_linear_case(gpu, "linear bias gelu", 257, 4608, 1152, 0, 1, 0, BACKEND_ACT_GELU_TANH, f32,
                     1e-5);
    test_linear_case(gpu, "linear bias silu", 33, 384, 96, 0, 1, 0, BACKEND_ACT_SILU, operand, 1e-5);
    test_linear_case(gpu, "linear no bias", 64, 200, 72, 0, 0, 0, BACKEND_ACT_NONE, f32, 1e-5);
    test_linear_case(gpu, "linear add", 100, 1152, 4608, 0, 1, 1, BACKEND_ACT_NONE, f32, 1e-5);
    test_linear_case(gpu, "linear add in place", 100, 384, 384, 0, 1, 2, BACKEND_ACT_NONE, f32, 1e-5);
    test_linear_case(gpu, "linear add gelu", 50, 256, 128, 0, 1, 1, BACKEND_ACT_GELU_TANH, operand,
                     1e-5);
    test_linear_case(gpu, "linear column block (unaligned)", 70, 1152, 1152, 1152 + 3, 1, 0,
                     BACKEND_ACT_NONE, f32, 1e-5);
    test_linear_case(gpu, "linear unaligned bias gelu", 70, 130, 64, 0, 2, 0,
                     BACKEND_ACT_GELU_TANH, f32, 1e-5);
    test_linear_case(gpu, "linear odd small", 1, 7, 13, 1, 2, 1, BACKEND_ACT_SILU, f32, 1e-5);
    on_half_backends(test_linear_half);
}

static void test_layernorm(void) {
    const int batch = 3, tokens = 17, dim = 1152, mod_stride = 6 * dim;
    size_t n = (size_t)batch * tokens * dim;
    twin x = twin_random(n, 2.0f);
    /* An offset row mean makes a one-pass variance lose digits. */
    twin shifted = twin_random(n, 1.0f);
    float *host = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = 100.0f + test_uniform();
    twin offset = twin_from(host, n);
    free(host);
    twin mod = twin_random((size_t)batch * mod_stride, 1.0f);
    twin out = twin_nan(n);
    cpu->layernorm_modulate(cpu, out.on_cpu, x.on_cpu, mod.on_cpu, mod.on_cpu + 2 * dim, mod_stride,
                            batch, tokens, dim);
    gpu->layernorm_modulate(gpu, out.on_gpu, x.on_gpu, mod.on_gpu, mod.on_gpu + 2 * dim, mod_stride,
                            batch, tokens, dim);
    twin_check("layernorm_modulate", out, 1e-5);
    cpu->layernorm_modulate(cpu, out.on_cpu, offset.on_cpu, mod.on_cpu, mod.on_cpu + dim, mod_stride,
                            batch, tokens, dim);
    gpu->layernorm_modulate(gpu, out.on_gpu, offset.on_gpu, mod.on_gpu, mod.on_gpu + dim, mod_stride,
                            batch, tokens, dim);
    twin_check("layernorm_modulate (mean 100)", out, 1e-5);
    /* In place, with a dim that is not a multiple of 32. */
    cpu->layernorm_modulate(cpu, shifted.on_cpu, shifted.on_cpu, mod.on_cpu, mod.on_cpu + 50, 77,
                            batch, tokens * 16, 72);
    gpu->layernorm_modulate(gpu, shifted.on_gpu, shifted.on_gpu, mod.on_gpu, mod.on_gpu + 50, 77,
                            batch, tokens * 16, 72);
    twin_check("layernorm_modulate in place dim 72", shifted, 1e-5);

    /* The gated residual fused in (x is written back too), against the CPU's
     * two ops: DiT's width (the cached kernel) and dim 72 with an odd
     * modulation stride (the plain one). */
    CHECK_MSG(gpu->residual_layernorm_modulate != NULL, "no fused residual_layernorm_modulate");
    if (gpu->residual_layernorm_modulate) {
        const int dims[2] = {dim, 72}, strides[2] = {mod_stride, 5 * 72 + 3};
        for (int c = 0; c < 2; c++) {
            int cd = dims[c], cs = strides[c];
            size_t cn = (size_t)batch * tokens * cd;
            twin residual_x = twin_random(cn, 2.0f), residual_y = twin_operand_random(cn, 1.0f);
            twin fused_out = twin_nan(cn);
            cpu->gated_residual(cpu, residual_x.on_cpu, residual_y.on_cpu, mod.on_cpu + 2 * cd, cs,
                                batch, tokens, cd);
            cpu->layernorm_modulate(cpu, fused_out.on_cpu, residual_x.on_cpu, mod.on_cpu + 3 * cd,
                                    mod.on_cpu + 4 * cd, cs, batch, tokens, cd);
            gpu->residual_layernorm_modulate(gpu, fused_out.on_gpu, residual_x.on_gpu,
                                             residual_y.on_gpu, mod.on_gpu + 2 * cd,
                                             mod.on_gpu + 3 * cd, mod.on_gpu + 4 * cd, cs, batch,
                                             tokens, cd);
            char what[96];
            snprintf(what, sizeof what, "residual_layernorm_modulate dim %d out", cd);
            twin_check(what, fused_out, 1e-5);
            snprintf(what, sizeof what, "residual_layernorm_modulate dim %d x", cd);
            twin_check(what, residual_x, 1e-5);
            twin_free(residual_x);
            twin_free(residual_y);
            twin_free(fused_out);
        }
    }
    twin_free(x);
    twin_free(shifted);
    twin_free(offset);
    twin_free(mod);
    twin_free(out);
}

static void test_pointwise(void) {
    const int batch = 4, tokens = 33, dim = 200;
    size_t n = (size_t)batch * tokens * dim;
    twin x = twin_random(n, 1.0f), y = twin_operand_random(n, 1.0f);
    twin gate = twin_random((size_t)batch * 3 * dim, 1.0f);
    cpu->gated_residual(cpu, x.on_cpu, y.on_cpu, gate.on_cpu + dim, 3 * dim, batch, tokens, dim);
    gpu->gated_residual(gpu, x.on_gpu, y.on_gpu, gate.on_gpu + dim, 3 * dim, batch, tokens, dim);
    twin_check("gated_residual", x, 1e-5);
    {
        /* An odd width (and a gate stride to match) takes the scalar path. */
        const int odd_dim = 201;
        size_t odd_n = (size_t)batch * tokens * odd_dim;
        twin ox = twin_random(odd_n, 1.0f), oy = twin_operand_random(odd_n, 1.0f);
        twin ogate = twin_random((size_t)batch * 3 * odd_dim, 1.0f);
        cpu->gated_residual(cpu, ox.on_cpu, oy.on_cpu, ogate.on_cpu + odd_dim, 3 * odd_dim, batch,
                            tokens, odd_dim);
        gpu->gated_residual(gpu, ox.on_gpu, oy.on_gpu, ogate.on_gpu + odd_dim, 3 * odd_dim, batch,
                            tokens, odd_dim);
        twin_check("gated_residual, odd width", ox, 1e-5);
        twin_free(ox);
        twin_free(oy);
        twin_free(ogate);
    }

    twin big = twin_random(n, 6.0f), out = twin_nan(n);
    cpu->activation(cpu, out.on_cpu, big.on_cpu, n, BACKEND_ACT_GELU_TANH);
    gpu->activation(gpu, out.on_gpu, big.on_gpu, n, BACKEND_ACT_GELU_TANH);
    twin_check("activation gelu_tanh", out, 1e-5);
    cpu->activation(cpu, out.on_cpu, big.on_cpu, n, BACKEND_ACT_SILU);
    gpu->activation(gpu, out.on_gpu, big.on_gpu, n, BACKEND_ACT_SILU);
    twin_check("activation silu", out, 1e-5);

    twin rows = twin_random((size_t)tokens * dim, 1.0f);
    twin out2 = twin_nan(n);
    cpu->add(cpu, out2.on_cpu, x.on_cpu, rows.on_cpu, batch, tokens, dim, 1);
    gpu->add(gpu, out2.on_gpu, x.on_gpu, rows.on_gpu, batch, tokens, dim, 1);
    twin_check("add broadcast rows", out2, 1e-5);
    cpu->add(cpu, out2.on_cpu, x.on_cpu, y.on_cpu, batch, tokens, dim, 0);
    gpu->add(gpu, out2.on_gpu, x.on_gpu, y.on_gpu, batch, tokens, dim, 0);
    twin_check("add elementwise", out2, 1e-5);

    twin copy = twin_nan(n);
    cpu->copy(cpu, copy.on_cpu, y.on_cpu, n - 3);
    gpu->copy(gpu, copy.on_gpu, y.on_gpu, n - 3);
    /* (from gate: x differs by rounding between the backends by now) */
    cpu->copy(cpu, copy.on_cpu + n - 3, gate.on_cpu, 3);
    gpu->copy(gpu, copy.on_gpu + n - 3, gate.on_gpu, 3);
    twin_check("copy", copy, 0);
    twin_free(x);
    twin_free(y);
    twin_free(gate);
    twin_free(big);
    twin_free(out);
    twin_free(rows);
    twin_free(out2);
    twin_free(copy);
}

static void test_conditioning(void) {
    const int batch = 37, dim = 256;
    float timesteps[37];
    int labels[37];
    for (int b = 0; b < batch; b++) {
        timesteps[b] = b == 0 ? 999.0f : b == 1 ? 0.0f : 500.0f + 499.0f * test_uniform();
        labels[b] = (int)((test_uniform() + 1.0f) * 500.0f) % 1001;
    }
    twin freqs = twin_nan((size_t)batch * dim);
    cpu->timestep_frequencies(cpu, freqs.on_cpu, timesteps, batch, dim);
    gpu->timestep_frequencies(gpu, freqs.on_gpu, timesteps, batch, dim);
    /* The host array may change at once: the op must have staged its copy. */
    for (int b = 0; b < batch; b++) timesteps[b] = NAN;
    twin_check("timestep_frequencies", freqs, 1e-6);
    twin odd = twin_nan((size_t)batch * 7);
    for (int b = 0; b < batch; b++) timesteps[b] = (float)(b * 27);
    cpu->timestep_frequencies(cpu, odd.on_cpu, timesteps, batch, 7);
    gpu->timestep_frequencies(gpu, odd.on_gpu, timesteps, batch, 7);
    twin_check("timestep_frequencies odd dim", odd, 1e-6);

    twin table = twin_random((size_t)1001 * 1152, 1.0f);
    twin rows = twin_nan((size_t)batch * 1152);
    cpu->embedding_rows(cpu, rows.on_cpu, table.on_cpu, labels, batch, 1152);
    gpu->embedding_rows(gpu, rows.on_gpu, table.on_gpu, labels, batch, 1152);
    for (int b = 0; b < batch; b++) labels[b] = -1;
    twin_check("embedding_rows", rows, 0);
    twin_free(freqs);
    twin_free(odd);
    twin_free(table);
    twin_free(rows);
}

static void test_patches(void) {
    const int batch = 3, channels = 4, size = 32, patch = 2;
    size_t n = (size_t)batch * channels * size * size;
    twin images = twin_random(n, 1.0f), tokens = twin_nan(n), back = twin_nan(n);
    cpu->patchify(cpu, tokens.on_cpu, images.on_cpu, batch, channels, size, patch);
    gpu->patchify(gpu, tokens.on_gpu, images.on_gpu, batch, channels, size, patch);
    twin_check("patchify", tokens, 0);
    cpu->unpatchify(cpu, back.on_cpu, tokens.on_cpu, batch, channels, size, patch);
    gpu->unpatchify(gpu, back.on_gpu, tokens.on_gpu, batch, channels, size, patch);
    twin_check("unpatchify", back, 0);
    const int big_channels = 3, big_size = 36, big_patch = 4;
    size_t m = (size_t)2 * big_channels * big_size * big_size;
    twin images2 = twin_random(m, 1.0f), tokens2 = twin_nan(m), back2 = twin_nan(m);
    cpu->patchify(cpu, tokens2.on_cpu, images2.on_cpu, 2, big_channels, big_size, big_patch);
    gpu->patchify(gpu, tokens2.on_gpu, images2.on_gpu, 2, big_channels, big_size, big_patch);
    twin_check("patchify p=4", tokens2, 0);
    cpu->unpatchify(cpu, back2.on_cpu, images2.on_cpu, 2, big_channels, big_size, big_patch);
    gpu->unpatchify(gpu, back2.on_gpu, images2.on_gpu, 2, big_channels, big_size, big_patch);
    twin_check("unpatchify p=4", back2, 0);
    twin_free(images);
    twin_free(tokens);
    twin_free(back);
    twin_free(images2);
    twin_free(tokens2);
    twin_free(back2);
}

static diffusion_step_coefs random_coefs(int learned, int add_noise) {
    diffusion_step_coefs c;
    memset(&c, 0, sizeof c);
    c.x0_from_x = 1.5f + 0.1f * test_uniform();
    c.x0_from_model = -0.7f + 0.1f * test_uniform();
    c.eps_from_x = 0.3f * test_uniform();
    c.eps_from_model = 1.0f + 0.1f * test_uniform();
    c.next_from_x0 = 0.4f + 0.1f * test_uniform();
    c.next_from_eps = 0.2f * test_uniform();
    c.next_from_x = 0.8f + 0.1f * test_uniform();
    c.learned_variance = learned;
    c.log_variance_min = -6.0f + test_uniform();
    c.log_variance_max = -3.0f + test_uniform();
    c.noise_std = 0.1f + 0.05f * test_uniform();
    c.add_noise = add_noise;
    return c;
}

static void test_sampler(void) {
    const int half = 3, channels = 4, hw = 32 * 32;
    size_t per_image = (size_t)2 * channels * hw;
    twin model_out = twin_random(2 * half * per_image, 1.0f);
    cpu->cfg_combine(cpu, model_out.on_cpu, half, 2 * channels, hw, 3, 4.0f);
    gpu->cfg_combine(gpu, model_out.on_gpu, half, 2 * channels, hw, 3, 4.0f);
    twin_check("cfg_combine (3 guided channels)", model_out, 1e-6);
    cpu->cfg_combine(cpu, model_out.on_cpu, half, 2 * channels, hw, 2 * channels, 1.5f);
    gpu->cfg_combine(gpu, model_out.on_gpu, half, 2 * channels, hw, 2 * channels, 1.5f);
    twin_check("cfg_combine (all channels)", model_out, 1e-6);

    const int batch = 5;
    size_t n = (size_t)batch * channels * hw;
    twin x = twin_random(n, 1.0f), noise = twin_random(n, 1.0f);
    twin out = twin_random((size_t)batch * 2 * channels * hw, 1.0f);
    const int cases[3][2] = {{1, 1}, {0, 1}, {0, 0}};
    const char *names[3] = {"sampler_update learned variance", "sampler_update fixed variance",
                            "sampler_update no noise"};
    for (int i = 0; i < 3; i++) {
        diffusion_step_coefs c = random_coefs(cases[i][0], cases[i][1]);
        const float *noise_cpu = c.add_noise ? noise.on_cpu : NULL;
        const float *noise_gpu = c.add_noise ? noise.on_gpu : NULL;
        cpu->sampler_update(cpu, x.on_cpu, out.on_cpu, noise_cpu, &c, batch, channels, hw,
                            2 * channels);
        gpu->sampler_update(gpu, x.on_gpu, out.on_gpu, noise_gpu, &c, batch, channels, hw,
                            2 * channels);
        twin_check(names[i], x, 1e-5);
    }
    twin_free(model_out);
    twin_free(x);
    twin_free(noise);
    twin_free(out);
}

static void test_row_norms(void) {
    const int rows = 7;
    const size_t cols = (size_t)256 * 1152 + 5;
    twin a = twin_random(rows * cols, 1.0f), b = twin_random(rows * cols, 1.0f);
    double diff_cpu[7], norm_cpu[7], diff_gpu[7], norm_gpu[7];
    for (int r = 0; r < rows; r++) diff_gpu[r] = norm_gpu[r] = NAN;
    CHECK(cpu->row_norms(cpu, a.on_cpu, b.on_cpu, rows, cols, diff_cpu, norm_cpu) == 0);
    CHECK(gpu->row_norms(gpu, a.on_gpu, b.on_gpu, rows, cols, diff_gpu, norm_gpu) == 0);
    /* Both accumulate in double: only the order of the sums differs. */
    int failures_before = test_failures;
    for (int r = 0; r < rows; r++) {
        CHECK_MSG(fabs(diff_gpu[r] - diff_cpu[r]) <= 1e-9 * diff_cpu[r], "row %d diff %.17g vs %.17g",
                  r, diff_gpu[r], diff_cpu[r]);
        CHECK_MSG(fabs(norm_gpu[r] - norm_cpu[r]) <= 1e-9 * norm_cpu[r], "row %d norm %.17g vs %.17g",
                  r, norm_gpu[r], norm_cpu[r]);
    }
    fprintf(stderr, "  %-48s %s\n", "row_norms (double, 1e-9 relative)",
            test_failures == failures_before ? "ok" : "FAIL");
    twin_free(a);
    twin_free(b);
}

/* A failing op is reported by the next synchronize, with a message, and the
 * failure stays. */
static void test_error_reporting(void) {
    char err[256];
    backend *faulty = backend_cuda_create(0, FPDM_PRECISION_FP32, err, sizeof err);
    CHECK_MSG(faulty != NULL, "%s", err);
    if (!faulty) return;
    float *buffer = faulty->alloc(faulty, 3 * 256 * 4);
    CHECK(faulty->synchronize(faulty) == 0);
    faulty->attention(faulty, buffer, buffer, 1, 4, 1, 256, NULL);
    CHECK(faulty->synchronize(faulty) != 0);
    CHECK(strstr(backend_cuda_error(faulty), "head_dim") != NULL);
    float host[4];
    CHECK(faulty->download(faulty, host, buffer, 4) != 0);
    faulty->release(faulty, buffer);
    faulty->destroy(faulty);

    int count = backend_cuda_device_count();
    CHECK(backend_cuda_create(count, FPDM_PRECISION_FP32, err, sizeof err) == NULL);
    CHECK(strstr(err, "does not exist") != NULL);
}

/* The cached LayerNorm's variants with 16-bit operands (outputs rounded to
 * them: 1e-2). */
static void test_layernorm_variants_half(const char *type_name) {
    test_layernorm_variants(type_name, 1e-2);
}

static void test_layernorm_all(void) {
    test_layernorm();
    test_layernorm_variants("fp32", 1e-5);
    on_half_backends(test_layernorm_variants_half);
}

int main(int argc, char **argv) {
    const struct {
        const char *name;
        void (*run)(void);
    } groups[] = {
        {"linear", test_linear},           {"layernorm", test_layernorm_all},
        {"pointwise", test_pointwise},     {"conditioning", test_conditioning},
        {"patches", test_patches},         {"sampler", test_sampler},
        {"row_norms", test_row_norms},     {"errors", test_error_reporting},
    };
    const int group_count = (int)(sizeof groups / sizeof groups[0]);
    const char *only = argc > 1 ? argv[1] : NULL;
    int known = only == NULL;
    for (int g = 0; g < group_count && !known; g++) known = strcmp(groups[g].name, only) == 0;
    if (argc > 2 || !known) {
        fprintf(stderr, "usage: test_ops [GROUP]; GROUP is one of:");
        for (int g = 0; g < group_count; g++) fprintf(stderr, " %s", groups[g].name);
        fprintf(stderr, "\n");
        return 2;
    }
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "test_ops: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    test_seed_random("test_ops");
    char err[256], name[256];
    backend_cuda_device_name(0, name, sizeof name);
    fprintf(stderr, "test_ops: device 0 is %s\n", name);
    cpu = backend_cpu_create(0);
    gpu = backend_cuda_create(0, FPDM_PRECISION_FP32, err, sizeof err);
    if (!cpu || !gpu) {
        fprintf(stderr, "test_ops: cannot create the backends: %s\n", gpu ? "cpu" : err);
        return 1;
    }
    for (int g = 0; g < group_count; g++)
        if (!only || strcmp(groups[g].name, only) == 0) groups[g].run();
    gpu->destroy(gpu);
    cpu->destroy(cpu);
    return test_finish("test_ops");
}
