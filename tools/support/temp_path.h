/* temp_path.h - output files are written under a temporary name next to the
 * final one and renamed into place, so nobody ever sees half a file: a write
 * that fails (a full disk) or never ends leaves the final path as it was.
 * A symbolic link is followed (the file it names is replaced, not the link);
 * a path that is not a regular file (/dev/null, a FIFO) is written in place,
 * since a rename would replace the device itself; and one of the program's
 * own descriptors (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N) is
 * written through that descriptor, at its offset (a `>>` log keeps its
 * lines; a socket works). */
#ifndef FPDM_TEMP_PATH_H
#define FPDM_TEMP_PATH_H

#include <stddef.h>
#include <stdio.h>

/* "PATH.tmp.PID", malloc'd (free it), or NULL when memory ran out. */
char *temp_path_for(const char *path);

/* The descriptor path names when it is one of the program's own
 * (/dev/stdout 1, /dev/stderr 2, /dev/fd/N and /proc/self/fd/N N), else -1. */
int temp_path_descriptor(const char *path);

/* An output file being written under its temporary name. */
typedef struct temp_file {
    FILE *file;
    char *tmp_path;  /* NULL while writing a special file or a descriptor in place */
    char *target;    /* what the commit replaces: the path, or the file its links name;
                        NULL for a descriptor */
    int write_errno; /* errno of the first write that failed; 0 while none has */
} temp_file;

/* Creates path's temporary file into *t. Returns 0, or -1 with
 * "PATH: out of memory" or "PATH: cannot create TMP: ..." in err. */
int temp_file_create(temp_file *t, const char *path, char *err, size_t err_size);

/* fwrite into the file; returns whether every byte went, remembering the
 * first failure for temp_file_commit. */
int temp_file_write(temp_file *t, const void *bytes, size_t count);

/* Records a failure of a write made on t->file directly (error_number: its
 * errno; the first one counts). */
void temp_file_failed(temp_file *t, int error_number);

/* Closes the file and renames it over its target when no write and not the
 * close failed, else removes it (a special file or a descriptor is only
 * closed). Returns 0, or -1 with "PATH: write failed: ..." or "PATH: cannot
 * rename TMP: ..." in err. t is spent either way. */
int temp_file_commit(temp_file *t, const char *path, char *err, size_t err_size);

/* Closes and removes the temporary file; a t never created, or spent, is
 * left alone. */
void temp_file_discard(temp_file *t);

#endif
