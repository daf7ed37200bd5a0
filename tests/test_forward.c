/* test_forward.c - the CPU forward pass against the PyTorch reference.
 *
 * For every tests/golden/forward-<case>.model.safetensors and its .io file
 * (written by tests/golden/make_forward_golden.py), checks the embeddings, the
 * first block, and the whole forward (output and, for FPDM, the final
 * fixed-point solution) at relative L2 <= 1e-5.
 *   test_forward                  all golden cases
 *   test_forward MODEL IO         one pair (used by tests/test_convert.py)
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "fpdm.h"
#include "model.h"
#include "network.h"
#include "safetensors.h"
#include "test_util.h"

#define TOLERANCE 1e-5

static int *labels_of(const safetensors_file *io, int batch) {
    float *y = golden_tensor(io, "y", NULL);
    int *labels = malloc((size_t)batch * sizeof(int));
    for (int i = 0; i < batch; i++) labels[i] = y ? (int)y[i] : 0;
    free(y);
    return labels;
}

/* Compares a backend buffer with a golden tensor, if the golden file has it. */
static void check_buffer(const char *case_name, const char *tensor, const safetensors_file *io,
                         const float *actual) {
    if (!safetensors_find(io, tensor)) return;
    size_t n;
    float *expected = golden_tensor(io, tensor, &n);
    char what[160];
    snprintf(what, sizeof what, "%s %s", case_name, tensor);
    check_close(what, actual, expected, n, TOLERANCE);
    free(expected);
}

/* Embeddings and the first block, through the network's own pieces. */
static void check_intermediates(fpdm_context *ctx, const fpdm_model *model, const char *case_name,
                                const safetensors_file *io, int batch, const float *t,
                                const int *labels) {
    const model_config *cfg = &model->config;
    float *arena = context_arena(ctx, network_arena_floats(ctx, cfg, batch));
    CHECK(arena != NULL);
    if (!arena) return;
    network_state st;
    network_layout(ctx, cfg, batch, arena, &st);
    float *x = golden_tensor(io, "x", NULL);
    size_t in_floats = (size_t)batch * cfg->in_channels * cfg->input_size * cfg->input_size;
    memcpy(st.x, x, in_floats * sizeof(float));
    free(x);
    network_embed(model, &st, t, labels);
    check_buffer(case_name, "t_emb", io, st.t_emb);
    check_buffer(case_name, "y_emb", io, st.y_emb);
    check_buffer(case_name, "x_embed", io, st.hidden);
    const block_weights *first = cfg->fixed_point ? (cfg->pre_depth ? &model->pre_blocks[0] : NULL)
                                                  : &model->blocks[0];
    if (!first || !safetensors_find(io, "block0_out")) return;
    const void *silu = cfg->fixed_point ? st.silu_cond_pp : st.silu_cond;
    model->be->linear(model->be, st.modulation, BACKEND_OUT_F32, silu, batch, &first->modulation,
                      NULL, BACKEND_ACT_NONE);
    network_block(model, &st, first, st.hidden, st.modulation);
    check_buffer(case_name, "block0_out", io, st.hidden);
}

/* A NaN or infinite input is refused, naming it: its output would be NaN. */
static void check_non_finite_inputs(fpdm_context *ctx, const fpdm_model *model, int batch,
                                    float *x, float *t, const int *labels, int iters, float *init,
                                    float *out, size_t solution_floats) {
    const fpdm_model_info *info = fpdm_model_get_info(model);
    const size_t x_floats = (size_t)batch * info->in_channels * info->input_size * info->input_size;
    struct {
        float *values;
        size_t index;
        float poison;
        const char *needle;
    } cases[3] = {{x, x_floats - 1, INFINITY, "x["},
                  {t, 0, NAN, "timesteps[0] is nan"},
                  {init, solution_floats / 2, -INFINITY, "init_solution["}};
    for (int c = 0; c < 3; c++) {
        if (!cases[c].values) continue;
        const float kept = cases[c].values[cases[c].index];
        cases[c].values[cases[c].index] = cases[c].poison;
        fpdm_status status = fpdm_forward(ctx, model, batch, x, t, labels, iters, init, out, NULL);
        CHECK_MSG(status == FPDM_ERR_INVALID_ARGUMENT && strstr(fpdm_last_error(ctx), cases[c].needle) &&
                      strstr(fpdm_last_error(ctx), "allowed: finite numbers"),
                  "%s poisoned: status %d, %s", cases[c].needle, (int)status, fpdm_last_error(ctx));
        cases[c].values[cases[c].index] = kept;
    }
}

