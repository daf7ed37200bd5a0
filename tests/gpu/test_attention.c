/* test_attention.c - the CUDA attention kernels against the CPU backend on
 * fresh random qkv, for every head_dim instantiation (12, 16, 32, 57, 64, 72,
 * 75, 96, 100, 128: odd widths and widths not a multiple of 8 among them),
 * token counts that are and are not multiples of the tiles (1 to
 * 1024), and the largest launch the samplers make (batch 128 x 1024 tokens x
 * 16 heads x 72, compared on its first and last images): the float32 kernel
 * at relative L2 <= 1e-5, the tensor-core kernel of the bf16 and fp16
 * backends at <= 1e-2 (its inputs are rounded to 16 bits first and the CPU
 * gets the rounded values, so only its own rounding of P and of the output
 * counts); for the bf16 and fp16 backends also every variant of the
 * tensor-core kernel (backend_cuda.h) on the cases of head_dim 49 to 80.
 * Outputs are poisoned with NaN first. Exits 77 (SKIPPED) without a GPU.
 * Run: ctest -L gpu (FPDM_TEST_SEED=N repeats a run). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "test_util.h"

/* Runs the CPU backend on images [first, first + count) of host_qkv. */
static float *cpu_attention(backend *cpu, const float *host_qkv, int first, int count, int tokens,
                            int heads, int head_dim) {
    size_t dim = (size_t)heads * head_dim;
    size_t qkv_floats = (size_t)count * tokens * 3 * dim, out_floats = (size_t)count * tokens * dim;
    float *qkv = cpu->alloc(cpu, qkv_floats), *out = cpu->alloc(cpu, out_floats);
    size_t scratch_floats = cpu->attention_scratch_floats(cpu, count, tokens, heads, head_dim);
    float *scratch = scratch_floats ? cpu->alloc(cpu, scratch_floats) : NULL;
    cpu->upload(cpu, qkv, host_qkv + (size_t)first * tokens * 3 * dim, qkv_floats);
    cpu->attention(cpu, out, qkv, count, tokens, heads, head_dim, scratch);
    float *host_out = malloc(out_floats * sizeof(float));
    cpu->download(cpu, host_out, out, out_floats);
    cpu->release(cpu, qkv);
    cpu->release(cpu, out);
    if (scratch) cpu->release(cpu, scratch);
    return host_out;
}

/* amplitude scales q and k: large values make the softmax peaked, which
 * exercises the running maximum. compare_all: every image compared, else the
 * first and the last. variant: the backend's attention op (-1) or a variant
 * of the tensor-core kernel (backend_cuda.h). */
