/* progress.h - progress display on stderr for long runs: one bar redrawn
 * with '\r' when the stream is a terminal, plain lines about every 10%
 * otherwise (logs, CI), nothing when quiet. */
#ifndef FPDM_PROGRESS_H
#define FPDM_PROGRESS_H

#include <stdio.h>

typedef struct progress {
    FILE *stream;
    int is_tty;
    int quiet;
    long long total_units;    /* e.g. sampling steps over all batches */
    int num_images;
    double start_seconds;
    int last_decile;          /* for plain lines: the last 10% mark printed */
    int bar_drawn;            /* a '\r' bar is on screen and needs a newline */
} progress;

/* Seconds from a monotonic clock. */
double progress_now(void);

void progress_start(progress *p, FILE *stream, int quiet, long long total_units, int num_images);

/* Shows units_done of total_units, images_done of num_images, and the label
 * (e.g. "step 12/20"). */
void progress_update(progress *p, long long units_done, int images_done, const char *label);

/* Ends the bar's line, if one is drawn, so later messages start clean. */
void progress_end(progress *p);

#endif
