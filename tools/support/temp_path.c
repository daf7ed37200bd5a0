/* temp_path.c - see temp_path.h. */
#define _XOPEN_SOURCE 700 /* realpath, strdup */
#include "temp_path.h"
#include "support_error.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *temp_path_for(const char *path) {
    size_t size = strlen(path) + 32;
    char *tmp = malloc(size);
    if (tmp) snprintf(tmp, size, "%s.tmp.%ld", path, (long)getpid());
    return tmp;
}

int temp_path_descriptor(const char *path) {
    if (strcmp(path, "/dev/stdout") == 0) return 1;
    if (strcmp(path, "/dev/stderr") == 0) return 2;
    const char *digits = strncmp(path, "/dev/fd/", 8) == 0          ? path + 8
                         : strncmp(path, "/proc/self/fd/", 14) == 0 ? path + 14
                                                                    : NULL;
    if (!digits || !*digits || strlen(digits) > 9) return -1;
    int fd = 0;
    for (; *digits; digits++) {
        if (*digits < '0' || *digits > '9') return -1;
        fd = 10 * fd + (*digits - '0');
    }
    return fd;
}

/* What path's bytes replace (malloc'd): the file its links name, as far as
 * they go (a dangling link's target is created, not the link replaced), or
 * path itself. */
static char *replaced_file(const char *path) {
    char resolved[PATH_MAX], link[PATH_MAX];
    if (realpath(path, resolved)) return strdup(resolved);
    ssize_t length = readlink(path, link, sizeof link - 1);
    if (length <= 0) return strdup(path);
    link[length] = '\0';
    const char *slash = strrchr(path, '/');
    if (link[0] == '/' || !slash) return strdup(link);
    size_t size = (size_t)(slash - path) + 1 + (size_t)length + 1;
    char *joined = malloc(size);
    if (joined) snprintf(joined, size, "%.*s%s", (int)(slash - path) + 1, path, link);
    return joined;
}

int temp_file_create(temp_file *t, const char *path, char *err, size_t err_size) {
    t->file = NULL;
    t->tmp_path = NULL;
    t->target = NULL;
    t->write_errno = 0;
    /* The program's own descriptors (/dev/stdout and the like) are written
     * where they stand: reopening one truncates a `>>` log, loses what a
     * shell group wrote before, and fails for a socket. */
    const int descriptor = temp_path_descriptor(path);
    if (descriptor >= 0) {
        int copy = dup(descriptor);
        t->file = copy >= 0 ? fdopen(copy, "wb") : NULL;
        if (!t->file) {
            support_set_error(err, err_size, "%s: cannot write: %s", path, strerror(errno));
            if (copy >= 0) close(copy);
            return -1;
        }
        return 0;
    }
    t->target = replaced_file(path);
    struct stat st;
    const int special = t->target && stat(t->target, &st) == 0 && !S_ISREG(st.st_mode);
    if (t->target && !special) t->tmp_path = temp_path_for(t->target);
    if (!t->target || (!special && !t->tmp_path)) {
        support_set_error(err, err_size, "%s: out of memory", path);
        temp_file_discard(t);
        return -1;
    }
    t->file = fopen(special ? t->target : t->tmp_path, "wb");
    if (!t->file) {
        support_set_error(err, err_size, "%s: cannot create %s: %s", path,
                          special ? t->target : t->tmp_path, strerror(errno));
        temp_file_discard(t);
        return -1;
    }
    return 0;
}

void temp_file_failed(temp_file *t, int error_number) {
    if (!t->write_errno) t->write_errno = error_number ? error_number : EIO;
}

int temp_file_write(temp_file *t, const void *bytes, size_t count) {
    if (fwrite(bytes, 1, count, t->file) == count) return 1;
    temp_file_failed(t, errno);
    return 0;
}

int temp_file_commit(temp_file *t, const char *path, char *err, size_t err_size) {
    if (fclose(t->file) != 0) temp_file_failed(t, errno);
    t->file = NULL;
    int rc = 0;
    if (t->write_errno) {
        support_set_error(err, err_size, "%s: write failed: %s", path, strerror(t->write_errno));
        rc = -1;
    } else if (t->tmp_path && rename(t->tmp_path, t->target) != 0) {
        support_set_error(err, err_size, "%s: cannot rename %s: %s", path, t->tmp_path,
                          strerror(errno));
        rc = -1;
    }
    if (rc != 0 && t->tmp_path) remove(t->tmp_path);
    free(t->tmp_path);
    free(t->target);
    t->tmp_path = NULL;
    t->target = NULL;
    return rc;
}

void temp_file_discard(temp_file *t) {
    if (t->file) fclose(t->file);
    if (t->tmp_path) remove(t->tmp_path);
    free(t->tmp_path);
    free(t->target);
    t->file = NULL;
    t->tmp_path = NULL;
    t->target = NULL;
}
