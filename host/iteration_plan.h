/* iteration_plan.h - how many fixed-point iterations each sampling step gets,
 * spreading a total budget as the official LinearController does. */
#ifndef FPDM_ITERATION_PLAN_H
#define FPDM_ITERATION_PLAN_H

#include <stddef.h>
#include "fpdm.h"

/* The largest total a plan spreads (fpdm.h's budget, or steps x iters). */
#define ITERATION_PLAN_MAX_BUDGET 100000000

/* Fills iters_out[num_steps] in sampling order (iters_out[0] is the first,
 * noisiest step). FIXED gives budget / num_steps to every step (budget must be
 * a multiple); INCREASING / DECREASING follow the official LinearController
 * (adaptive_controller.py):
 *   ratio_i = linspace(0.5, 1.5, num_steps)_i (reversed for decreasing)
 *   f_i     = 1 + (budget - num_steps) * ratio_i / sum(ratio)
 *   entry_i = ceil(f_i) for i < threshold, floor(f_i) otherwise, where the
 *             threshold starts at num_steps / 2 and drops by one until
 *             sum(entry) <= budget
 * so the entries sum to the budget or a little less (the official rule does
 * not top them up). Entry i is used at respaced timestep i; the sampler runs
 * from the last timestep down, so iters_out[k] = entry_{num_steps-1-k}. (The
 * official model reads the controller twice per forward; one entry per step
 * is the intended meaning and what is implemented.)
 * f_i is evaluated exactly (it is a rational number); the official float32
 * code can land one iteration off where f_i is an exact integer.
 * A budget of 0 gives every step 0 iterations, whatever the schedule.
 * Returns 0, or -1 with a message (0 < budget < num_steps for increasing or
 * decreasing, a fixed budget that is not a multiple of num_steps, an unknown
 * schedule). */
int iteration_plan(fpdm_iteration_schedule schedule, int num_steps, int budget, int *iters_out,
                   char *err, size_t err_size);

#endif
