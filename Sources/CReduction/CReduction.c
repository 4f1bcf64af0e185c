/* Reduction kernels for the all-reduce: dst += src and scaling, for float32, binary16 and
   bfloat16. Each has a portable version, plain loops of branchless arithmetic that the compiler
   vectorises for the baseline instruction set, and on x86-64 an AVX2 version (F16C for binary16)
   chosen at run time when the CPU has it. */

#include "CReduction.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RM_HAVE_AVX2_PATH 1
#endif

/* ---- Portable conversions ---- */

static inline uint32_t bits_of(float value) {
    uint32_t bits;
    __builtin_memcpy(&bits, &value, 4);
    return bits;
}

static inline float float_of(uint32_t bits) {
    float value;
    __builtin_memcpy(&value, &bits, 4);
    return value;
}

static inline float half_to_float(uint16_t half) {
    uint32_t sign = (uint32_t)(half & 0x8000) << 16;
    /* Exponent and mantissa moved into float's place, the exponent rebiased from 15 to 127. */
    uint32_t shifted = (uint32_t)(half & 0x7FFF) << 13;
    uint32_t exponent = shifted & 0x0F800000u;
    /* Infinity and NaN keep an all-ones exponent: rebias twice. */
    uint32_t magnitude = shifted + (exponent == 0x0F800000u ? 0x70000000u : 0x38000000u);
    /* Zero and subnormals (m * 2^-24): read as 2^-14 * (1 + m/1024), then subtract 2^-14. */
    uint32_t subnormal = bits_of(float_of(magnitude + 0x00800000u) - 0x1p-14f);
    return float_of((exponent == 0 ? subnormal : magnitude) | sign);
}

static inline uint16_t float_to_half(float value) {
    uint32_t raw = bits_of(value);
    uint32_t sign = raw & 0x80000000u;
    /* Signed from here: the sign bit is clear, and signed compares vectorise everywhere. */
    int32_t magnitude = (int32_t)(raw ^ sign);
    /* Normal results: rebias the exponent (127 to 15) and round off the 13 low mantissa bits,
       ties to even, in one addition; a carry out of the mantissa correctly bumps the exponent. */
    int32_t normal = (int32_t)(((uint32_t)magnitude + 0xC8000FFFu + (((uint32_t)magnitude >> 13) & 1)) >> 13);
    /* Subnormal results (below 2^-14): adding 0.5 puts the value on binary16's 2^-24 grid and the
       float addition rounds it. */
    int32_t subnormal = (int32_t)(bits_of(float_of((uint32_t)magnitude) + 0.5f) - 0x3F000000u);
    int32_t result = magnitude < 0x38800000 ? subnormal : normal;
    /* From 2^16 up (past the largest binary16 even before rounding): infinity; NaN stays NaN. */
    int32_t special = magnitude > 0x7F800000 ? 0x7E00 : 0x7C00;
    result = magnitude >= 0x47800000 ? special : result;
    return (uint16_t)((uint32_t)result | (sign >> 16));
}

static inline float bfloat16_to_float(uint16_t bits) {
    return float_of((uint32_t)bits << 16);
}

static inline uint16_t float_to_bfloat16(float value) {
    uint32_t raw = bits_of(value);
    uint32_t rounded = raw + 0x7FFFu + ((raw >> 16) & 1);
    /* A NaN stays a NaN (rounding could carry its payload into infinity). */
    rounded = value != value ? (raw | 0x00400000u) : rounded;
    return (uint16_t)(rounded >> 16);
}

float rm_half_to_float(uint16_t bits) { return half_to_float(bits); }
uint16_t rm_float_to_half(float value) { return float_to_half(value); }
float rm_bfloat16_to_float(uint16_t bits) { return bfloat16_to_float(bits); }
uint16_t rm_float_to_bfloat16(float value) { return float_to_bfloat16(value); }

/* ---- Portable kernels ---- */

static void add_f32(const float *src, float *dst, size_t count) {
    for (size_t i = 0; i < count; i++) dst[i] += src[i];
}

#if defined(__aarch64__)
/* arm64 converts binary16 in hardware (FCVT, and FCVTL/FCVTN once vectorised), rounding to
   nearest even: the same results as the bit arithmetic below. */
static inline float half_load(const uint16_t *p) {
    __fp16 half;
    __builtin_memcpy(&half, p, 2);
    return (float)half;
}

static inline void half_store(uint16_t *p, float value) {
    __fp16 half = (__fp16)value;
    __builtin_memcpy(p, &half, 2);
}

