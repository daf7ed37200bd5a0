/* decimal.c - see decimal.h. digits / 10^k = digits / 5^k * 2^-k: the
 * division by 5^k runs bit by bit in integers and is rounded once, to
 * nearest-even; the power of two is exact. (One division of doubles rounds
 * correctly only while the digits stay below 2^53, about 15 of them.) */
#include "decimal.h"

#include <math.h>
#include <stdint.h>

int decimal_parse(const char *text, double *out) {
    uint64_t digits = 0;
    int num_digits = 0, significant_digits = 0, fraction_digits = 0, seen_point = 0;
    for (const char *p = text; *p; p++) {
        if (*p == '.' && !seen_point) {
            seen_point = 1;
        } else if (*p >= '0' && *p <= '9') {
            num_digits++;
            if ((digits || *p != '0') && ++significant_digits > DECIMAL_MAX_SIGNIFICANT_DIGITS)
                return 0;
            if ((fraction_digits += seen_point) > DECIMAL_MAX_FRACTION_DIGITS) return 0;
            digits = digits * 10 + (uint64_t)(*p - '0');
        } else {
            return 0;
        }
    }
    if (num_digits == 0) return 0;
    if (digits == 0) {
        *out = 0;
        return 1;
    }
    uint64_t divisor = 1;
    for (int i = 0; i < fraction_digits; i++) divisor *= 5;
    /* digits / divisor = (quotient + remainder / divisor) * 2^exponent, with
     * quotient brought to 54 bits: a double's 53 and one to round on. */
    uint64_t quotient = digits / divisor, remainder = digits % divisor;
    int exponent = -fraction_digits;
    while (quotient < UINT64_C(1) << 53) {
        remainder *= 2;
        quotient = quotient * 2 + (remainder >= divisor);
        if (remainder >= divisor) remainder -= divisor;
        exponent--;
    }
    int sticky = remainder != 0;
    while (quotient >= UINT64_C(1) << 54) {
        sticky |= (int)(quotient & 1);
        quotient >>= 1;
        exponent++;
    }
    uint64_t mantissa = quotient >> 1;
    if ((quotient & 1) && (sticky || (mantissa & 1))) mantissa++;
    *out = ldexp((double)mantissa, exponent + 1);
    return 1;
}

