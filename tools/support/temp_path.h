/* temp_path.h - output files are written under a temporary name next to the
 * final one and renamed into place, so nobody ever sees half a file. */
#ifndef FPDM_TEMP_PATH_H
#define FPDM_TEMP_PATH_H

/* "PATH.tmp.PID", malloc'd (free it), or NULL when memory ran out. */
char *temp_path_for(const char *path);

#endif