static void add_f16(const uint16_t *src, uint16_t *dst, size_t count) {
    for (size_t i = 0; i < count; i++) half_store(dst + i, half_load(dst + i) + half_load(src + i));
}
#else
static void add_f16(const uint16_t *src, uint16_t *dst, size_t count) {
    for (size_t i = 0; i < count; i++) dst[i] = float_to_half(half_to_float(dst[i]) + half_to_float(src[i]));
}
#endif

static void add_bf16(const uint16_t *src, uint16_t *dst, size_t count) {
    for (size_t i = 0; i < count; i++) dst[i] = float_to_bfloat16(bfloat16_to_float(dst[i]) + bfloat16_to_float(src[i]));
}

static void scale_f32(float *buf, size_t count, float factor) {
    for (size_t i = 0; i < count; i++) buf[i] *= factor;
}

static void scale_f16(uint16_t *buf, size_t count, float factor) {
#if defined(__aarch64__)
    for (size_t i = 0; i < count; i++) half_store(buf + i, half_load(buf + i) * factor);
#else
    for (size_t i = 0; i < count; i++) buf[i] = float_to_half(half_to_float(buf[i]) * factor);
#endif
}

static void scale_bf16(uint16_t *buf, size_t count, float factor) {
    for (size_t i = 0; i < count; i++) buf[i] = float_to_bfloat16(bfloat16_to_float(buf[i]) * factor);
}

/* dst[i] = sources[0][i] + sources[1][i] + ..., added in that order, in one pass: a block of the
   sum is built in a small buffer that stays in the cache, then stored once. */
#define RM_SUM_BLOCK 64
static void sum_f32(const float *const *sources, int n, float *dst, size_t count) {
    float block[RM_SUM_BLOCK];
    for (size_t i = 0; i < count; i += RM_SUM_BLOCK) {
        size_t m = count - i < RM_SUM_BLOCK ? count - i : RM_SUM_BLOCK;
        for (size_t j = 0; j < m; j++) block[j] = sources[0][i + j];
        for (int k = 1; k < n; k++) {
            const float *src = sources[k] + i;
            for (size_t j = 0; j < m; j++) block[j] += src[j];
        }
        for (size_t j = 0; j < m; j++) dst[i + j] = block[j];
    }
}

/* ---- AVX2 kernels (8 lanes; the tails go through the portable versions) ---- */

#if RM_HAVE_AVX2_PATH
#define RM_AVX2 __attribute__((target("avx2,f16c")))

RM_AVX2 static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

RM_AVX2 static inline void store_f16(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* bfloat16 on AVX2: 16 values in one register; as 32-bit lanes, the even-numbered values are the
   low halves and the odd-numbered ones the high halves. Each half widens to a float in place
   (shift up, or mask), so no shuffles are needed either way. */
RM_AVX2 static inline __m256 bf16_even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
RM_AVX2 static inline __m256 bf16_odd(__m256i v) { return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u))); }

/* Float lanes rounded to bfloat16 in their top halves (low halves are garbage). */
RM_AVX2 static inline __m256i bf16_round(__m256 v) {
    __m256i raw = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(raw, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(raw, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(rounded, _mm256_or_si256(raw, _mm256_set1_epi32(0x00400000)), nan);
}

/* The even and odd results put back into one register of 16 bfloat16 values. */
RM_AVX2 static inline __m256i bf16_join(__m256 even, __m256 odd) {
    return _mm256_or_si256(
        _mm256_srli_epi32(bf16_round(even), 16), _mm256_and_si256(bf16_round(odd), _mm256_set1_epi32((int)0xFFFF0000u))
    );
}

RM_AVX2 static void add_f32_avx2(const float *src, float *dst, size_t count) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256 a = _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_loadu_ps(src + i));
        __m256 b = _mm256_add_ps(_mm256_loadu_ps(dst + i + 8), _mm256_loadu_ps(src + i + 8));
        _mm256_storeu_ps(dst + i, a);
        _mm256_storeu_ps(dst + i + 8, b);
    }
    add_f32(src + i, dst + i, count - i);
}

RM_AVX2 static void sum_f32_avx2(const float *const *sources, int n, float *dst, size_t count) {
    size_t i = 0;
    for (; i + 32 <= count; i += 32) {
        const float *first = sources[0] + i;
        __m256 a = _mm256_loadu_ps(first), b = _mm256_loadu_ps(first + 8);
        __m256 c = _mm256_loadu_ps(first + 16), d = _mm256_loadu_ps(first + 24);
        for (int k = 1; k < n; k++) {
            const float *src = sources[k] + i;
            a = _mm256_add_ps(a, _mm256_loadu_ps(src));
            b = _mm256_add_ps(b, _mm256_loadu_ps(src + 8));
            c = _mm256_add_ps(c, _mm256_loadu_ps(src + 16));
            d = _mm256_add_ps(d, _mm256_loadu_ps(src + 24));
        }
        _mm256_storeu_ps(dst + i, a);
        _mm256_storeu_ps(dst + i + 8, b);
        _mm256_storeu_ps(dst + i + 16, c);
        _mm256_storeu_ps(dst + i + 24, d);
    }
    if (i < count) {
        const float *tails[RM_SUM_MAX_SOURCES];
        for (int k = 0; k < n; k++) tails[k] = sources[k] + i;
        sum_f32(tails, n, dst + i, count - i);
    }
}