static void check_case(backend *cpu, backend *gpu, int variant, int batch, int tokens, int heads,
                       int head_dim, float amplitude, int compare_all) {
    size_t dim = (size_t)heads * head_dim;
    size_t qkv_floats = (size_t)batch * tokens * 3 * dim, out_floats = (size_t)batch * tokens * dim;
    float *host_qkv = malloc(qkv_floats * sizeof(float));
    float *host_out = malloc(out_floats * sizeof(float));
    if (!host_qkv || !host_out) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < qkv_floats; i++) {
        int is_value = (i / dim) % 3 == 2;
        host_qkv[i] = (is_value ? 1.0f : amplitude) * test_uniform();
    }
    for (size_t i = 0; i < out_floats; i++) host_out[i] = NAN;
    float *qkv = test_upload_operand(gpu, host_qkv, qkv_floats);
    float *out = test_upload_operand(gpu, host_out, out_floats);
    if (!qkv || !out) return;
    size_t scratch_floats = gpu->attention_scratch_floats(gpu, batch, tokens, heads, head_dim);
    float *scratch = scratch_floats ? gpu->alloc(gpu, scratch_floats) : NULL;
    if (variant < 0)
        gpu->attention(gpu, out, qkv, batch, tokens, heads, head_dim, scratch);
    else
        backend_cuda_attention_variant(gpu, variant, out, qkv, batch, tokens, heads, head_dim);
    int status = test_download_operand(gpu, host_out, out, out_floats);
    CHECK_MSG(status == 0, "%s", backend_cuda_error(gpu));
    const char *type_name = gpu->operand_type == BACKEND_BF16 ? " bf16"
                            : gpu->operand_type == BACKEND_F16 ? " fp16" : "";
    double tolerance = gpu->operand_type == BACKEND_F32 ? 1e-5 : 1e-2;

    char what[128];
    size_t image_floats = (size_t)tokens * dim;
    int firsts[2] = {0, batch - 1}, counts[2] = {compare_all ? batch : 1, 1};
    for (int part = 0; part < (compare_all ? 1 : 2); part++) {
        float *expected = cpu_attention(cpu, host_qkv, firsts[part], counts[part], tokens, heads,
                                        head_dim);
        char variant_name[24] = "";
        if (variant >= 0) snprintf(variant_name, sizeof variant_name, " variant %d", variant);
        snprintf(what, sizeof what, "attention%s%s b%d t%d h%d d%d x%.0f%s", type_name,
                 variant_name, batch, tokens, heads, head_dim, amplitude,
                 compare_all ? "" : part ? " (last image)" : " (first image)");
        check_close(what, host_out + (size_t)firsts[part] * image_floats, expected,
                    (size_t)counts[part] * image_floats, tolerance);
        free(expected);
    }
    gpu->release(gpu, qkv);
    gpu->release(gpu, out);
    if (scratch) gpu->release(gpu, scratch);
    free(host_qkv);
    free(host_out);
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "test_attention: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    test_seed_random("test_attention");
    char err[256];
    backend *cpu = backend_cpu_create(0);
    if (!cpu) {
        fprintf(stderr, "test_attention: cannot create the CPU backend\n");
        return 1;
    }
    /* batch, tokens, heads, head_dim, amplitude */
    const struct { int batch, tokens, heads, head_dim; float amplitude; } cases[] = {
        {2, 256, 16, 72, 1.0f},  {3, 17, 3, 12, 1.0f},   {2, 33, 2, 16, 3.0f},
        {2, 100, 2, 32, 1.0f},   {2, 65, 6, 64, 1.0f},   {1, 1, 1, 64, 1.0f},
        {2, 64, 2, 72, 8.0f},    {1, 129, 2, 96, 1.0f},  {2, 97, 2, 128, 1.0f},
        {1, 31, 1, 100, 2.0f},   {1, 1024, 2, 72, 1.0f}, {2, 256, 12, 64, 1.0f},
        {2, 33, 3, 75, 2.0f},    {1, 70, 2, 57, 1.0f},
    };
    const fpdm_precision precisions[3] = {FPDM_PRECISION_FP32, FPDM_PRECISION_BF16,
                                          FPDM_PRECISION_FP16};
    /* FPDM_TEST_QUICK=1 (tests/gpu/run.sh under compute-sanitizer's racecheck
     * and synccheck, which run tens of times slower): cases of up to 130
     * tokens only, every kernel path still taken. */
    const char *quick_setting = getenv("FPDM_TEST_QUICK");
    const int quick = quick_setting && strcmp(quick_setting, "1") == 0;
    for (int p = 0; p < 3; p++) {
        backend *gpu = backend_cuda_create(0, precisions[p], err, sizeof err);
        CHECK_MSG(gpu != NULL, "%s", err);
        if (!gpu) continue;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (!quick || cases[i].tokens <= 130)
                check_case(cpu, gpu, -1, cases[i].batch, cases[i].tokens, cases[i].heads,
                           cases[i].head_dim, cases[i].amplitude, 1);
        /* The largest launch (DiT-XL/2 at 512 px, batch 128): first and last image. */
        if (!quick) check_case(cpu, gpu, -1, 128, 1024, 16, 72, 1.0f, 0);
        /* Every variant of the tensor-core kernel (the build may run another
         * than 0 above), on the cases of the head widths they are all built
         * for (49 to 80), and a launch of 16 images of 1024 tokens. */
        for (int variant = 0; precisions[p] != FPDM_PRECISION_FP32 &&
                              variant < backend_cuda_attention_variant_count();
             variant++) {
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
                if (cases[i].head_dim > 48 && cases[i].head_dim <= 80 &&
                    (!quick || cases[i].tokens <= 130))
                    check_case(cpu, gpu, variant, cases[i].batch, cases[i].tokens, cases[i].heads,
                               cases[i].head_dim, cases[i].amplitude, 1);
            if (!quick) check_case(cpu, gpu, variant, 16, 1024, 16, 72, 1.0f, 0);
        }
        gpu->destroy(gpu);
    }
    cpu->destroy(cpu);
    return test_finish("test_attention");
}
