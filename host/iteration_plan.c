/* iteration_plan.c - the per-step iteration counts of the official
 * LinearController (adaptive_controller.py), evaluated in exact integer
 * arithmetic (see iteration_plan.h for why). */
#include "iteration_plan.h"
#include "error_message.h"

#include <stdint.h>
#include <stdio.h>

/* Entry i of the controller's list is 1 + (budget - n) * ratio_i / sum(ratio)
 * with ratio_i = 0.5 + j / (n - 1) (j = i increasing, n - 1 - i decreasing)
 * and sum(ratio) = n, i.e. 1 + (budget - n)(n - 1 + 2j) / (2n(n - 1)): the
 * quotient and remainder of that fraction give its floor and ceiling. */
static void entry_fraction(int n, int budget, int i, int increasing, int64_t *numerator,
                           int64_t *denominator) {
    if (n == 1) {
        *numerator = budget - 1;
        *denominator = 1;
        return;
    }
    int j = increasing ? i : n - 1 - i;
    *numerator = (int64_t)(budget - n) * (int64_t)(n - 1 + 2 * j);
    *denominator = (int64_t)2 * n * (n - 1);
}

int iteration_plan(fpdm_iteration_schedule schedule, int num_steps, int budget, int *iters_out,
                   char *err, size_t err_size) {
    int n = num_steps;
    if (n < 1 || n > 100000) {
        set_error(err, err_size, "iteration plan: %d steps, expected 1..100000", n);
        return -1;
    }
    if (schedule != FPDM_ITERS_FIXED && schedule != FPDM_ITERS_INCREASING &&
        schedule != FPDM_ITERS_DECREASING) {
        set_error(err, err_size,
                  "iteration plan: schedule %d, expected fixed, increasing or decreasing",
                  (int)schedule);
        return -1;
    }
    if (budget < 0 || budget > ITERATION_PLAN_MAX_BUDGET) {
        set_error(err, err_size, "iteration plan: budget %d, expected 0..%d", budget,
                  ITERATION_PLAN_MAX_BUDGET);
        return -1;
    }
    /* A budget of 0 is a model whose equivalent depth is its pre and post
     * blocks (or --iters 0): every schedule honours it with no iteration at
     * any step, which the network supports. */
    if (budget == 0) {
        for (int k = 0; k < n; k++) iters_out[k] = 0;
        return 0;
    }
    if (schedule == FPDM_ITERS_FIXED) {
        if (budget % n != 0) {
            set_error(err, err_size,
                      "iteration plan: fixed schedule needs a budget that is a multiple of the "
                      "%d steps, got %d",
                      n, budget);
            return -1;
        }
        for (int k = 0; k < n; k++) iters_out[k] = budget / n;
        return 0;
    }
    /* Below one iteration per step the controller's entries drop under one
     * (under zero for budgets below a third of the steps): the official rule
     * has no answer there, and choosing which steps go without would be a
     * rule of our own, so such budgets are refused. */
    if (budget < n) {
        set_error(err, err_size,
                  "iteration plan: budget %d for %d steps, expected 0 or %d..%d (the %s "
                  "schedule gives every step at least one iteration)",
                  budget, n, n, ITERATION_PLAN_MAX_BUDGET,
                  schedule == FPDM_ITERS_INCREASING ? "increasing" : "decreasing");
        return -1;
    }
    int increasing = schedule == FPDM_ITERS_INCREASING;
    /* The official rule: entries below the threshold round up, the others
     * down; lower the threshold until the total fits the budget. */
    for (int threshold = n / 2; threshold >= 0; threshold--) {
        int64_t total = 0;
        for (int i = 0; i < n; i++) {
            int64_t num, den;
            entry_fraction(n, budget, i, increasing, &num, &den);
            int64_t entry = 1 + num / den + (i < threshold && num % den != 0 ? 1 : 0);
            /* The controller is read from its last entry down to its first. */
            iters_out[n - 1 - i] = (int)entry;
            total += entry;
        }
        if (total <= budget) return 0;
    }
    set_error(err, err_size, "iteration plan: internal rounding failure");
    return -1;
}
