/* test_model_memory.c - loading a model on the CPU takes the weights and the
 * file's pages, not a third copy: the CPU backend's memory is the host's, so
 * the weights are placed in it directly instead of staged and uploaded
 * (DiT-XL/2 peaked at 6.7 GB for its 2.8 GB of weights). Measured as the
 * growth of the process's peak resident size across fpdm_model_load of a
 * DiT-S/2 file with random weights (128 MB of float32 weights).
 *
 *   ./build/test_model_memory
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fpdm.h"
#include "synthetic_model.h"
#include "test_util.h"

static double peak_resident_mb(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_maxrss / 1024.0; /* Linux reports KiB */
}

int main(void) {
    char path[] = "/tmp/fpdm-test-model-memory-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    close(fd);
    synthetic_config config;
    char err[256];
    int written = synthetic_config_lookup("DiT-S/2", 256, &config, err, sizeof err) == 0 &&
                  synthetic_model_write(&config, path, 1, err, sizeof err) == 0;
    CHECK_MSG(written, "%s", err);
    struct stat st;
    double file_mb = written && stat(path, &st) == 0 ? (double)st.st_size / (1 << 20) : 0.0;

    fpdm_context_params params = fpdm_context_default_params();
    params.device = "cpu";
    fpdm_context *ctx = NULL;
    fpdm_model *model = NULL;
    CHECK(fpdm_context_create(&params, &ctx) == FPDM_OK);
    double before = peak_resident_mb();
    fpdm_status status = written ? fpdm_model_load(ctx, path, &model) : FPDM_ERR_IO;
    double growth = peak_resident_mb() - before;
    unlink(path);
    CHECK_MSG(status == FPDM_OK, "%s", fpdm_last_error(ctx));
    if (model) {
        double weights_mb = (double)fpdm_model_get_info(model)->weight_bytes / (1 << 20);
        printf("load: peak grew %.0f MB for %.0f MB of weights from a %.0f MB file\n", growth,
               weights_mb, file_mb);
        /* The weights, the file's pages and 10% for the rest; a staging copy
         * would add the weights once more. */
        CHECK_MSG(growth <= 1.1 * (weights_mb + file_mb),
                  "loading grew the peak by %.0f MB, over the weights and the file (%.0f MB)",
                  growth, weights_mb + file_mb);
        fpdm_model_free(model);
    }
    fpdm_context_free(ctx);
    return test_finish("test_model_memory");
}
