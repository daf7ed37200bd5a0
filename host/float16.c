/* float16.c - see float16.h. */
#include "float16.h"

#include <math.h>
#include <string.h>

static uint32_t bits_of(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    return bits;
}

static float float_of(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

float bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    if (exponent == 0x1f) return float_of(sign | 0x7f800000u | (mantissa << 13)); /* inf, nan */
    if (exponent != 0) return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
    /* zero or subnormal: mantissa * 2^-24 is exact in float */
    float magnitude = (float)mantissa * 0x1p-24f;
    return sign ? -magnitude : magnitude;
}

uint16_t f32_to_bf16(float f) {
    uint32_t bits = bits_of(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

uint16_t f32_to_f16(float f) {
    uint32_t bits = bits_of(f);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7e00; /* NaN */
    if (magnitude >= 0x477ff000u) return sign | 0x7c00; /* >= 65520 rounds to infinity */
    if (magnitude < 0x38800000u) {
        /* Below 2^-14: a subnormal half, mantissa = round(|f| * 2^24) (exact
         * scaling; lrintf rounds ties to even). 1024 is the smallest normal. */
        return sign | (uint16_t)lrintf(float_of(magnitude) * 0x1p24f);
    }
    /* Rebias the exponent (127 -> 15) and round the 13 dropped bits to even. */
    uint32_t rounded = magnitude - (112u << 23) + 0xfffu + ((magnitude >> 13) & 1);
    return sign | (uint16_t)(rounded >> 13);
}
