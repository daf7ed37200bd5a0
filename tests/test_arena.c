/* test_arena.c - the activation arena against the memory target of the CUDA
 * backend issue: for DiT-XL/2 and FPDM-XL/2 at 256 px and 128 network rows
 * (64 images with guidance), network_arena_floats with float32 operands and
 * with 16-bit operands stays within 1.5x the analytic minimum activation
 * footprint of fpdm_min_activation_bytes, which fpdm-bench reports (plus 1%
 * for the images and per-row vectors, which the minimum leaves out). Only sizes are computed: the
 * backend is the CPU's with its operand type and attention scratch replaced,
 * so no GPU and no large allocation are needed. Run: ctest -R test_arena. */
#include <stdio.h>
#include <string.h>

#include "context.h"
#include "network.h"
#include "test_util.h"

enum { ROWS = 128 };

/* The library's analytic minimum (fpdm-bench's too) for a configuration,
 * through the fields of fpdm_model_info it reads. */
static double min_activation_bytes(const model_config *cfg, int rows, int operand_bytes) {
    fpdm_model_info info;
    memset(&info, 0, sizeof info);
    info.is_fixed_point = cfg->fixed_point;
    info.hidden_size = cfg->hidden_size;
    info.mlp_hidden = cfg->mlp_hidden;
    info.input_size = cfg->input_size;
    info.patch_size = cfg->patch_size;
    return fpdm_min_activation_bytes(&info, rows, operand_bytes);
}

static model_config xl_config(int fixed_point) {
    model_config c;
    memset(&c, 0, sizeof c);
    c.fixed_point = fixed_point;
    c.hidden_size = 1152;
    c.num_heads = 16;
    c.head_dim = 72;
    c.mlp_hidden = 4608;
    c.depth = fixed_point ? 3 : 28;
    c.pre_depth = c.post_depth = fixed_point;
    c.equivalent_depth = 28;
    c.patch_size = 2;
    c.input_size = 32;
    c.grid_size = 16;
    c.num_tokens = 256;
    c.in_channels = 4;
    c.out_channels = 8;
    c.learn_sigma = 1;
    c.num_classes = 1000;
    return c;
}

/* The CUDA backend's attention needs no scratch. */
static size_t no_scratch(backend *be, int batch, int tokens, int heads, int head_dim) {
    (void)be, (void)batch, (void)tokens, (void)heads, (void)head_dim;
    return 0;
}

static double arena_bytes(fpdm_context *ctx, const model_config *cfg, backend_dtype operand) {
    backend sized = *ctx->be;
    sized.operand_type = operand;
    sized.attention_scratch_floats = no_scratch;
    fpdm_context view = *ctx;
    view.be = &sized;
    return (double)network_arena_floats(&view, cfg, ROWS) * sizeof(float);
}

int main(void) {
    fpdm_context *ctx = NULL;
    fpdm_context_params params = fpdm_context_default_params();
    CHECK(fpdm_context_create(&params, &ctx) == FPDM_OK);
    if (!ctx) return test_finish("test_arena");
    const char *names[2] = {"DiT-XL/2", "FPDM-XL/2"};
    const backend_dtype operands[2] = {BACKEND_F32, BACKEND_BF16};
    double arena_of[2][2];
    for (int fixed_point = 0; fixed_point < 2; fixed_point++) {
        model_config cfg = xl_config(fixed_point);
        for (int o = 0; o < 2; o++) {
            double arena = arena_bytes(ctx, &cfg, operands[o]);
            double limit = 1.5 * min_activation_bytes(&cfg, ROWS, (int)backend_dtype_bytes(operands[o]));
            arena_of[fixed_point][o] = arena;
            fprintf(stderr, "  %-9s %s operands: arena %7.1f MB, 1.5 x minimum %7.1f MB (%.3f)\n",
                    names[fixed_point], o ? "bf16" : "fp32", arena / (1 << 20), limit / (1 << 20),
                    arena / limit);
            CHECK_MSG(arena <= 1.01 * limit, "%s: the arena outgrew the memory target", names[fixed_point]);
        }
        /* 16-bit operands halve the product inputs; DiT keeps no iterate. */
        CHECK(arena_of[fixed_point][1] < 0.75 * arena_of[fixed_point][0]);
    }
    CHECK(arena_of[0][0] < arena_of[1][0]);
    /* DiT keeps every [B, T, D] activation but the residual stream in the
     * operand type (fc2's output included), which puts its 16-bit arena
     * within 5% of the minimum (the images and per-row vectors aside). */
    {
        model_config dit_config = xl_config(0);
        double dit_minimum = min_activation_bytes(&dit_config, ROWS, 2);
        CHECK_MSG(arena_of[0][1] <= 1.05 * dit_minimum, "DiT-XL/2 bf16 arena %.1f MB, minimum %.1f MB",
                  arena_of[0][1] / (1 << 20), dit_minimum / (1 << 20));
    }
    /* The minimum itself, by hand for DiT-XL/2 in float32 (4 D + 4 x 5 D
     * bytes per token, M = 4 D) and for FPDM's extra 4 D + 2 x 2 D in bf16;
     * nothing for a missing info or an operand size no type has. */
    model_config dit = xl_config(0), fpdm = xl_config(1);
    CHECK(min_activation_bytes(&dit, 2, 4) == 2.0 * 256 * 24 * 1152);
    CHECK(min_activation_bytes(&fpdm, 1, 2) == 256.0 * (4 + 10 + 4 + 4) * 1152);
    CHECK(fpdm_min_activation_bytes(NULL, 2, 4) == 0.0);
    CHECK(min_activation_bytes(&dit, 2, 3) == 0.0);
    fpdm_context_free(ctx);
    return test_finish("test_arena");
}
