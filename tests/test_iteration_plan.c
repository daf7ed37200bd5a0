/* test_iteration_plan.c - the LinearController plans against
 * tests/golden/diffusion.safetensors (tools/reference_sampling.py), their
 * totals, zero budgets, and rejected budgets.
 * Run: ctest -R test_iteration_plan (from the build folder's ctest). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iteration_plan.h"
#include "safetensors.h"
#include "test_util.h"

#define GOLDEN "tests/golden/diffusion.safetensors"

static fpdm_iteration_schedule schedule_named(const char *name) {
    if (strcmp(name, "increasing") == 0) return FPDM_ITERS_INCREASING;
    if (strcmp(name, "decreasing") == 0) return FPDM_ITERS_DECREASING;
    return FPDM_ITERS_FIXED;
}

static void test_golden_plans(void) {
    safetensors_file file;
    char err[512];
    if (safetensors_open(GOLDEN, &file, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        test_failures++;
        return;
    }
    int count = golden_int(&file, "num_plans", 0);
    CHECK(count >= 10);
    for (int k = 0; k < count; k++) {
        char key[64], kind[32];
        int steps, budget;
        snprintf(key, sizeof key, "plan%d", k);
        const char *desc = safetensors_metadata(&file, key);
        if (!desc || sscanf(desc, "%d %d %31s", &steps, &budget, kind) != 3) {
            CHECK_MSG(0, "bad metadata %s", key);
            continue;
        }
        snprintf(key, sizeof key, "plan%d.iters", k);
        const safetensors_tensor *golden = safetensors_find(&file, key);
        CHECK(golden && golden->dtype == SAFETENSORS_I64 && golden->num_elements == steps);
        if (!golden || golden->num_elements != steps) continue;
        int *iters = malloc((size_t)steps * sizeof(int));
        if (iteration_plan(schedule_named(kind), steps, budget, iters, err, sizeof err) != 0) {
            CHECK_MSG(0, "%s: %s", desc, err);
            free(iters);
            continue;
        }
        int differ = 0, below_one = 0;
        long total = 0;
        for (int i = 0; i < steps; i++) {
            int64_t expected;
            memcpy(&expected, golden->data + 8 * i, 8);
            differ += iters[i] != expected;
            below_one += iters[i] < 1;
            total += iters[i];
        }
        CHECK_MSG(differ == 0, "%s: %d entries differ from the reference", desc, differ);
        CHECK_MSG(below_one == 0, "%s: an entry below 1", desc);
        /* The official rounding never exceeds the budget and gives up at most
         * one iteration per rounded-down entry. */
        CHECK_MSG(total <= budget && total > budget - steps, "%s: total %ld", desc, total);
        if (strcmp(kind, "increasing") == 0 && steps > 1)
            CHECK_MSG(iters[0] >= iters[steps - 1], "%s: noisiest step gets fewer", desc);
        fprintf(stderr, "  plan %-24s total %ld %s\n", desc, total, differ ? "FAIL" : "ok");
        free(iters);
    }
    safetensors_close(&file);
}

static void test_small_plans(void) {
    int iters[4];
    char err[256];
    /* ratios 0.5, 1, 1.5 sum to 3: entries 1 + 6 * r / 3 = 2, 3, 4 exactly;
     * the noisiest step (last entry) comes first. */
    CHECK(iteration_plan(FPDM_ITERS_INCREASING, 3, 9, iters, err, sizeof err) == 0);
    CHECK(iters[0] == 4 && iters[1] == 3 && iters[2] == 2);
    CHECK(iteration_plan(FPDM_ITERS_DECREASING, 3, 9, iters, err, sizeof err) == 0);
    CHECK(iters[0] == 2 && iters[1] == 3 && iters[2] == 4);
    CHECK(iteration_plan(FPDM_ITERS_FIXED, 4, 12, iters, err, sizeof err) == 0);
    CHECK(iters[0] == 3 && iters[1] == 3 && iters[2] == 3 && iters[3] == 3);
    /* budget == steps: one iteration each. */
    CHECK(iteration_plan(FPDM_ITERS_INCREASING, 4, 4, iters, err, sizeof err) == 0);
    CHECK(iters[0] == 1 && iters[3] == 1);
}

/* A zero budget (--iters 0, or a model with no implicit depth beyond its pre
 * and post blocks) plans zero iterations at every step, for every schedule. */
static void test_zero_budget(void) {
    const fpdm_iteration_schedule schedules[] = {FPDM_ITERS_FIXED, FPDM_ITERS_INCREASING,
                                                 FPDM_ITERS_DECREASING};
    const int step_counts[] = {1, 2, 5};
    char err[256];
    for (int s = 0; s < 3; s++) {
        for (int c = 0; c < 3; c++) {
            int iters[5] = {-7, -7, -7, -7, -7};
            int n = step_counts[c];
            CHECK_MSG(iteration_plan(schedules[s], n, 0, iters, err, sizeof err) == 0,
                      "schedule %d, %d steps: %s", (int)schedules[s], n, err);
            int nonzero = 0;
            for (int k = 0; k < n; k++) nonzero += iters[k] != 0;
            CHECK_MSG(nonzero == 0, "schedule %d, %d steps: %d entries not 0", (int)schedules[s], n,
                      nonzero);
        }
    }
}

static void test_rejections(void) {
    int iters[8];
    char err[256] = "";
    CHECK(iteration_plan(FPDM_ITERS_INCREASING, 8, 7, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "budget 7") != NULL, "%s", err);
    /* Between 0 and one iteration per step only the fixed schedule's
     * multiples (none) could be honoured. */
    CHECK(iteration_plan(FPDM_ITERS_DECREASING, 4, 1, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "expected 0 or 4..") != NULL, "%s", err);
    CHECK(iteration_plan(FPDM_ITERS_FIXED, 4, 2, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "multiple") != NULL, "%s", err);
    CHECK(iteration_plan(FPDM_ITERS_FIXED, 4, 10, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "multiple") != NULL, "%s", err);
    CHECK(iteration_plan(FPDM_ITERS_DECREASING, 0, 10, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "0 steps") != NULL, "%s", err);
    CHECK(iteration_plan(FPDM_ITERS_INCREASING, 4, -3, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "budget -3") != NULL, "%s", err);
    CHECK(iteration_plan((fpdm_iteration_schedule)9, 4, 0, iters, err, sizeof err) == -1);
    CHECK(iteration_plan((fpdm_iteration_schedule)9, 4, 8, iters, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "schedule 9") != NULL, "%s", err);
}

int main(void) {
    test_golden_plans();
    test_small_plans();
    test_zero_budget();
    test_rejections();
    return test_finish("test_iteration_plan");
}
