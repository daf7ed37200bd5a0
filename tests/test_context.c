/* test_context.c - device strings of fpdm_context_params: "auto" picks the
 * first GPU exactly when a "cuda" context can be made on this machine and
 * build, else the CPU; malformed names are refused with a message that lists
 * the accepted ones. Public API only. Run: ctest -R test_context. */
#include <stdio.h>
#include <string.h>

#include "fpdm.h"
#include "test_util.h"

static fpdm_status open_device(const char *device, fpdm_context **ctx) {
    fpdm_context_params params = fpdm_context_default_params();
    params.device = device;
    return fpdm_context_create(&params, ctx);
}

int main(void) {
    fpdm_context *cuda = NULL, *automatic = NULL;
    int have_gpu = open_device("cuda", &cuda) == FPDM_OK;
    CHECK(open_device("auto", &automatic) == FPDM_OK);
    const char *name = fpdm_context_device_name(automatic);
    fprintf(stderr, "  auto -> %s (a cuda context %s)\n", name, have_gpu ? "opens" : "does not open");
    if (have_gpu)
        CHECK_MSG(strncmp(name, "cuda:0 ", 7) == 0, "auto gave %s with a GPU present", name);
    else
        CHECK_MSG(strcmp(name, "cpu") == 0, "auto gave %s without a GPU", name);
    fpdm_context_free(cuda);
    fpdm_context_free(automatic);

    const char *malformed[4] = {"gpu", "cuda:", "cuda:x", "Auto"};
    for (int i = 0; i < 4; i++) {
        fpdm_context *ctx = NULL;
        CHECK(open_device(malformed[i], &ctx) == FPDM_ERR_INVALID_ARGUMENT);
        CHECK_MSG(ctx && strstr(fpdm_last_error(ctx), "auto, cpu, cuda or cuda:N"), "%s: %s",
                  malformed[i], ctx ? fpdm_last_error(ctx) : "no context");
        fpdm_context_free(ctx);
    }
    return test_finish("test_context");
}
