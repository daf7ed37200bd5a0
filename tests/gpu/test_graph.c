/* test_graph.c - the fixed-point iterations replayed as CUDA graphs against
 * the same iterations issued op by op (a second CUDA context whose graph ops
 * are switched off), so that a replay on the wrong buffers, of a stale
 * recording or of the wrong parity shows up as an O(1) difference:
 *   forwards with 0..7 iterations on new inputs each time, with and without
 *   an initial solution (output and final solution compared), and sampling
 *   runs whose iteration count changes from step to step (an explicit
 *   per-step list with reuse; early exit on tol with carry-over), fp32 and
 *   bf16. The op-by-op side also keeps the older way of rounding the state
 *   into operands (see open_cuda), so rows stopped by tol check the fused
 *   path's copy. Both sides compute the same roundings of the same numbers,
 *   so they agree to rounding.
 * Exits 77 (SKIPPED) without a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "context.h"
#include "fpdm.h"
#include "test_util.h"

#define FORWARD_MODEL "tests/golden/forward-fpdm.model.safetensors"
#define SAMPLE_MODEL "tests/golden/sample-model-fpdm.safetensors"

static fpdm_context *open_cuda(fpdm_precision precision, int graphs) {
    fpdm_context_params cp = fpdm_context_default_params();
    cp.device = "cuda";
    cp.precision = precision;
    fpdm_context *ctx;
    if (fpdm_context_create(&cp, &ctx) != FPDM_OK) {
        CHECK_MSG(0, "cuda: %s", ctx ? fpdm_last_error(ctx) : "out of memory");
        fpdm_context_free(ctx);
        return NULL;
    }
    CHECK_MSG(ctx->be->graph_launch && ctx->be->graph_begin && ctx->be->graph_end,
              "the CUDA backend has no graph ops");
    /* The network issues the iterations op by op when graph_launch is NULL,
     * and rounds the state into operands at each iteration's start (the
     * path before gated_residual_to_operand) when that op is NULL: the
     * direct side checks the fused path's bookkeeping too (the same
     * roundings of the same numbers). */
    if (!graphs) {
        ctx->be->graph_launch = NULL;
        ctx->be->gated_residual_to_operand = NULL;
    }
    return ctx;
}

static void compare_forwards(fpdm_context *graph_ctx, fpdm_context *direct_ctx,
                             double tolerance, const char *precision) {
    fpdm_model *mg = test_load_model(graph_ctx, FORWARD_MODEL);
    fpdm_model *md = test_load_model(direct_ctx, FORWARD_MODEL);
    if (!mg || !md) goto done;
    const fpdm_model_info *info = fpdm_model_get_info(mg);
    const int batch = 3, size = info->input_size, grid = size / info->patch_size;
    const size_t in_n = (size_t)batch * info->in_channels * size * size;
    const size_t out_n = (size_t)batch * info->out_channels * size * size;
    const size_t solution_n = (size_t)batch * grid * grid * info->hidden_size;
    float *x = malloc(in_n * sizeof(float)), *init = malloc(solution_n * sizeof(float));
    float *out_g = malloc(out_n * sizeof(float)), *out_d = malloc(out_n * sizeof(float));
    float *sol_g = malloc(solution_n * sizeof(float)), *sol_d = malloc(solution_n * sizeof(float));
    float t[3] = {5, 321, 998};
    int y[3] = {0, 2, info->num_classes};
    unsigned seed = 99;
    for (int iters = 0; iters <= 7; iters++) {
        for (int with_init = 0; with_init < 2; with_init++) {
            test_random_fill(x, in_n, &seed);
            test_random_fill(init, solution_n, &seed);
            const float *init_solution = with_init ? init : NULL;
            CHECK_MSG(fpdm_forward(graph_ctx, mg, batch, x, t, y, iters, init_solution, out_g,
                                   sol_g) == FPDM_OK,
                      "%s", fpdm_last_error(graph_ctx));
            CHECK_MSG(fpdm_forward(direct_ctx, md, batch, x, t, y, iters, init_solution, out_d,
                                   sol_d) == FPDM_OK,
                      "%s", fpdm_last_error(direct_ctx));
            char what[128];
            snprintf(what, sizeof what, "%s forward, %d iterations%s", precision, iters,
                     with_init ? ", initial solution" : "");
            check_close(what, out_g, out_d, out_n, tolerance);
            snprintf(what, sizeof what, "%s solution, %d iterations%s", precision, iters,
                     with_init ? ", initial solution" : "");
            check_close(what, sol_g, sol_d, solution_n, tolerance);
        }
    }
    free(x), free(init), free(out_g), free(out_d), free(sol_g), free(sol_d);
done:
    fpdm_model_free(mg);
    fpdm_model_free(md);
}