RM_AVX2 static void add_f16_avx2(const uint16_t *src, uint16_t *dst, size_t count) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) store_f16(dst + i, _mm256_add_ps(load_f16(dst + i), load_f16(src + i)));
    add_f16(src + i, dst + i, count - i);
}

RM_AVX2 static void add_bf16_avx2(const uint16_t *src, uint16_t *dst, size_t count) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(dst + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256 even = _mm256_add_ps(bf16_even(a), bf16_even(b));
        __m256 odd = _mm256_add_ps(bf16_odd(a), bf16_odd(b));
        _mm256_storeu_si256((__m256i *)(dst + i), bf16_join(even, odd));
    }
    add_bf16(src + i, dst + i, count - i);
}

RM_AVX2 static void scale_f32_avx2(float *buf, size_t count, float factor) {
    __m256 lanes = _mm256_set1_ps(factor);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(buf + i, _mm256_mul_ps(_mm256_loadu_ps(buf + i), lanes));
    scale_f32(buf + i, count - i, factor);
}

RM_AVX2 static void scale_f16_avx2(uint16_t *buf, size_t count, float factor) {
    __m256 lanes = _mm256_set1_ps(factor);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) store_f16(buf + i, _mm256_mul_ps(load_f16(buf + i), lanes));
    scale_f16(buf + i, count - i, factor);
}

RM_AVX2 static void scale_bf16_avx2(uint16_t *buf, size_t count, float factor) {
    __m256 lanes = _mm256_set1_ps(factor);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(buf + i));
        _mm256_storeu_si256((__m256i *)(buf + i), bf16_join(_mm256_mul_ps(bf16_even(v), lanes), _mm256_mul_ps(bf16_odd(v), lanes)));
    }
    scale_bf16(buf + i, count - i, factor);
}
#endif

/* ---- Dispatch ---- */

/* Asked once by Swift (a lazily made constant); nothing is cached here, so nothing is shared. */
int rm_kernels_best(void) {
#if RM_HAVE_AVX2_PATH
    __builtin_cpu_init();
    return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) ? RM_KERNELS_AVX2 : RM_KERNELS_PORTABLE;
#else
    return RM_KERNELS_PORTABLE;
#endif
}

void rm_add(int type, int level, const void *src, void *dst, size_t count) {
#if RM_HAVE_AVX2_PATH
    if (level == RM_KERNELS_AVX2) {
        switch (type) {
        case RM_FLOAT32: add_f32_avx2(src, dst, count); return;
        case RM_FLOAT16: add_f16_avx2(src, dst, count); return;
        case RM_BFLOAT16: add_bf16_avx2(src, dst, count); return;
        }
        return;
    }
#endif
    (void)level;
    switch (type) {
    case RM_FLOAT32: add_f32(src, dst, count); return;
    case RM_FLOAT16: add_f16(src, dst, count); return;
    case RM_BFLOAT16: add_bf16(src, dst, count); return;
    }
}

void rm_scale(int type, int level, void *buf, size_t count, float factor) {
#if RM_HAVE_AVX2_PATH
    if (level == RM_KERNELS_AVX2) {
        switch (type) {
        case RM_FLOAT32: scale_f32_avx2(buf, count, factor); return;
        case RM_FLOAT16: scale_f16_avx2(buf, count, factor); return;
        case RM_BFLOAT16: scale_bf16_avx2(buf, count, factor); return;
        }
        return;
    }
#endif
    (void)level;
    switch (type) {
    case RM_FLOAT32: scale_f32(buf, count, factor); return;
    case RM_FLOAT16: scale_f16(buf, count, factor); return;
    case RM_BFLOAT16: scale_bf16(buf, count, factor); return;
    }
}

void rm_sum_f32(int level, const float *const *sources, int n, float *dst, size_t count) {
    if (n < 1) return;
    if (n > RM_SUM_MAX_SOURCES) n = RM_SUM_MAX_SOURCES;
#if RM_HAVE_AVX2_PATH
    if (level == RM_KERNELS_AVX2) {
        sum_f32_avx2(sources, n, dst, count);
        return;
    }
#endif
    (void)level;
    sum_f32(sources, n, dst, count);
}
