/* temp_path.c - see temp_path.h. */
#include "temp_path.h"

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