static void compare_sampling(fpdm_context *graph_ctx, fpdm_context *direct_ctx,
                             double tolerance, const char *precision) {
    fpdm_model *mg = test_load_model(graph_ctx, SAMPLE_MODEL);
    fpdm_model *md = test_load_model(direct_ctx, SAMPLE_MODEL);
    if (!mg || !md) goto done;
    static const int iters_per_step[6] = {1, 3, 2, 5, 0, 4};
    int labels[3] = {2, 7, 1};
    for (int variant = 0; variant < 2; variant++) {
        fpdm_sample_params p = fpdm_sample_default_params(mg);
        p.num_steps = 6;
        p.noise_seed = 11;
        p.cfg_scale = 3.0f;
        if (variant == 0) {
            p.iters_per_step = iters_per_step;
            p.reuse = 1;
        } else {
            p.iters = 6;
            p.tol = 1e-2f;
            p.carry_over = 1;
        }
        size_t n = fpdm_sample_output_size(mg, 3);
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) a[i] = b[i] = NAN;
        fpdm_sample_report report_g = {0}, report_d = {0};
        CHECK_MSG(fpdm_sample(graph_ctx, mg, &p, 3, labels, a, &report_g) == FPDM_OK, "%s",
                  fpdm_last_error(graph_ctx));
        CHECK_MSG(fpdm_sample(direct_ctx, md, &p, 3, labels, b, &report_d) == FPDM_OK, "%s",
                  fpdm_last_error(direct_ctx));
        CHECK(report_g.fixed_point_iterations == report_d.fixed_point_iterations);
        char what[128];
        snprintf(what, sizeof what, "%s sampling, %s", precision,
                 variant == 0 ? "per-step iterations with reuse" : "tol with carry-over");
        check_close(what, a, b, n, tolerance);
        fpdm_sample_report_free(&report_g);
        fpdm_sample_report_free(&report_d);
        free(a), free(b);
    }
done:
    fpdm_model_free(mg);
    fpdm_model_free(md);
}

int main(void) {
    if (backend_cuda_device_count() <= 0) {
        fprintf(stderr, "test_graph: no CUDA device, SKIPPED\n");
        return TEST_SKIP;
    }
    static const struct {
        fpdm_precision precision;
        const char *name;
        double tolerance;
    } cases[2] = {{FPDM_PRECISION_FP32, "fp32", 1e-6}, {FPDM_PRECISION_BF16, "bf16", 1e-5}};
    for (int c = 0; c < 2; c++) {
        fpdm_context *graph_ctx = open_cuda(cases[c].precision, 1);
        fpdm_context *direct_ctx = open_cuda(cases[c].precision, 0);
        if (graph_ctx && direct_ctx) {
            compare_forwards(graph_ctx, direct_ctx, cases[c].tolerance, cases[c].name);
            compare_sampling(graph_ctx, direct_ctx, cases[c].tolerance, cases[c].name);
        }
        fpdm_context_free(graph_ctx);
        fpdm_context_free(direct_ctx);
    }
    return test_finish("test_graph");
}
