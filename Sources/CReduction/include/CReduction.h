#ifndef RINGMASTER_CREDUCTION_H
#define RINGMASTER_CREDUCTION_H

#include <stddef.h>
#include <stdint.h>

/* Element types, as Collectives.DataType numbers them. */
enum {
    RM_FLOAT32 = 0,
    RM_FLOAT16 = 1,
    RM_BFLOAT16 = 2,
};

/* Kernel levels: portable C (what the compiler vectorises for the baseline x86-64 or arm64), and
   AVX2 with F16C (hardware binary16 conversions). */
enum {
    RM_KERNELS_PORTABLE = 0,
    RM_KERNELS_AVX2 = 1,
};

/* The best level this CPU runs. */
int rm_kernels_best(void);

/* dst[i] += src[i] for count elements of type; half types are widened to float, added, and
   rounded back once (to nearest, ties to even). src and dst may be the same buffer but must not
   otherwise overlap. level must be at most rm_kernels_best(). */
void rm_add(int type, int level, const void *src, void *dst, size_t count);

/* The most sources rm_sum_f32 adds. */
#define RM_SUM_MAX_SOURCES 64

/* dst[i] = sources[0][i] + sources[1][i] + ... + sources[n - 1][i] for count float32 elements,
   added in that order (the same rounding wherever n and the order are the same), in one pass over
   the memory. dst must not overlap a source. 1 <= n <= RM_SUM_MAX_SOURCES. */
void rm_sum_f32(int level, const float *const *sources, int n, float *dst, size_t count);

/* buf[i] *= factor, rounded back once for half types. */
void rm_scale(int type, int level, void *buf, size_t count, float factor);

/* The portable binary16 and bfloat16 conversions (exact; rounding to nearest, ties to even; NaN
   stays NaN, quiet). */
float rm_half_to_float(uint16_t bits);
uint16_t rm_float_to_half(float value);
float rm_bfloat16_to_float(uint16_t bits);
uint16_t rm_float_to_bfloat16(float value);

#endif
