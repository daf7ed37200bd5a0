/* float16.h - conversions between float32 and the two 16-bit formats the
 * library reads from files and stores for matrix products: bfloat16 and IEEE
 * half. Rounding to 16 bits is to nearest, ties to even; NaN stays NaN. */
#ifndef FPDM_FLOAT16_H
#define FPDM_FLOAT16_H

#include <stdint.h>

float bf16_to_f32(uint16_t h);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
/* Values of magnitude >= 65520 become infinity, as a cast would. */
uint16_t f32_to_f16(float f);

#endif
