/* temp_path.c - see temp_path.h. */
#include "temp_path.h"
#include "support_error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *temp_path_for(const char *path) {
    size_t size = strlen(path) + 32;
    char *tmp = malloc(size);
    if (tmp) snprintf(tmp, size, "%s.tmp.%ld", path, (long)getpid());
    return tmp;
}

int temp_file_create(temp_file *t, const char *path, char *err, size_t err_size) {
    t->file = NULL;
    t->write_errno = 0;
    t->tmp_path = temp_path_for(path);
    if (!t->tmp_path) {
        support_set_error(err, err_size, "%s: out of memory", path);
        return -1;
    }
    t->file = fopen(t->tmp_path, "wb");
    if (!t->file) {
        support_set_error(err, err_size, "%s: cannot create %s: %s", path, t->tmp_path,
                          strerror(errno));
        free(t->tmp_path);
        t->tmp_path = NULL;
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
    } else if (rename(t->tmp_path, path) != 0) {
        support_set_error(err, err_size, "%s: cannot rename %s: %s", path, t->tmp_path,
                          strerror(errno));
        rc = -1;
    }
    if (rc != 0) remove(t->tmp_path);
    free(t->tmp_path);
    t->tmp_path = NULL;
    return rc;
}

void temp_file_discard(temp_file *t) {
    if (t->file) fclose(t->file);
    if (t->tmp_path) remove(t->tmp_path);
    free(t->tmp_path);
    t->file = NULL;
    t->tmp_path = NULL;
}
