/* progress.c - progress display on stderr (see progress.h). */
#define _POSIX_C_SOURCE 200809L
#include "progress.h"

#include <time.h>
#include <unistd.h>

double progress_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

void progress_start(progress *p, FILE *stream, int quiet, long long total_units, int num_images)
{
    p->stream = stream;
    p->is_tty = isatty(fileno(stream));
    p->quiet = quiet;
    p->total_units = total_units > 0 ? total_units : 1;
    p->num_images = num_images;
    p->start_seconds = progress_now();
    p->last_decile = 0;
    p->bar_drawn = 0;
}

static void format_duration(double seconds, char *out, size_t size)
{
    long total = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (total >= 3600)
        snprintf(out, size, "%ld:%02ld:%02ld", total / 3600, total / 60 % 60, total % 60);
    else
        snprintf(out, size, "%02ld:%02ld", total / 60, total % 60);
}

void progress_update(progress *p, long long units_done, int images_done, const char *label)
{
    if (p->quiet)
        return;
    double elapsed = progress_now() - p->start_seconds;
    double fraction = (double)units_done / (double)p->total_units;
    double rate = elapsed > 0 ? (double)units_done / elapsed : 0;
    char eta[32];
    format_duration(rate > 0 ? (double)(p->total_units - units_done) / rate : 0, eta, sizeof eta);
    if (p->is_tty) {
        enum { BAR_WIDTH = 24 };
        char bar[BAR_WIDTH + 1];
        int filled = (int)(fraction * BAR_WIDTH);
        for (int i = 0; i < BAR_WIDTH; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[BAR_WIDTH] = '\0';
        fprintf(p->stream, "\r[%s] %3.0f%% %s, images %d/%d, %.2f steps/s, ETA %s  ", bar,
                100.0 * fraction, label, images_done, p->num_images, rate, eta);
        p->bar_drawn = 1;
    } else {
        int decile = (int)(fraction * 10.0);
        if (decile <= p->last_decile)
            return;
        p->last_decile = decile;
        fprintf(p->stream, "%3.0f%% %s, images %d/%d, %.2f steps/s, ETA %s\n", 100.0 * fraction,
                label, images_done, p->num_images, rate, eta);
    }
    fflush(p->stream);
}

void progress_end(progress *p)
{
    if (p->bar_drawn) {
        fputc('\n', p->stream);
        p->bar_drawn = 0;
    }
}