static void check_case(const char *model_path, const char *io_path, const char *case_name) {
    fpdm_context *ctx;
    fpdm_context_params params = fpdm_context_default_params();
    params.num_threads = 2;
    CHECK(fpdm_context_create(&params, &ctx) == FPDM_OK);
    fpdm_model *model = NULL;
    fpdm_status status = fpdm_model_load(ctx, model_path, &model);
    CHECK_MSG(status == FPDM_OK, "%s", fpdm_last_error(ctx));
    safetensors_file io;
    char err[512];
    int io_ok = safetensors_open(io_path, &io, err, sizeof err) == 0;
    CHECK_MSG(io_ok, "%s", err);
    if (status != FPDM_OK || !io_ok) {
        fpdm_model_free(model);
        fpdm_context_free(ctx);
        if (io_ok) safetensors_close(&io);
        return;
    }
    const fpdm_model_info *info = fpdm_model_get_info(model);
    int batch = (int)safetensors_find(&io, "x")->shape[0];
    int iters = golden_int(&io, "iters", info->default_iters);
    float *x = golden_tensor(&io, "x", NULL);
    float *t = golden_tensor(&io, "t", NULL);
    int *labels = labels_of(&io, batch);
    float *init = safetensors_find(&io, "init_solution") ? golden_tensor(&io, "init_solution", NULL) : NULL;
    size_t out_n, sol_n = (size_t)batch * model->config.num_tokens * info->hidden_size;
    float *expected = golden_tensor(&io, "out", &out_n);
    float *out = malloc(out_n * sizeof(float));
    float *solution = malloc(sol_n * sizeof(float));
    /* Poison the outputs so elements the forward never writes show up. */
    for (size_t i = 0; i < out_n; i++) out[i] = NAN;
    for (size_t i = 0; i < sol_n; i++) solution[i] = NAN;

    check_intermediates(ctx, model, case_name, &io, batch, t, labels);
    status = fpdm_forward(ctx, model, batch, x, t, labels, iters, init, out, solution);
    CHECK_MSG(status == FPDM_OK, "%s", fpdm_last_error(ctx));
    char what[160];
    snprintf(what, sizeof what, "%s out", case_name);
    check_close(what, out, expected, out_n, TOLERANCE);
    if (info->is_fixed_point) check_buffer(case_name, "solution", &io, solution);
    check_non_finite_inputs(ctx, model, batch, x, t, labels, iters, init, out, sol_n);

    free(x), free(t), free(labels), free(init), free(expected), free(out), free(solution);
    safetensors_close(&io);
    fpdm_model_free(model);
    fpdm_context_free(ctx);
}

static int all_cases(void) {
    const char *dir = "tests/golden";
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "cannot open %s (run from the repository root)", dir);
    if (!d) return 0;
    int cases = 0;
    struct dirent *e;
    const char *suffix = ".model.safetensors";
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name), slen = strlen(suffix);
        if (strncmp(e->d_name, "forward-", 8) != 0 || len <= slen ||
            strcmp(e->d_name + len - slen, suffix) != 0)
            continue;
        char name[256], model_path[512], io_path[512];
        snprintf(name, sizeof name, "%.*s", (int)(len - slen), e->d_name);
        snprintf(model_path, sizeof model_path, "%s/%s", dir, e->d_name);
        snprintf(io_path, sizeof io_path, "%s/%s.io.safetensors", dir, name);
        check_case(model_path, io_path, name);
        cases++;
    }
    closedir(d);
    return cases;
}

int main(int argc, char **argv) {
    if (argc == 3) {
        check_case(argv[1], argv[2], argv[1]);
        return test_finish("test_forward");
    }
    int cases = all_cases();
    CHECK_MSG(cases >= 9, "expected at least 9 golden forward cases, found %d", cases);
    return test_finish("test_forward");
}
