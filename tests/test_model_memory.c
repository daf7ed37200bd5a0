/* test_model_memory.c - loading a model on the CPU takes the weights and the
 * file's pages, not a third copy: the CPU backend's memory is the host's, so
 * the weights are placed in it directly instead of staged and uploaded
 * (DiT-XL/2 peaked at 6.7 GB for its 2.8 GB of weights). Loading for a
 * device (a GPU) takes host memory for the file's pages and a staging chunk
 * a weight array, not a whole converted copy (1.35 GB for DiT-XL/2 in bf16):
 * checked on a CPU context set to load as a device does. Measured as the
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
#include <sys/wait.h>
#include <unistd.h>

#include "fpdm.h"
#include "synthetic_model.h"
#include "test_util.h"

static double peak_resident_mb(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_maxrss / 1024.0; /* Linux reports KiB */
}

/* Loads the file through a CPU context and checks the growth of the peak:
 * in place, or staged as for a device (bf16 operands, uploaded through
 * STAGING_MB chunks; the CPU backend's "upload" is a copy into its memory).
 * Returns the number of failed checks. */
enum { STAGING_MB = 4 };
static int check_load(const char *path, double file_mb, int staged) {
    fpdm_context_params params = fpdm_context_default_params();
    params.device = "cpu";
    fpdm_context *ctx = NULL;
    fpdm_model *model = NULL;
    CHECK(fpdm_context_create(&params, &ctx) == FPDM_OK);
    if (!ctx) return test_failures;
    if (staged) test_set_loading(ctx, BACKEND_BF16, (size_t)STAGING_MB << 20);
    double before = peak_resident_mb();
    fpdm_status status = fpdm_model_load(ctx, path, &model);
    double growth = peak_resident_mb() - before;
    CHECK_MSG(status == FPDM_OK, "%s", fpdm_last_error(ctx));
    if (model) {
        double weights_mb = (double)fpdm_model_get_info(model)->weight_bytes / (1 << 20);
        /* Two chunks at most: one for each weight array. */
        double staging_mb = staged ? 2.0 * STAGING_MB : 0.0;
        printf("%s load: peak grew %.0f MB for %.0f MB of weights from a %.0f MB file\n",
               staged ? "staged" : "in-place", growth, weights_mb, file_mb);
        /* The weights, the file's pages, the staging chunks and 10% for the
         * rest; a whole staging copy would add the weights once more. */
        CHECK_MSG(growth <= 1.1 * (weights_mb + file_mb) + staging_mb,
                  "loading grew the peak by %.0f MB, over the weights, the file and %.0f MB of "
                  "staging (%.0f MB)", growth, staging_mb, weights_mb + file_mb + staging_mb);
        fpdm_model_free(model);
    }
    fpdm_context_free(ctx);
    return test_failures;
}

/* Each case in a child process of its own, so that each peak starts from
 * the same place. */
static void check_load_in_child(const char *path, double file_mb, int staged) {
    fflush(stdout);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        int failures = check_load(path, file_mb, staged);
        fflush(stdout);
        _exit(failures ? 1 : 0);
    }
    int child_status = 0;
    CHECK(child > 0 && waitpid(child, &child_status, 0) == child && WIFEXITED(child_status) &&
          WEXITSTATUS(child_status) == 0);
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
    if (written) {
        check_load_in_child(path, file_mb, 0);
        check_load_in_child(path, file_mb, 1);
    }
    unlink(path);
    return test_finish("test_model_memory");
}
