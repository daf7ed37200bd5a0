/* safetensors_header.h - the start of a .safetensors file, for the programs
 * that write synthetic model and VAE files. */
#ifndef FPDM_SAFETENSORS_HEADER_H
#define FPDM_SAFETENSORS_HEADER_H

#include <stdio.h>

/* Writes the 8-byte little-endian header length and the JSON header, padded
 * with spaces to a multiple of 8 bytes so the data that follows starts
 * aligned (as the reference writer does). Returns 0, or -1 on a write error. */
int write_safetensors_header(FILE *f, const char *json_header);

#endif
