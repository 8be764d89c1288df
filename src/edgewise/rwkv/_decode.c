/* One RWKV-7 decode step (one token, every layer) in a single call: the fused path of
 * edgewise.rwkv.runtime; and the C parts of a prefill (the WKV recurrence, the int8-activation
 * GEMM, dequantization). Built at install by setup.py, once per instruction set; the torch path
 * is the fallback and the oracle (tests compare the two).
 *
 * Decode streams every weight once per token, so it is bound by memory bandwidth, not
 * arithmetic. The torch path spends more time dispatching ~80 small ops per layer than
 * reading weights; here one OpenMP team runs the whole token: matrix-vector products split
 * by rows across threads, the small element-wise work between them on one thread.
 *
 * Matrices are [rows, cols] = [out, in], y = W x:
 *   F32   float
 *   BF16  uint16 (bf16 bits)                          LoRA matrices of quantized models
 *   INT8  int8, w = q * scale[row]                    symmetric per output channel
 *   INT4  uint8 [rows, cols / 2], w = (q - 8) * scale[row, group of 64 inputs], q in 0..15;
 *         byte j of a group holds input j (low nibble) and input j + 32 (high nibble)
 * Activations and state are fp32, except that int4 matrices multiply int8 activations
 * (symmetric, one scale per group of 64: llama.cpp's Q4 x Q8) on every SIMD path, and int8
 * matrices too on x86 (Q8 x Q8): converting weights to floats made decode bound by arithmetic,
 * not memory.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
/* Which kernels: fixed by the flags this file is compiled with (setup.py builds one library per
 * instruction set; native.py loads the best the CPU runs). */
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(EW_SCALAR)
#include <immintrin.h>
#define EW_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && !defined(EW_SCALAR)
#include <immintrin.h>
#define EW_AVX2 1
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD) && !defined(EW_SCALAR)
#include <arm_neon.h>
#define EW_NEON 1
#elif defined(__SSSE3__) && defined(__x86_64__) && !defined(EW_SCALAR)
#include <tmmintrin.h>
#define EW_SSSE3 1   /* the portable x86-64 build: x86-64-v2, every x86-64 CPU since 2009-2011 */
#endif

enum { F32 = 0, BF16 = 1, INT8 = 2, INT4 = 3 };
enum { NONE = 0, TANH = 1, SIGMOID = 2, RELU_SQUARED = 3 };

static int amx_on;   /* batches of int8 rows take AMX tiles: set by ew_use_amx, read by the kernels */
#define GROUP 64
/* The int8, int4 and bf16 kernels prefetch this far ahead in the weight stream: the hardware prefetcher
 * alone leaves int8/int4 decode short of the bandwidth (measured 7-14% faster at 4-16 KB). */
#define PREFETCH 8192

/* The structs Python fills (native.py mirrors them with ctypes); `ew_layout` reports their sizes
 * and offsets so that a mismatch is caught at load, not by a version number. Every buffer comes
 * with its size, and `check_model` checks every one against the model's dimensions before a
 * kernel runs: neither a bad file nor a caller's bug can make this code read or write past a
 * buffer. */
typedef struct {
    int32_t kind, rows, cols, unused;
    const void *data;
    const float *scale;
    int64_t data_bytes, scale_count;
} ew_matrix;

typedef struct {
    const float *data;
    int64_t size;
} ew_vector;

/* The fields of a layer, in order: each list is expanded into the struct, its layout and its checks. */
#define EW_VECTORS(X) X(ln1_w) X(ln1_b) X(ln2_w) X(ln2_b) X(mix) X(w0) X(a0) X(v0) X(k_k) X(k_a) X(r_k) \
                      X(lnx_w) X(lnx_b) X(ffn_xk)
#define EW_LORAS(X) X(w1) X(w2) X(a1) X(a2) X(v1) X(v2) X(g1) X(g2)   /* [out, in]; v1.rows == 0 in layer 0 */
#define EW_MATRICES(X) X(r) X(k) X(v) X(o) X(fk) X(fv)

typedef struct {
#define EW_VECTOR_FIELD(name) ew_vector name;   /* [C], except mix: [6, C] = x_r x_w x_k x_v x_a x_g */
#define EW_MATRIX_FIELD(name) ew_matrix name;
    EW_VECTORS(EW_VECTOR_FIELD)
    EW_LORAS(EW_MATRIX_FIELD)
    EW_MATRICES(EW_MATRIX_FIELD)
} ew_layer;

typedef struct {
    int32_t layers, width, heads, head_size, ffn, vocab;
    const ew_layer *layer;
    ew_matrix emb;                           /* [vocab, C], F32 or INT8: one row looked up */
    ew_vector ln_out_w, ln_out_b;
    ew_matrix head;
} ew_model;

typedef struct {  /* a recurrent state: att [L, C], ffn [L, C], S [L, H, N, N] */
    float *att, *ffn, *S;
    int64_t att_size, ffn_size, S_size;
} ew_state;

/* -- dot products: one output of a matrix-vector product ------------------------------- */

#if defined(__AVX2__) && !defined(EW_SCALAR)
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

static inline float bf16_to_f32(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#ifdef EW_AVX512
static float dot_f32(const float *w, const float *x, int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

static inline __m512 bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {  /* four chains: one would wait on the FMA latency */
        _mm_prefetch((const char *)(w + i) + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + i + 32) + PREFETCH, _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(bf16x16(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(bf16x16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(bf16x16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(bf16x16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(bf16x16(w + i), _mm512_loadu_ps(x + i), a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}

static inline __m512 i8x16(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static float dot_int8(const int8_t *w, const float *x, int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        _mm_prefetch((const char *)(w + i) + PREFETCH, _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(i8x16(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(i8x16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(i8x16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(i8x16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

#elif defined(EW_AVX2)

static float dot_f32(const float *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {  /* four chains: one would wait on the FMA latency */
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

static inline __m256 bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm_prefetch((const char *)(w + i) + PREFETCH, _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(bf16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(bf16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}

static inline __m256 i8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static float dot_int8(const int8_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm_prefetch((const char *)(w + i) + PREFETCH, _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(i8x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(i8x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(i8x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(i8x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

#elif defined(EW_NEON)
static float dot_f32(const float *w, const float *x, int n) {
    float32x4_t a0 = vdupq_n_f32(0.f), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
        a2 = vfmaq_f32(a2, vld1q_f32(w + i + 8), vld1q_f32(x + i + 8));
        a3 = vfmaq_f32(a3, vld1q_f32(w + i + 12), vld1q_f32(x + i + 12));
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    float32x4_t a0 = vdupq_n_f32(0.f), a1 = a0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        uint16x8_t v = vld1q_u16(w + i);
        a0 = vfmaq_f32(a0, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)), vld1q_f32(x + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}

static float dot_int8(const int8_t *w, const float *x, int n) {
    float32x4_t a0 = vdupq_n_f32(0.f), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        int8x16_t v = vld1q_s8(w + i);
        int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
        a0 = vfmaq_f32(a0, vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vcvtq_f32_s32(vmovl_high_s16(lo)), vld1q_f32(x + i + 4));
        a2 = vfmaq_f32(a2, vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), vld1q_f32(x + i + 8));
        a3 = vfmaq_f32(a3, vcvtq_f32_s32(vmovl_high_s16(hi)), vld1q_f32(x + i + 12));
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

#else  /* portable: the compiler vectorises what it can */
#ifdef EW_SSSE3
static inline float hsum128(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

/* Four chains, as on AVX2: one, as `omp simd` compiles the loop below, waits on the add latency. A
 * bf16 becomes an fp32 by moving up 16 bits (interleaved with zeros). */
static inline __m128 dot4_f32(__m128 acc, __m128 w, const float *x) { return _mm_add_ps(acc, _mm_mul_ps(w, _mm_loadu_ps(x))); }

static float dot_f32(const float *w, const float *x, int n) {
    __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = dot4_f32(a0, _mm_loadu_ps(w + i), x + i), a1 = dot4_f32(a1, _mm_loadu_ps(w + i + 4), x + i + 4);
        a2 = dot4_f32(a2, _mm_loadu_ps(w + i + 8), x + i + 8), a3 = dot4_f32(a3, _mm_loadu_ps(w + i + 12), x + i + 12);
    }
    float s = hsum128(_mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    const __m128i zero = _mm_setzero_si128();
    __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm_prefetch((const char *)(w + i) + PREFETCH, _MM_HINT_T0);
        __m128i v0 = _mm_loadu_si128((const __m128i *)(w + i)), v1 = _mm_loadu_si128((const __m128i *)(w + i + 8));
        a0 = dot4_f32(a0, _mm_castsi128_ps(_mm_unpacklo_epi16(zero, v0)), x + i);
        a1 = dot4_f32(a1, _mm_castsi128_ps(_mm_unpackhi_epi16(zero, v0)), x + i + 4);
        a2 = dot4_f32(a2, _mm_castsi128_ps(_mm_unpacklo_epi16(zero, v1)), x + i + 8);
        a3 = dot4_f32(a3, _mm_castsi128_ps(_mm_unpackhi_epi16(zero, v1)), x + i + 12);
    }
    float s = hsum128(_mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3)));
    for (; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}
#else
static float dot_f32(const float *w, const float *x, int n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}
#endif

static float dot_int8(const int8_t *w, const float *x, int n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += (float)w[i] * x[i];
    return s;
}

#endif

/* q of input j (0..63) of a group */
static inline int nibble(const uint8_t *group, int j) { return j < 32 ? group[j] & 15 : group[j - 32] >> 4; }

static float dot_int4(const uint8_t *w, const float *scale, const float *x, int n) {
    float total = 0.f;
    for (int g = 0; g < n / GROUP; g++) {
        const uint8_t *b = w + g * GROUP / 2;
        const float *xg = x + g * GROUP;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < GROUP / 2; j++)
            s += (float)((b[j] & 15) - 8) * xg[j] + (float)((b[j] >> 4) - 8) * xg[j + GROUP / 2];
        total += s * scale[g];
    }
    return total;
}

/* n groups of 64 consecutive inputs -> int8 with one scale, symmetric: q (group k at q + k x stride),
 * the scale (largest / 127) and the sum of q (for the offsets of unsigned operands) */
static inline void quantize_groups(const float *x, int n, int8_t *q, int64_t stride, float *scale, int32_t *sum) {
    float largest = 0.f;
#pragma omp simd reduction(max : largest)
    for (int j = 0; j < n * GROUP; j++) largest = fabsf(x[j]) > largest ? fabsf(x[j]) : largest;
    float inverse = largest > 0.f ? 127.f / largest : 0.f;
    int total = 0;
    for (int k = 0; k < n; k++) {
        const float *xg = x + k * GROUP;
        int8_t *qg = q + k * stride;
#pragma omp simd reduction(+ : total)
        for (int j = 0; j < GROUP; j++) {
            float v = xg[j] * inverse;
            v = v > -127.f ? v : -127.f;   /* NaN too: converting it to an int is undefined */
            v = v < 127.f ? v : 127.f;
            int qj = (int)nearbyintf(v);   /* to nearest even, as the AVX-512 path */
            qg[j] = (int8_t)qj;
            total += qj;
        }
    }
    *scale = largest / 127.f;
    *sum = total;
}

static inline void quantize_group(const float *xg, int8_t *q, float *scale, int32_t *sum) {
    quantize_groups(xg, 1, q, 0, scale, sum);
}

/* int4 matrices multiply int8 activations, quantized per group of 64 like the weights
 * (llama.cpp's Q4 x Q8), where the CPU has an integer dot product: AVX512-VNNI, AVX2's and
 * SSSE3's maddubs, NEON's sdot; on x86, int8 matrices do too (Q8 x Q8). Converting weights to
 * floats made decode bound by arithmetic, not memory: int8 decode read 70% of the bandwidth an
 * int4 one did (Xeon, AVX-512). */
#if (defined(EW_AVX512) && defined(__AVX512VNNI__)) || defined(EW_AVX2) || defined(EW_NEON) || defined(EW_SSSE3)
#define EW_INT4_Q8 1
#endif
#if defined(EW_AVX2) || defined(EW_SSSE3) || (defined(EW_AVX512) && defined(__AVX512VNNI__))
#define EW_INT8_Q8 1
#endif

/* The int8 inputs of a product, per group of 64: q, and per group its scale and its sum of q (the
 * offset of unsigned weights: int4's -8, VNNI int8's +128). */
typedef struct { int8_t *q; int32_t *sum; float *scale; } q8_inputs;

#ifdef EW_INT4_Q8
static void prepare_q8(const float *x, int n, q8_inputs in) {
    for (int g = 0; g < n / GROUP; g++) quantize_group(x + g * GROUP, in.q + g * GROUP, in.scale + g, in.sum + g);
}
#endif

#if defined(EW_AVX2) || (defined(EW_AVX512) && defined(__AVX512VNNI__))
/* R (2 or 1) consecutive int4 rows in 256-bit vectors, a group of each in turn, the inputs as
 * prepare_q8 lays them out: every activation load, offset and scale broadcast serves both rows. The
 * -8 offset comes off in the integers (the group's sum of q in each of 8 lanes = 8 x sum), and the
 * rows' accumulators are independent FMA chains. The AVX2 build's int4 kernel; in the AVX-512 build
 * (with VNNI's 256-bit dot products) the one for a CPU that runs 512-bit vectors as two halves, where
 * it measures faster (ew_choose_int4): on Zen 4 the AVX2 build decoded int4 at 237 tok/s, the AVX-512
 * one at 198, its pairs of scale broadcasts and inserts costing more than they save there. */
static inline __attribute__((always_inline)) void dotR_int4_q8_ymm(const uint8_t *w, const float *scale, q8_inputs in,
                                                                   int n, float *out, int R) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    const int groups = n / GROUP;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int g = 0; g < groups; g++) {
        const int8_t *xq = in.q + g * GROUP;
        __m256i x0 = _mm256_loadu_si256((const __m256i *)xq), x1 = _mm256_loadu_si256((const __m256i *)(xq + 32));
        __m256i offset = _mm256_set1_epi32(in.sum[g]);
        __m256 xs = _mm256_broadcast_ss(in.scale + g);
        for (int r = 0; r < R; r++) {
            const uint8_t *b = w + (size_t)r * n / 2 + g * GROUP / 2;
            _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
            __m256i d = _mm256_loadu_si256((const __m256i *)b);
            __m256i lo = _mm256_and_si256(d, low), hi = _mm256_and_si256(_mm256_srli_epi16(d, 4), low);
#ifdef __AVX512VNNI__   /* unsigned nibbles x signed inputs, by 4s */
            __m256i dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, x0), hi, x1);
#else                   /* the same, pairs summed to int16 (at most 2 x 15 x 127 each), then widened */
            __m256i dot = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1)),
                                            _mm256_set1_epi16(1));
#endif
            __m256 s = _mm256_mul_ps(xs, _mm256_broadcast_ss(scale + (size_t)r * groups + g));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(dot, offset)), s, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum256(acc[r]);
}
#endif

#if defined(EW_AVX512) && defined(__AVX512VNNI__)
#define EW_INT4_VNNI 1
#define EW_INT4_YMM 1
static int int4_ymm;   /* one stream's int4 rows take dotR_int4_q8_ymm (ew_choose_int4) */

/* int4 inputs are laid out for `dot_int4_q8`: per pair of groups (g, g + 1), 128 bytes: inputs
 * 0..31 of g, of g + 1, then 32..63 of g, of g + 1; and 16 lanes (8 per group) of the group's
 * scale and of its sum of q (the -8 offset). A last unpaired group keeps its 64 inputs in order. */
static void prepare_int4(const float *x, int n, q8_inputs in) {
    int groups = n / GROUP;
    for (int g = 0; g < groups; g++) {
        const float *xg = x + g * GROUP;
        __m512 v[4], top = _mm512_setzero_ps();
        for (int r = 0; r < 4; r++) {
            v[r] = _mm512_loadu_ps(xg + 16 * r);
            top = _mm512_max_ps(top, _mm512_abs_ps(v[r]));
        }
        float largest = _mm512_reduce_max_ps(top), scale = largest / 127.f;
        __m512 inverse = _mm512_set1_ps(largest > 0.f ? 127.f / largest : 0.f);
        __m512i total = _mm512_setzero_si512();
        int pair = g / 2, second = g % 2, paired = g + 1 < groups || second;
        for (int r = 0; r < 4; r++) {
            /* clamped, NaN included (min_ps returns its second operand for NaN): a damaged file's
             * NaN would become INT_MIN and overflow the sum */
            __m512 scaled = _mm512_max_ps(_mm512_min_ps(_mm512_mul_ps(v[r], inverse), _mm512_set1_ps(127.f)),
                                          _mm512_set1_ps(-127.f));
            __m512i q = _mm512_cvtps_epi32(scaled);   /* round to nearest */
            total = _mm512_add_epi32(total, q);
            int8_t *to = paired ? in.q + pair * 128 + 64 * (r / 2) + 32 * second + 16 * (r % 2) : in.q + g * GROUP + 16 * r;
            _mm_storeu_si128((__m128i *)to, _mm512_cvtepi32_epi8(q));
        }
        int sum = _mm512_reduce_add_epi32(total);
        for (int lane = 0; lane < 8; lane++) {
            in.sum[pair * 16 + 8 * second + lane] = sum;
            in.scale[pair * 16 + 8 * second + lane] = scale;
        }
    }
}

/* R (1 or 2) consecutive int4 rows, a pair of groups of each in turn: the two rows share each load of
 * the inputs, their sums and scales, which bound one row at a time (Zen 4, the 65536-row head on 2
 * threads: 27 GB/s one row at a time, 35-37 GB/s two; four rows gained nothing more). */
static inline __attribute__((always_inline)) void dotR_int4_q8(const uint8_t *w, const float *scale, q8_inputs in,
                                                               int n, float *out, int R) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const int groups = n / GROUP;
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int g = 0;
    for (; g + 2 <= groups; g += 2) {
        const int8_t *xq = in.q + g * GROUP;
        __m512i x0 = _mm512_loadu_si512(xq), x1 = _mm512_loadu_si512(xq + 64);
        __m512i offset = _mm512_loadu_si512(in.sum + g * 8);   /* 8 lanes x sum = 8 sum: the -8 offset */
        __m512 xs = _mm512_loadu_ps(in.scale + g * 8);
        for (int r = 0; r < R; r++) {
            const uint8_t *b = w + (size_t)r * n / 2 + g * GROUP / 2;
            const float *ws = scale + (size_t)r * groups + g;
            __m512i d = _mm512_loadu_si512(b);
            _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
            /* per 32-bit lane: 4 nibbles x 4 inputs, twice; lanes 0-7 group g, 8-15 group g + 1 */
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(d, low), x0);
            dot = _mm512_sub_epi32(_mm512_dpbusd_epi32(dot, _mm512_and_si512(_mm512_srli_epi16(d, 4), low), x1), offset);
            __m512 s = _mm512_mul_ps(_mm512_insertf32x8(_mm512_set1_ps(ws[0]), _mm256_set1_ps(ws[1]), 1), xs);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        float total = _mm512_reduce_add_ps(acc[r]);
        if (g < groups) {  /* a last unpaired group */
            const uint8_t *b = w + (size_t)r * n / 2 + g * GROUP / 2;
            const int8_t *xq = in.q + g * GROUP;
            int sum = 0;
            for (int j = 0; j < GROUP; j++) sum += (nibble(b, j) - 8) * xq[j];
            total += (float)sum * scale[(size_t)r * groups + g] * in.scale[g * 8];
        }
        out[r] = total;
    }
}

/* One group of an int8 row x int8 inputs: one vpdpbusd per 64 products. The weights become unsigned
 * (w + 128, an xor) and lane 0 starts at minus 128 x the group's sum of q, so the lanes add up to
 * exactly sum(w x). */
static inline __attribute__((always_inline)) __m512 int8_group_vnni(const int8_t *row, q8_inputs in, int g, __m512 acc) {
    __m512i x = _mm512_loadu_si512(in.q + g * GROUP), offset = _mm512_maskz_set1_epi32(1, -128 * in.sum[g]);
    _mm_prefetch((const char *)(row + g * GROUP) + PREFETCH, _MM_HINT_T0);
    __m512i d = _mm512_xor_si512(_mm512_loadu_si512(row + g * GROUP), _mm512_set1_epi8((char)0x80));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(offset, d, x)), _mm512_set1_ps(in.scale[g]), acc);
}

/* An int8 row x int8 inputs, before the row's scale. run_jobs takes int8 rows one at a time, in
 * memory order, not several side by side a group of each in turn (which shares each activation load
 * among them): on Zen 4 four streams 768 bytes apart defeat the hardware prefetcher, and the head
 * read 8.7 GB/s on one core against 21-24 GB/s in order (a C loop of the same instructions; the
 * whole head, 2 threads: 3.7 -> 1.2 ms). */
static inline __attribute__((always_inline)) float dot_int8_q8(const int8_t *row, q8_inputs in, int n) {
    const int groups = n / GROUP;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int g = 0;
    for (; g + 2 <= groups; g += 2) a0 = int8_group_vnni(row, in, g, a0), a1 = int8_group_vnni(row, in, g + 1, a1);
    if (g < groups) a0 = int8_group_vnni(row, in, g, a0);
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

#elif defined(EW_AVX2)
#define prepare_int4 prepare_q8
#define dotR_int4_q8 dotR_int4_q8_ymm

/* An int8 row x int8 inputs, before the row's scale (a row at a time: see the AVX-512 dot_int8_q8):
 * |x| (unsigned) x w carrying x's sign, each pair at most 2 x 127 x 127 (no saturation), widened by
 * pmaddwd. */
static inline __attribute__((always_inline)) float dot_int8_q8(const int8_t *row, q8_inputs in, int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int g = 0; g < n / GROUP; g++) {
        const int8_t *xq = in.q + g * GROUP, *b = row + g * GROUP;
        __m256i x0 = _mm256_loadu_si256((const __m256i *)xq), x1 = _mm256_loadu_si256((const __m256i *)(xq + 32));
        _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
        __m256i p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(x0, x0), _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)b), x0));
        __m256i p1 = _mm256_maddubs_epi16(_mm256_sign_epi8(x1, x1),
                                          _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(b + 32)), x1));
        __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(in.scale[g]), acc);
    }
    return hsum256(acc);
}

#elif defined(EW_SSSE3)
#define prepare_int4 prepare_q8

/* As on AVX2, 16 bytes at a time and without FMA. A group's four maddubs (each pair at most
 * 2 x 15 x 127) add up in int16 (at most 15240) before one pmaddwd widens them. */
static inline __attribute__((always_inline)) void dotR_int4_q8(const uint8_t *w, const float *scale, q8_inputs in,
                                                               int n, float *out, int R) {
    const __m128i low = _mm_set1_epi8(0x0F), ones = _mm_set1_epi16(1);
    const int groups = n / GROUP;
    __m128 acc[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int g = 0; g < groups; g++) {
        const __m128i *xp = (const __m128i *)(in.q + g * GROUP);
        __m128i x0 = _mm_loadu_si128(xp), x1 = _mm_loadu_si128(xp + 1), x2 = _mm_loadu_si128(xp + 2),
                x3 = _mm_loadu_si128(xp + 3);
        __m128i offset = _mm_set1_epi32(2 * in.sum[g]);   /* 4 lanes x 2 sum = 8 sum */
        float xs = in.scale[g];
        for (int r = 0; r < R; r++) {
            const uint8_t *b = w + (size_t)r * n / 2 + g * GROUP / 2;
            _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
            __m128i d0 = _mm_loadu_si128((const __m128i *)b), d1 = _mm_loadu_si128((const __m128i *)(b + 16));
            /* inputs 0..15 and 16..31 in the low nibbles, 32..47 and 48..63 in the high ones */
            __m128i p = _mm_add_epi16(_mm_maddubs_epi16(_mm_and_si128(d0, low), x0), _mm_maddubs_epi16(_mm_and_si128(d1, low), x1));
            p = _mm_add_epi16(p, _mm_maddubs_epi16(_mm_and_si128(_mm_srli_epi16(d0, 4), low), x2));
            p = _mm_add_epi16(p, _mm_maddubs_epi16(_mm_and_si128(_mm_srli_epi16(d1, 4), low), x3));
            __m128i dot = _mm_sub_epi32(_mm_madd_epi16(p, ones), offset);
            __m128 s = _mm_set1_ps(xs * scale[(size_t)r * groups + g]);
            acc[r] = _mm_add_ps(acc[r], _mm_mul_ps(_mm_cvtepi32_ps(dot), s));
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum128(acc[r]);
}

/* As on AVX2: |x| x w carrying x's sign, widened by pmaddwd, 16 bytes at a time */
static inline __attribute__((always_inline)) float dot_int8_q8(const int8_t *row, q8_inputs in, int n) {
    const __m128i ones = _mm_set1_epi16(1);
    __m128 acc = _mm_setzero_ps();
    for (int g = 0; g < n / GROUP; g++) {
        const __m128i *xp = (const __m128i *)(in.q + g * GROUP), *b = (const __m128i *)(row + g * GROUP);
        _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
        __m128i s[4];
        for (int k = 0; k < 4; k++) {
            __m128i x = _mm_loadu_si128(xp + k);
            s[k] = _mm_madd_epi16(_mm_maddubs_epi16(_mm_sign_epi8(x, x), _mm_sign_epi8(_mm_loadu_si128(b + k), x)), ones);
        }
        __m128i dot = _mm_add_epi32(_mm_add_epi32(s[0], s[1]), _mm_add_epi32(s[2], s[3]));
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(dot), _mm_set1_ps(in.scale[g])));
    }
    return hsum128(acc);
}

#elif defined(EW_NEON)
#define prepare_int4 prepare_q8

static float dot_int4_q8(const uint8_t *w, const float *scale, q8_inputs in, int n) {
    const uint8x16_t low = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc = vdupq_n_f32(0.f);
    for (int g = 0; g < n / GROUP; g++) {
        const uint8_t *b = w + g * GROUP / 2;
        const int8_t *xq = in.q + g * GROUP;
        uint8x16_t d0 = vld1q_u8(b), d1 = vld1q_u8(b + 16);
        /* signed nibbles (q - 8) x signed inputs, four at a time per lane: sdot */
        int32x4_t dot = vdotq_s32(vdupq_n_s32(0), vsubq_s8(vreinterpretq_s8_u8(vandq_u8(d0, low)), eight), vld1q_s8(xq));
        dot = vdotq_s32(dot, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(d1, low)), eight), vld1q_s8(xq + 16));
        dot = vdotq_s32(dot, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(d0, 4)), eight), vld1q_s8(xq + 32));
        dot = vdotq_s32(dot, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(d1, 4)), eight), vld1q_s8(xq + 48));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot), scale[g] * in.scale[g]);
    }
    return vaddvq_f32(acc);
}
#endif

#if defined(EW_AVX2) || defined(EW_SSSE3) || defined(EW_INT4_VNNI)
#define EW_INT4_ROWS 2   /* rows of a dotR_int4_q8 in run_jobs, inlined there: a call per pair of rows cost 10-20% */

static float dot_int4_q8(const uint8_t *w, const float *scale, q8_inputs in, int n) {
    float y;
    dotR_int4_q8(w, scale, in, n, &y, 1);
    return y;
}
#endif

static float row_dot(const ew_matrix *m, int row, const float *x) {
    size_t cols = (size_t)m->cols;
    switch (m->kind) {
    case F32: return dot_f32((const float *)m->data + row * cols, x, m->cols);
    case BF16: return dot_bf16((const uint16_t *)m->data + row * cols, x, m->cols);
    case INT8: return dot_int8((const int8_t *)m->data + row * cols, x, m->cols) * m->scale[row];
    default: return dot_int4((const uint8_t *)m->data + row * cols / 2, m->scale + row * (cols / GROUP), x, m->cols);
    }
}


/* expf within 2 ulp (Cephes' polynomial), written so that `omp simd` loops vectorise it */
static inline float exp_approx(float x) {
    x = x > -87.3f ? x : -87.3f;   /* not fminf/fmaxf: those block vectorising; written so that NaN (a damaged */
    x = x < 88.3f ? x : 88.3f;     /* file's weights) clamps too: converting NaN to an int is undefined */
    float n = floorf(x * 1.44269504f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static inline float sigmoid(float x) { return 1.f / (1.f + exp_approx(-x)); }

/* -- matrix-vector products, split across the team ------------------------------------- */

typedef struct {
    const ew_matrix *m;
    const float *x;
    float *y;
    int activation;
} job;

static inline float activate(float y, int activation) {
    switch (activation) {
    case TANH: return 1.f - 2.f / (1.f + exp_approx(2.f * y));  /* branch-free, like everything per row */
    case SIGMOID: return sigmoid(y);
    case RELU_SQUARED: y = y > 0.f ? y : 0.f; return y * y;  /* a select, not a libm call, not a branch */
    default: return y;
    }
}

/* Called by every thread of the team: each takes a contiguous share of all rows of all jobs,
 * balanced by weights read; ends with a barrier. */
/* The bytes of weights a row streams, in halves of a byte: decode is bound by them, so threads
 * share jobs by bytes, not by weights (a bf16 LoRA row weighs 4x an int4 row of the same width). */
static int64_t row_weight(const ew_matrix *m) {
    int64_t cols = m->cols > 0 ? m->cols : 1;   /* at least 1: rows are found by dividing by it */
    return m->kind == F32 ? 8 * cols : m->kind == BF16 ? 4 * cols : m->kind == INT8 ? 2 * cols : cols;
}

/* A barrier of the team of the enclosing parallel region that spins (then yields) instead of
 * sleeping. libgomp's own barriers spin for only ~100 rounds once more OpenMP threads exist than
 * CPUs (as soon as a second Python thread, a server's batcher, runs a parallel region), then sleep
 * on a futex: a decode step's ~80 barriers then cost a context switch each, and one token took
 * 5.6 ms on a server's thread against 3.0 ms on the main thread (Zen 5, 2 cores). Sense by phase
 * count: a thread reads the phase before it arrives; the last to arrive resets the count, then
 * moves the phase on. */
#define MAX_TEAM 64   /* threads that share a phase's chunks (claim_rows); more take no chunks */
typedef struct { _Alignas(64) atomic_long taken; } chunk_count;   /* a cache line each: no thread writes another's */
typedef struct { atomic_int arrived; atomic_int phase; chunk_count next[2][MAX_TEAM]; } spin_barrier;
#define SPIN_ROUNDS 20000   /* ~0.2-1 ms of pause before yielding the core to whatever else is runnable */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void team_barrier(spin_barrier *b) {
    int threads = omp_get_num_threads();   /* one thread, too, moves the phase on: claim_rows counts by it */
    int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == threads - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        for (int t = 0; t < threads && t < MAX_TEAM; t++)   /* see claim_rows */
            atomic_store_explicit(&b->next[(phase + 1) & 1][t].taken, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, phase + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == phase; spins++) {
        if (spins < SPIN_ROUNDS) cpu_relax();
        else sched_yield();
    }
}

#define MAX_JOBS 8

/* A phase's rows are shared out in chunks, each thread first taking the chunks of its own share in
 * order (one contiguous run of the weights, as with fixed shares), then, once its share is done, the
 * chunks left in the others': where other work shares the cores (a server's event loop and its
 * clients), a thread the OS takes off its core mid-phase leaves the rest of its share to the others
 * instead of keeping them at the barrier (8 streams through `edgewise serve` on 2 cores: with fixed
 * shares the batcher spun there ~30% of its time). Each share counts its taken chunks on a cache line
 * of its own: one counter for the team cost 2 streams 25% of their step in cache-line transfers.
 * A chunk is about `chunk` units of the row costs, in multiples of 16 rows (AMX's tiles, the blocks'
 * row pairs). Between two barriers the team counts on next[phase & 1]; the barrier's last arrival
 * zeroes the other set. */
static int64_t chunk_rows(const ew_matrix *m, int64_t (*cost)(const ew_matrix *), int64_t chunk) {
    int64_t rows = (chunk / cost(m) + 15) / 16 * 16;
    return rows > 16 ? rows : 16;
}

/* How a phase's rows fall into chunks, worked out once a phase by each thread: its jobs' chunk
 * sizes and counts, and the team's counters for this phase */
typedef struct { int count; int64_t sizes[MAX_JOBS], counts[MAX_JOBS], chunks; chunk_count *next; } chunk_plan;

static chunk_plan plan_chunks(const job *jobs, int count, int64_t (*cost)(const ew_matrix *), int64_t chunk_cost,
                              spin_barrier *sync) {
    chunk_plan plan = {count, {0}, {0}, 0, sync->next[atomic_load_explicit(&sync->phase, memory_order_acquire) & 1]};
    for (int k = 0; k < count; k++) {
        plan.sizes[k] = chunk_rows(jobs[k].m, cost, chunk_cost);
        plan.counts[k] = (jobs[k].m->rows + plan.sizes[k] - 1) / plan.sizes[k];
        plan.chunks += plan.counts[k];
    }
    return plan;
}

/* The next chunk for this thread: job *j's rows [*first, *end); 0 when the phase has none left */
static int claim_rows(const job *jobs, const chunk_plan *plan, int *j, int64_t *first, int64_t *end) {
    int threads = omp_get_num_threads() < MAX_TEAM ? omp_get_num_threads() : MAX_TEAM, me = omp_get_thread_num();
    if (me >= MAX_TEAM) return 0;
    for (int i = 0; i < threads; i++) {   /* its own share, then the next thread's, and so on */
        int t = (me + i) % threads;
        int64_t lo = plan->chunks * t / threads, size = plan->chunks * (t + 1) / threads - lo;
        if (atomic_load_explicit(&plan->next[t].taken, memory_order_relaxed) >= size) continue;
        int64_t chunk = atomic_fetch_add_explicit(&plan->next[t].taken, 1, memory_order_relaxed);
        if (chunk >= size) continue;
        chunk += lo;
        for (int k = 0; k < plan->count; chunk -= plan->counts[k], k++)
            if (chunk < plan->counts[k]) {
                int64_t rows = jobs[k].m->rows, size_k = plan->sizes[k];
                *j = k, *first = chunk * size_k, *end = (chunk + 1) * size_k < rows ? (chunk + 1) * size_k : rows;
                return 1;
            }
    }
    return 0;
}

/* y [n] = activate(y), one activation for all: a loop of its own per kind, vectorised (one loop
 * switching per element was not) */
static void activate_all(float *y, int64_t n, int activation) {
    switch (activation) {
    case TANH:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = activate(y[i], TANH);
        break;
    case SIGMOID:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = activate(y[i], SIGMOID);
        break;
    case RELU_SQUARED:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = activate(y[i], RELU_SQUARED);
        break;
    default:
        break;
    }
}

/* Called by every thread of the team: the rows of all jobs are taken in chunks (claim_rows) of about
 * RUN_CHUNK units of row_weight (48 KB of weights: 64 rows of a 768-wide int8 matrix); ends with a
 * barrier. Where a job's rows take prepared inputs (int8 activations), a thread prepares them the
 * first time it takes one of its chunks. */
#define RUN_CHUNK 98304

static void run_jobs(const job *jobs, int count, spin_barrier *sync) {
#ifdef EW_INT4_Q8
    int64_t at[MAX_JOBS + 1] = {0};   /* each job's prepared inputs in `store`, in int32s: sums, scales, q */
    int prepared[MAX_JOBS] = {0}, ready[MAX_JOBS] = {0};
    for (int j = 0; j < count; j++) {
        const ew_matrix *m = jobs[j].m;
#ifdef EW_INT8_Q8
        prepared[j] = m->kind == INT4 || (m->kind == INT8 && m->cols % GROUP == 0);
#else
        prepared[j] = m->kind == INT4;
#endif
        int64_t pairs = m->cols / GROUP / 2 + 1;
        at[j + 1] = at[j] + (prepared[j] ? (2 * pairs * 16 + (m->cols + 3) / 4 + 15) / 16 * 16 : 0);
    }
    int32_t store[at[count] + 16] __attribute__((aligned(64)));
#endif
    int j;
    int64_t first, end;
#ifdef EW_INT4_YMM
    const int ymm = int4_ymm;   /* once: inputs prepared for one kernel are read by the same one */
#endif
    chunk_plan plan = plan_chunks(jobs, count, row_weight, RUN_CHUNK, sync);
    while (claim_rows(jobs, &plan, &j, &first, &end)) {
        const ew_matrix *m = jobs[j].m;
        int64_t cols = m->cols, r = first;
#ifdef EW_INT4_Q8
        int64_t pairs = cols / GROUP / 2 + 1;
        q8_inputs in = {(int8_t *)(store + at[j] + 2 * pairs * 16), store + at[j], (float *)(store + at[j] + pairs * 16)};
        int int4 = m->kind == INT4, int8 = prepared[j] && !int4;
        if (prepared[j] && !ready[j]) {
#ifdef EW_INT4_YMM
            if (int4 && !ymm) prepare_int4(jobs[j].x, m->cols, in);
#else
            if (int4) prepare_int4(jobs[j].x, m->cols, in);
#endif
            else prepare_q8(jobs[j].x, m->cols, in);
            ready[j] = 1;
        }
#endif
#ifdef EW_INT4_YMM
        for (; int4 && ymm && r + 2 <= end; r += 2) {
            float y[2];
            dotR_int4_q8_ymm((const uint8_t *)m->data + r * cols / 2, m->scale + r * (cols / GROUP), in, m->cols, y, 2);
            jobs[j].y[r] = activate(y[0], jobs[j].activation), jobs[j].y[r + 1] = activate(y[1], jobs[j].activation);
        }
        for (; int4 && ymm && r < end; r++) {
            dotR_int4_q8_ymm((const uint8_t *)m->data + r * cols / 2, m->scale + r * (cols / GROUP), in, m->cols,
                             jobs[j].y + r, 1);
            jobs[j].y[r] = activate(jobs[j].y[r], jobs[j].activation);
        }
#endif
#ifdef EW_INT4_ROWS
        for (; int4 && r + EW_INT4_ROWS <= end; r += EW_INT4_ROWS) {
            float y[EW_INT4_ROWS];
            dotR_int4_q8((const uint8_t *)m->data + r * cols / 2, m->scale + r * (cols / GROUP), in, m->cols, y,
                         EW_INT4_ROWS);
            for (int k = 0; k < EW_INT4_ROWS; k++) jobs[j].y[r + k] = activate(y[k], jobs[j].activation);
        }
#endif
#ifdef EW_INT8_Q8
        for (; int8 && r < end; r++)   /* a row at a time, in memory order (see dot_int8_q8) */
            jobs[j].y[r] = activate(dot_int8_q8((const int8_t *)m->data + r * cols, in, m->cols) * m->scale[r],
                                    jobs[j].activation);
#endif
        for (; r < end; r++) {
#ifdef EW_INT4_Q8
            float y = int4 ? dot_int4_q8((const uint8_t *)m->data + r * cols / 2, m->scale + r * (cols / GROUP), in, m->cols)
                           : row_dot(m, r, jobs[j].x);
#else
            float y = row_dot(m, r, jobs[j].x);
#endif
            jobs[j].y[r] = activate(y, jobs[j].activation);
        }
    }
    team_barrier(sync);
}

/* -- the small element-wise parts ------------------------------------------------------- */

/* The mean of x [n], and 1 / sqrt(variance + eps): a layer or group norm's statistics */
static float moments(const float *x, int n, float eps, float *mean) {
    float sum = 0.f, var = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) sum += x[i];
    float m = sum / n;
#pragma omp simd reduction(+ : var)
    for (int i = 0; i < n; i++) var += (x[i] - m) * (x[i] - m);
    *mean = m;
    return 1.f / sqrtf(var / n + eps);
}

static void layer_norm(const float *x, const float *w, const float *b, float *out, int n, float eps) {
    float mean, inv = moments(x, n, eps, &mean);
#pragma omp simd
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + b[i];
}

/* out[j] = x + (prev - x) * mix[j] for `count` mixes, then keep = x (keep may be prev) */
static void token_shift(const float *x, const float *prev, float *keep, const float *mix, int count, int C, float *out) {
    for (int j = 0; j < count; j++)
#pragma omp simd
        for (int c = 0; c < C; c++) out[j * C + c] = x[c] + (prev[c] - x[c]) * mix[j * C + c];
    memcpy(keep, x, C * sizeof(float));
}

typedef struct {  /* per-token scratch, [C] each unless noted */
    float *x, *dx, *xa, *mixed /* [6, C] */, *r, *k, *v, *v_first, *lw, *la, *lv, *g, *y, *hidden /* [F] */;
    float *low /* [4, max rank] */;
} scratch;

/* The state row STATE_AHEAD rows past `row`, asked for while this one is worked on: a batch's states
 * (8 streams of the 0.1B model: 19 MB, read and written each token) come from past the caches, and
 * the hardware's own prefetch left the head update waiting on them (8 streams, AMX: 1.16-1.22 ->
 * 0.84-0.86 ms of the step's 7.4-8.2; 4 and 32 rows ahead measured slower). Past a head's last rows it
 * asks for the next head's, which the same thread usually takes next. */
#define STATE_AHEAD 16
static inline void prefetch_state(const float *row, int N) {
    for (int k = 0; k < N; k += 16) __builtin_prefetch(row + (size_t)STATE_AHEAD * N + k);
}

/* One head of the time mix, after the matrix products: decay, in-context learning rate, the
 * WKV state update and read-out, group norm, bonus, gate. Returns into s->y. */
static void time_mix_head(const ew_layer *L, int layer, int h, int N, const float *S_in, float *S_out, scratch *sc) {
    int o = h * N;
    const float *w0 = L->w0.data + o, *a0 = L->a0.data + o, *v0 = L->v0.data + o, *k_k = L->k_k.data + o,
                *k_a = L->k_a.data + o, *r_k = L->r_k.data + o;
    const float *lw = sc->lw + o, *la = sc->la + o, *lv = sc->lv + o, *r = sc->r + o, *g = sc->g + o;
    float *k = sc->k + o, *v = sc->v + o, *v_first = sc->v_first + o;
    float w[N], a[N], kk[N], b[N], y[N], norm = 0.f, bonus = 0.f;
#pragma omp simd reduction(+ : norm)
    for (int j = 0; j < N; j++) {
        w[j] = exp_approx(-0.606531f * sigmoid(w0[j] + lw[j]));
        a[j] = sigmoid(a0[j] + la[j]);
        kk[j] = k[j] * k_k[j];
        norm += kk[j] * kk[j];
    }
    norm = fmaxf(sqrtf(norm), 1e-12f);
    if (layer == 0)
        memcpy(v_first, v, N * sizeof(float));
    else
#pragma omp simd
        for (int j = 0; j < N; j++) v[j] += (v_first[j] - v[j]) * sigmoid(v0[j] + lv[j]);
#pragma omp simd reduction(+ : bonus)
    for (int j = 0; j < N; j++) {
        kk[j] /= norm;
        b[j] = kk[j] * a[j];
        k[j] *= 1.f + (a[j] - 1.f) * k_a[j];
        bonus += r[j] * k[j] * r_k[j];
    }
#ifdef EW_AVX512
    if (N == 64) {  /* every released RWKV-7: four vectors a row, in registers */
        __m512 W[4], KK[4], K[4], B[4], R[4];
        for (int q = 0; q < 4; q++) {
            W[q] = _mm512_loadu_ps(w + 16 * q), KK[q] = _mm512_loadu_ps(kk + 16 * q), K[q] = _mm512_loadu_ps(k + 16 * q);
            B[q] = _mm512_loadu_ps(b + 16 * q), R[q] = _mm512_loadu_ps(r + 16 * q);
        }
        for (int i = 0; i < N; i++) {
            const float *in = S_in + (size_t)i * N;
            float *out = S_out + (size_t)i * N;
            prefetch_state(in, N);
            __m512 row[4];
            for (int q = 0; q < 4; q++) row[q] = _mm512_loadu_ps(in + 16 * q);
            __m512 removed = _mm512_add_ps(_mm512_fmadd_ps(row[0], KK[0], _mm512_mul_ps(row[1], KK[1])),
                                           _mm512_fmadd_ps(row[2], KK[2], _mm512_mul_ps(row[3], KK[3])));
            removed = _mm512_set1_ps(_mm512_reduce_add_ps(removed));
            __m512 vi = _mm512_set1_ps(v[i]), acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            for (int q = 0; q < 4; q++) {
                __m512 next = _mm512_fnmadd_ps(removed, B[q], _mm512_fmadd_ps(vi, K[q], _mm512_mul_ps(row[q], W[q])));
                _mm512_storeu_ps(out + 16 * q, next);
                if (q % 2) acc1 = _mm512_fmadd_ps(next, R[q], acc1);
                else acc0 = _mm512_fmadd_ps(next, R[q], acc0);
            }
            y[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        }
    } else
#endif
    for (int i = 0; i < N; i++) {  /* S = S diag(w) - (S kk) b^T + v k^T; y = S r */
        const float *in = S_in + (size_t)i * N;
        float *out = S_out + (size_t)i * N;
        float removed = 0.f, acc = 0.f;
        prefetch_state(in, N);
#pragma omp simd reduction(+ : removed)
        for (int j = 0; j < N; j++) removed += in[j] * kk[j];
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < N; j++) {
            float next = in[j] * w[j] + v[i] * k[j] - removed * b[j];
            out[j] = next;
            acc += next * r[j];
        }
        y[i] = acc;
    }
    float mean, inv = moments(y, N, 64e-5f, &mean);   /* the group norm of this head */
#pragma omp simd
    for (int i = 0; i < N; i++)
        sc->y[o + i] = ((y[i] - mean) * inv * L->lnx_w.data[o + i] + L->lnx_b.data[o + i] + bonus * v[i]) * g[i];
}

/* -- the step ---------------------------------------------------------------------------- */

/* -- checks: every size against the model, before any kernel runs ------------------------ */

/* Dimensions past these are refused: they keep every product below in range and the per-thread
 * buffers on the stack small. The largest released RWKV-7 is far inside them. */
#define MAX_DIM (1 << 24)
#define MAX_HEAD_SIZE 1024
#define MAX_INT4_COLS (1 << 16)

enum { OK = 0, OUT_OF_MEMORY = 1, BAD_MODEL = 2, BAD_TOKEN = 3, SMALL_BUFFER = 4, NOT_FINITE = 5 };

static _Thread_local char problem_text[200];

static int refuse(const char *what, int layer, const char *detail) {
    if (layer >= 0) snprintf(problem_text, sizeof problem_text, "layer %d %s: %s", layer, what, detail);
    else snprintf(problem_text, sizeof problem_text, "%s: %s", what, detail);
    return BAD_MODEL;
}

/* A matrix of `rows` x `cols` (-1: any) whose buffers hold what its kind needs. */
static int check_matrix(const ew_matrix *m, int64_t rows, int64_t cols, const char *what, int layer) {
    char detail[96];
    if (m->kind < F32 || m->kind > INT4) return refuse(what, layer, "unknown kind");
    if (m->rows < 0 || m->cols < 0 || m->rows > MAX_DIM || m->cols > MAX_DIM) return refuse(what, layer, "bad shape");
    if ((rows >= 0 && m->rows != rows) || (cols >= 0 && m->cols != cols)) {
        snprintf(detail, sizeof detail, "%d x %d, expected %lld x %lld", m->rows, m->cols, (long long)rows, (long long)cols);
        return refuse(what, layer, detail);
    }
    int64_t count = (int64_t)m->rows * m->cols, scales = 0, bytes = count * 4;
    if (m->kind == BF16) bytes = count * 2;
    if (m->kind == INT8) bytes = count, scales = m->rows;
    if (m->kind == INT4) {
        if (m->cols % GROUP || m->cols > MAX_INT4_COLS) return refuse(what, layer, "int4 inputs must be whole groups of 64");
        bytes = count / 2, scales = count / GROUP;
    }
    if (count && (!m->data || m->data_bytes < bytes)) return refuse(what, layer, "data smaller than its shape");
    if (scales && (!m->scale || m->scale_count < scales)) return refuse(what, layer, "fewer scales than its shape");
    size_t align = m->kind == F32 ? 4 : m->kind == BF16 ? 2 : 1;
    if ((uintptr_t)m->data % align || (uintptr_t)m->scale % 4) return refuse(what, layer, "misaligned data");
    return OK;
}

static int check_vector(const ew_vector *v, int64_t size, const char *what, int layer) {
    if ((uintptr_t)v->data % 4) return refuse(what, layer, "misaligned data");
    return v->data && v->size >= size ? OK : refuse(what, layer, "vector smaller than the width");
}

static int check_layer(const ew_model *m, int i) {
    const ew_layer *L = &m->layer[i];
    int64_t C = m->width, F = m->ffn;
    int status = OK;
#define EW_CHECK_VECTOR(name) if (!status) status = check_vector(&L->name, C, #name, i);
    EW_VECTORS(EW_CHECK_VECTOR)
    if (!status) status = check_vector(&L->mix, 6 * C, "mix", i);
    const ew_matrix *big[] = {&L->r, &L->k, &L->v, &L->o, &L->fk, &L->fv};
    const char *names[] = {"r", "k", "v", "o", "fk", "fv"};
    int64_t shapes[][2] = {{C, C}, {C, C}, {C, C}, {C, C}, {F, C}, {C, F}};
    for (int j = 0; j < 6 && !status; j++) status = check_matrix(big[j], shapes[j][0], shapes[j][1], names[j], i);
    const ew_matrix *down[] = {&L->w1, &L->a1, &L->v1, &L->g1}, *up[] = {&L->w2, &L->a2, &L->v2, &L->g2};
    const char *lora[] = {"w1", "a1", "v1", "g1", "w2", "a2", "v2", "g2"};
    for (int j = 0; j < 4 && !status; j++) {   /* x [C] -> [rank] -> [C]; layer 0 has no v LoRA, the others must */
        int none = j == 2 && i == 0;
        status = check_matrix(down[j], none ? 0 : -1, none ? 0 : C, lora[j], i);
        if (!status && !none && down[j]->rows == 0) status = refuse(lora[j], i, "no rows");
        if (!status) status = check_matrix(up[j], none ? 0 : C, down[j]->rows, lora[4 + j], i);
    }
    return status;
}

static int check_model(const ew_model *m) {
    if (!m || !m->layer) return refuse("model", -1, "no layers");
    int32_t dims[] = {m->layers, m->width, m->heads, m->head_size, m->ffn, m->vocab};
    for (int j = 0; j < 6; j++)
        if (dims[j] < 1 || dims[j] > MAX_DIM) return refuse("model", -1, "a dimension is out of range");
    if (m->head_size > MAX_HEAD_SIZE || (int64_t)m->heads * m->head_size != m->width)
        return refuse("model", -1, "heads x head size is not the width");
    int status = check_matrix(&m->emb, m->vocab, m->width, "emb", -1);
    if (!status && m->emb.kind != F32 && m->emb.kind != INT8) status = refuse("emb", -1, "must be fp32 or int8");
    if (!status) status = check_matrix(&m->head, m->vocab, m->width, "head", -1);
    if (!status) status = check_vector(&m->ln_out_w, m->width, "ln_out_w", -1);
    if (!status) status = check_vector(&m->ln_out_b, m->width, "ln_out_b", -1);
    for (int i = 0; i < m->layers && !status; i++) status = check_layer(m, i);
    return status;
}

static int check_state(const ew_model *m, const ew_state *s) {
    int64_t LC = (int64_t)m->layers * m->width, S = LC * m->head_size;   /* L * H * N * N = L * C * N */
    if (!s || !s->att || !s->ffn || !s->S || s->att_size < LC || s->ffn_size < LC || s->S_size < S ||
        ((uintptr_t)s->att | (uintptr_t)s->ffn | (uintptr_t)s->S) % 4) {
        snprintf(problem_text, sizeof problem_text, "a state buffer is smaller than the model's state, or misaligned");
        return SMALL_BUFFER;
    }
    return OK;
}

/* -- the step ---------------------------------------------------------------------------- */

/* What the last call that failed on this thread found wrong, for the caller's error message */
const char *ew_problem(void) { return problem_text; }

/* Which kernels this build has: 1 AVX-512, 2 int4 x int8 by VNNI, 4 AVX2, 8 NEON with sdot, 16 SSSE3;
 * 32 AMX tiles for batches, when ew_use_amx turned them on; 64 one stream's int4 rows in 256-bit
 * vectors, when ew_choose_int4 chose them */
int ew_features(void) {
    int features = 0;
#ifdef EW_AVX512
    features |= 1;
#endif
#ifdef EW_INT4_VNNI
    features |= 2;
#endif
#ifdef EW_AVX2
    features |= 4;
#endif
#ifdef EW_NEON
    features |= 8;
#endif
#ifdef EW_SSSE3
    features |= 16;
#endif
    features |= amx_on ? 32 : 0;   /* only ever set where EW_AMX is built */
#ifdef EW_INT4_YMM
    features |= int4_ymm ? 64 : 0;
#endif
    return features;
}

#ifdef EW_INT4_YMM
static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
#endif

#ifdef EW_INT4_YMM
/* 1 when the 256-bit int4 kernel multiplies a 512 x 768 int4 matrix in the cache at least 5% faster
 * than the 512-bit one here (the best of 9 interleaved passes each, ~0.3 ms), else 0 */
static __attribute__((noinline)) int measure_int4_ymm(void) {
    enum { ROWS = 512, COLS = 768, GROUPS = COLS / GROUP, PAIRS = GROUPS / 2 + 1 };
    uint8_t *w = aligned_alloc(64, ROWS * COLS / 2);
    float *scale = malloc(sizeof(float) * ROWS * GROUPS), x[COLS], y[2];
    int32_t store[2][2 * PAIRS * 16 + COLS / 4 + 16] __attribute__((aligned(64)));
    if (!w || !scale) {
        free(w), free(scale);
        return 0;
    }
    uint32_t seed = 1;
    for (int i = 0; i < ROWS * COLS / 2; i++) w[i] = (uint8_t)((seed = seed * 1664525u + 1013904223u) >> 24);
    for (int i = 0; i < ROWS * GROUPS; i++) scale[i] = 0.01f;
    for (int i = 0; i < COLS; i++) x[i] = (float)((seed = seed * 1664525u + 1013904223u) >> 8) / 8388608.f - 1.f;
    q8_inputs in[2];
    for (int k = 0; k < 2; k++)
        in[k] = (q8_inputs){(int8_t *)(store[k] + 2 * PAIRS * 16), store[k], (float *)(store[k] + PAIRS * 16)};
    prepare_int4(x, COLS, in[0]);
    prepare_q8(x, COLS, in[1]);
    double best[2] = {1e30, 1e30};
    volatile float sink = 0.f;
    for (int round = 0; round < 9; round++)
        for (int k = 0; k < 2; k++) {
            double start = seconds_now();
            for (int r = 0; r < ROWS; r += 2) {
                if (k) dotR_int4_q8_ymm(w + r * COLS / 2, scale + r * GROUPS, in[1], COLS, y, 2);
                else dotR_int4_q8(w + r * COLS / 2, scale + r * GROUPS, in[0], COLS, y, 2);
                sink += y[0] + y[1];   /* both rows, or the compiler drops the second */
            }
            double taken = seconds_now() - start;
            best[k] = taken < best[k] ? taken : best[k];
        }
    (void)sink;
    free(w), free(scale);
    return best[1] < 0.95 * best[0];
}
#endif

/* Which kernel one stream's int4 rows take in the AVX-512 build: force 0 the 512-bit one, 1 the
 * 256-bit one (dotR_int4_q8_ymm), -1 the measured choice (measure_int4_ymm, once a process; 0 on a
 * CPU without AVX-512 VNNI, where the measurement could not run). Returns the kernel now in use (1
 * the 256-bit one), or -1 where the build has only one int4 kernel. */
int ew_choose_int4(int force) {
#ifdef EW_INT4_YMM
    static int measured = -1;
    if (force >= 0) return int4_ymm = force > 0;
    if (measured < 0)
        measured = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni") ? measure_int4_ymm() : 0;
    return int4_ymm = measured;
#else
    (void)force;
    return -1;
#endif
}

#ifndef EW_SOURCE_HASH
#define EW_SOURCE_HASH ""
#endif
/* The first 16 hex digits of this file's SHA-256, as setup.py saw it: native.py names a stale build. */
const char *ew_source_hash(void) { return EW_SOURCE_HASH; }

/* The layout of the shared structs: their sizes, then the offset of every field in order. Fills
 * at most `n` values and returns how many there are. */
int64_t ew_layout(int64_t *out, int64_t n) {
    int64_t values[] = {
        sizeof(ew_matrix), sizeof(ew_vector), sizeof(ew_layer), sizeof(ew_model), sizeof(ew_state),
        offsetof(ew_matrix, kind), offsetof(ew_matrix, rows), offsetof(ew_matrix, cols), offsetof(ew_matrix, unused),
        offsetof(ew_matrix, data), offsetof(ew_matrix, scale), offsetof(ew_matrix, data_bytes),
        offsetof(ew_matrix, scale_count), offsetof(ew_vector, data), offsetof(ew_vector, size),
#define EW_LAYER_OFFSET(name) offsetof(ew_layer, name),
        EW_VECTORS(EW_LAYER_OFFSET) EW_LORAS(EW_LAYER_OFFSET) EW_MATRICES(EW_LAYER_OFFSET)
        offsetof(ew_model, layers), offsetof(ew_model, width), offsetof(ew_model, heads), offsetof(ew_model, head_size),
        offsetof(ew_model, ffn), offsetof(ew_model, vocab), offsetof(ew_model, layer), offsetof(ew_model, emb),
        offsetof(ew_model, ln_out_w), offsetof(ew_model, ln_out_b), offsetof(ew_model, head),
        offsetof(ew_state, att), offsetof(ew_state, ffn), offsetof(ew_state, S), offsetof(ew_state, att_size),
        offsetof(ew_state, ffn_size), offsetof(ew_state, S_size),
    };
    int64_t count = sizeof values / sizeof *values;
    for (int64_t j = 0; j < count && j < n; j++) out[j] = values[j];
    return count;
}

/* 0 when `m` is a model every kernel here can run; else a status, explained by ew_problem(). */
int ew_check(const ew_model *m) { return check_model(m); }

/* y [T, rows] = x [T, cols] W^T for a few rows of x (a short prompt, or the head after a
 * prefill): the same kernels as decode. x holds x_size floats, y y_size. */
int ew_matmul(const ew_matrix *m, const float *x, int64_t x_size, int64_t T, float *y, int64_t y_size, int threads) {
    int status = check_matrix(m, -1, -1, "matrix", -1);
    if (status) return status;
    if (T < 0 || !x || !y || x_size / (m->cols ? m->cols : 1) < T || y_size / (m->rows ? m->rows : 1) < T) {
        snprintf(problem_text, sizeof problem_text, "x or y is smaller than %lld rows", (long long)T);
        return SMALL_BUFFER;
    }
    spin_barrier sync = {0};   /* shared by the team */
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    for (int64_t t = 0; t < T; t++) {
        job one = {m, x + t * m->cols, y + t * m->rows, NONE};
        run_jobs(&one, 1, &sync);
    }
    return OK;
}

/* -- prefill GEMM with int8 activations ---------------------------------------------------
 * y [T, rows] = x [T, cols] W^T for an INT8 or INT4 matrix, x quantized to int8 per token and group
 * of 64 inputs (llama.cpp's Q8 blocks): integer dot products instead of fp32 FMAs on dequantized
 * tiles. A block of 4 tokens x 2 rows is kept in registers, so each weight load serves 4 tokens and
 * each activation load 2 rows. Which of this and the fp32 GEMM a prefill uses is measured at run
 * time (quant.prefill_gemm): this wins on x86 (AVX2 maddubs), the scalar form below does not. */
typedef struct {
    const int8_t *q;
    const float *scale;
    const int32_t *sum;
    const float *shift;
    int64_t groups, tokens, span;
} q8_rows;

/* Group-major: group g of token t at q + (g x tokens + t) x 64, so that a block's tokens sit at fixed
 * offsets from one pointer per group (token-major, each token's address took a register of its own:
 * 8 tokens spilled them). One scale (and sum of q) per `span` groups: [(g / span) x tokens + t].
 * shift [t]: 128 x the sum of scale x sum, what unsigned int8 weights (w + 128) add to token t's
 * products, the same for every row. */
static inline int64_t q8_slot(q8_rows x, int64_t t, int64_t g) { return (g * x.tokens + t) * GROUP; }
static inline int64_t q8_scale(q8_rows x, int64_t t, int64_t g) { return g / x.span * x.tokens + t; }

#if defined(__AVX2__) && defined(__FMA__) && !defined(EW_SCALAR)
#define EW_GEMM_Q8_SIMD 1
#ifdef EW_INT4_VNNI
#define Q8_TOKENS 8   /* tokens in a block: each weight load serves 8 streams */
/* int8 activations of int8 matrices share a scale across 4 groups (256 inputs, llama.cpp's Q8_K
 * blocks): the products of a block add up in integers, and a token and row cost one conversion and
 * one FMA per 4 vpdpbusd, not per one (8 streams on Zen 4: the kernel now waits on the weights'
 * loads, as one stream does). int4 rows keep one scale per group, as their weights have. */
#define Q8_INT8_SPAN 4

/* AVX512-VNNI, INT4 rows: unsigned nibbles x signed inputs (one vpdpbusd per group of 64 products);
 * the -8 offset, 8 x the group's sum of q, starts lane 0. nt <= 8 tokens x nr <= 2 rows. */
static inline __attribute__((always_inline)) void q8_block_int4(const ew_matrix *m, int64_t r0, int nr, q8_rows x,
                                                                int64_t t0, int nt, float *y) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const int64_t cols = m->cols, G = x.groups, rows = m->rows;
    const uint8_t *w4 = (const uint8_t *)m->data + r0 * cols / 2;
    __m512 acc[Q8_TOKENS][2];   /* 16 of the 32 registers */
    for (int t = 0; t < Q8_TOKENS; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512i w[2];
        __m512 ws[2];
        for (int r = 0; r < nr; r++) {   /* nibbles of inputs 0..31 (low) and 32..63 (high), in input order */
            _mm_prefetch((const char *)(w4 + r * cols / 2 + g * 32) + PREFETCH, _MM_HINT_T0);
            __m256i d = _mm256_loadu_si256((const __m256i *)(w4 + r * cols / 2 + g * 32));
            w[r] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(d), _mm256_srli_epi16(d, 4), 1), low);
            ws[r] = _mm512_set1_ps(m->scale[(r0 + r) * G + g]);
        }
        const int8_t *xq = x.q + q8_slot(x, t0, g);
        const float *xs = x.scale + q8_scale(x, t0, g);
        const int32_t *xsum = x.sum + q8_scale(x, t0, g);
        for (int t = 0; t < nt; t++) {
            __m512i xv = _mm512_loadu_si512(xq + t * GROUP);
            __m512i offset = _mm512_maskz_set1_epi32(1, -8 * xsum[t]);
            for (int r = 0; r < nr; r++)
                acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(offset, w[r], xv)),
                                            _mm512_mul_ps(_mm512_set1_ps(xs[t]), ws[r]), acc[t][r]);
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++) y[(t0 + t) * rows + r0 + r] = _mm512_reduce_add_ps(acc[t][r]);
}

/* AVX512-VNNI, INT8 rows: the weights become unsigned (w + 128, an xor, once for all tokens), and what
 * the 128 adds, the same for every row, comes off each token's total at the end (x.shift). nt x nr <= 8
 * (each token and row holds an integer and a float accumulator). */
static inline __attribute__((always_inline)) void q8_block_int8(const ew_matrix *m, int64_t r0, int nr, q8_rows x,
                                                                int64_t t0, int nt, float *y) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int64_t cols = m->cols, G = x.groups, rows = m->rows;
    const int8_t *w8 = (const int8_t *)m->data + r0 * cols;
    __m512 acc[8][2];
    __m512i dot[8][2];
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++) acc[t][r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += x.span) {
        int64_t g1 = g0 + x.span < G ? g0 + x.span : G;
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < nr; r++) dot[t][r] = _mm512_setzero_si512();
        for (int64_t g = g0; g < g1; g++) {
            __m512i w[2];
            for (int r = 0; r < nr; r++) {
                _mm_prefetch((const char *)(w8 + r * cols + g * GROUP) + PREFETCH, _MM_HINT_T0);
                w[r] = _mm512_xor_si512(_mm512_loadu_si512(w8 + r * cols + g * GROUP), flip);
            }
            const int8_t *xq = x.q + q8_slot(x, t0, g);
            for (int t = 0; t < nt; t++) {
                __m512i xv = _mm512_loadu_si512(xq + t * GROUP);
                for (int r = 0; r < nr; r++) dot[t][r] = _mm512_dpbusd_epi32(dot[t][r], w[r], xv);
            }
        }
        const float *xs = x.scale + q8_scale(x, t0, g0);
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < nr; r++)
                acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][r]), _mm512_set1_ps(xs[t]), acc[t][r]);
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[(t0 + t) * rows + r0 + r] = (_mm512_reduce_add_ps(acc[t][r]) - x.shift[t0 + t]) * m->scale[r0 + r];
}

static void q8_int8_4x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int8(m, r0, 2, x, t0, 4, y); }
static void q8_int8_2x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int8(m, r0, 2, x, t0, 2, y); }
static void q8_int8_1x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int8(m, r0, 2, x, t0, 1, y); }
static void q8_int8_8x1(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int8(m, r0, 1, x, t0, 8, y); }
static void q8_int8_1x1(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int8(m, r0, 1, x, t0, 1, y); }
static void q8_int4_8x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int4(m, r0, 2, x, t0, 8, y); }
static void q8_int4_4x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int4(m, r0, 2, x, t0, 4, y); }
static void q8_int4_2x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int4(m, r0, 2, x, t0, 2, y); }
static void q8_int4_1x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int4(m, r0, 2, x, t0, 1, y); }
static void q8_int4_1x1(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) { q8_block_int4(m, r0, 1, x, t0, 1, y); }

/* nr <= 2 rows x any number of tokens: 2 rows in blocks of 8, 4, 2 and 1 tokens (what a batch left
 * past its blocks of 8 and 4 was taken a token and a row at a time: 2 streams' step cost twice one
 * stream's, 7.3 against 3.6 ms); the last odd row of an int8 matrix 8 tokens or one at a time, of
 * an int4 one a token at a time */
static void q8_block(const ew_matrix *m, int64_t r0, int nr, q8_rows x, int64_t t0, int nt, float *y) {
    int int4 = m->kind == INT4, t = 0;
    if (nr == 2) {
        for (; t + 8 <= nt; t += 8) {
            if (int4) q8_int4_8x2(m, r0, x, t0 + t, y);
            else q8_int8_8x1(m, r0, x, t0 + t, y), q8_int8_8x1(m, r0 + 1, x, t0 + t, y);
        }
        for (; t + 4 <= nt; t += 4) (int4 ? q8_int4_4x2 : q8_int8_4x2)(m, r0, x, t0 + t, y);
        for (; t + 2 <= nt; t += 2) (int4 ? q8_int4_2x2 : q8_int8_2x2)(m, r0, x, t0 + t, y);
        if (t < nt) (int4 ? q8_int4_1x2 : q8_int8_1x2)(m, r0, x, t0 + t, y);
        return;
    }
    for (; !int4 && t + 8 <= nt; t += 8) q8_int8_8x1(m, r0, x, t0 + t, y);
    for (; t < nt; t++) (int4 ? q8_int4_1x1 : q8_int8_1x1)(m, r0, x, t0 + t, y);
}
#else
#define Q8_TOKENS 4
/* nt <= 4 tokens x nr <= 2 rows, of an INT8 (int4 = 0) or INT4 matrix; all three constant where
 * ew_gemm_q8 calls it, so that it is inlined with the accumulators in registers */
static inline __attribute__((always_inline)) void q8_block_kind(const ew_matrix *m, int64_t r0, int nr, q8_rows x,
                                                                int64_t t0, int nt, float *y, int int4) {
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
    const int64_t cols = m->cols, G = x.groups, rows = m->rows;
    const float *wscale = m->scale, *xscale = x.scale;
    const int32_t *xsum = x.sum;
    const int8_t *xq = x.q, *w8 = (const int8_t *)m->data + r0 * cols;
    const uint8_t *w4 = (const uint8_t *)m->data + r0 * cols / 2;
    __m256 acc[4][2];
    for (int t = 0; t < 4; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m256i w0[2], w1[2];
        for (int r = 0; r < nr; r++) {
            if (!int4) {
                w0[r] = _mm256_loadu_si256((const __m256i *)(w8 + r * cols + g * GROUP));
                w1[r] = _mm256_loadu_si256((const __m256i *)(w8 + r * cols + g * GROUP + 32));
            } else {   /* nibbles 0..15 of inputs 0..31 and 32..63 */
                __m256i d = _mm256_loadu_si256((const __m256i *)(w4 + r * cols / 2 + g * 32));
                w0[r] = _mm256_and_si256(d, low);
                w1[r] = _mm256_and_si256(_mm256_srli_epi16(d, 4), low);
            }
        }
        const int64_t at = q8_scale(x, t0, g);
        for (int t = 0; t < nt; t++) {
            const int8_t *q = xq + q8_slot(x, t0, g) + t * GROUP;
            __m256i x0 = _mm256_loadu_si256((const __m256i *)q), x1 = _mm256_loadu_si256((const __m256i *)(q + 32));
            float xs = xscale[at + t];
            if (!int4) {
                /* |x| (unsigned) x w carrying x's sign: each pair sums to at most 2 x 127 x 127, no saturation */
                __m256i a0 = _mm256_sign_epi8(x0, x0), a1 = _mm256_sign_epi8(x1, x1);
                __m256 s = _mm256_set1_ps(xs);
                for (int r = 0; r < nr; r++) {
                    __m256i d = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(w0[r], x0)), ones),
                                                 _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(w1[r], x1)), ones));
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[t][r]);
                }
            } else {
                /* unsigned nibbles x signed inputs (pairs at most 2 x 15 x 127); the -8 offset comes off
                 * as the group's sum of q, once in each of the 8 lanes */
                __m256i offset = _mm256_set1_epi32(xsum[at + t]);
                for (int r = 0; r < nr; r++) {
                    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w0[r], x0), _mm256_maddubs_epi16(w1[r], x1));
                    __m256i d = _mm256_sub_epi32(_mm256_madd_epi16(p, ones), offset);
                    __m256 s = _mm256_set1_ps(xs * wscale[(r0 + r) * G + g]);
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[t][r]);
                }
            }
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[(t0 + t) * rows + r0 + r] = hsum256(acc[t][r]) * (int4 ? 1.f : wscale[r0 + r]);
}

/* 2 rows x nt tokens of an int8 or int4 matrix, each an inlined q8_block_kind with its accumulators in registers */
#define Q8_BLOCK_2ROWS(nt)                                                                                           \
    static void q8_block_int8_##nt##x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) {         \
        q8_block_kind(m, r0, 2, x, t0, nt, y, 0);                                                                  \
    }                                                                                                              \
    static void q8_block_int4_##nt##x2(const ew_matrix *m, int64_t r0, q8_rows x, int64_t t0, float *y) {         \
        q8_block_kind(m, r0, 2, x, t0, nt, y, 1);                                                                  \
    }
Q8_BLOCK_2ROWS(4)
Q8_BLOCK_2ROWS(2)
Q8_BLOCK_2ROWS(1)
#undef Q8_BLOCK_2ROWS

/* 2 rows x 4, 2 or 1 tokens in the blocks above (what a batch leaves past its blocks of 4 was taken a
 * token and a row at a time: 2 streams on AVX2, 11.0 -> 10.1 ms a step), a row at a time at the last
 * odd row */
static void q8_block(const ew_matrix *m, int64_t r0, int nr, q8_rows x, int64_t t0, int nt, float *y) {
    int int4 = m->kind == INT4, t = 0;
    if (nr == 2) {
        for (; t + 4 <= nt; t += 4) (int4 ? q8_block_int4_4x2 : q8_block_int8_4x2)(m, r0, x, t0 + t, y);
        for (; t + 2 <= nt; t += 2) (int4 ? q8_block_int4_2x2 : q8_block_int8_2x2)(m, r0, x, t0 + t, y);
        if (t < nt) (int4 ? q8_block_int4_1x2 : q8_block_int8_1x2)(m, r0, x, t0 + t, y);
        return;
    }
    for (; t < nt; t++)   /* the last odd row, a token at a time */
        for (int r = 0; r < nr; r++) q8_block_kind(m, r0 + r, 1, x, t0 + t, 1, y, int4);
}
#endif
#else
static inline void q8_block(const ew_matrix *m, int64_t r0, int nr, q8_rows x, int64_t t0, int nt, float *y) {
    int64_t cols = m->cols, G = x.groups;
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++) {
            float total = 0.f;
            for (int64_t g = 0; g < G; g++) {
                const int8_t *q = x.q + q8_slot(x, t0 + t, g);
                int32_t dot = 0;
                if (m->kind == INT8) {
                    const int8_t *w = (const int8_t *)m->data + (r0 + r) * cols + g * GROUP;
                    for (int j = 0; j < GROUP; j++) dot += w[j] * q[j];
                    total += (float)dot * x.scale[q8_scale(x, t0 + t, g)];
                } else {
                    const uint8_t *b = (const uint8_t *)m->data + (r0 + r) * cols / 2 + g * GROUP / 2;
                    for (int j = 0; j < GROUP; j++) dot += (nibble(b, j) - 8) * q[j];
                    total += (float)dot * x.scale[q8_scale(x, t0 + t, g)] * m->scale[(r0 + r) * G + g];
                }
            }
            y[(t0 + t) * m->rows + r0 + r] = total * (m->kind == INT8 ? m->scale[r0 + r] : 1.f);
        }
}
#endif


/* -- AMX: int8 tiles for batches, where the CPU has them (Xeon Sapphire Rapids and later) ---------
 * A batch of streams makes an int8 matrix's products cost more than its bytes: VNNI does 64 per
 * instruction per core, and 8 streams of the 0.1B model then wait on vpdpbusd, not on memory. One
 * AMX tile product (tdpbssd) does 16 rows x 64 inputs x 16 streams. A is 16 rows of the weights as
 * they lie (a strided tile load: no repacking, one layout for every path), B the streams' int8
 * activations packed as AMX wants them (small: once per matrix and thread). Signed x signed, so no
 * +128 shift. Linux hands out the tile state only when asked (arch_prctl); ew_use_amx asks once. */
#if defined(EW_AVX512) && defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || __GNUC__ >= 11)
#define EW_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct { uint8_t palette, start; uint8_t reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } amx_config;

/* The activations of all T streams as tdpbssd's B operands, 16 streams (zero past T) a block of
 * groups x 1 KB: group g's tile row i holds streams 0..15's inputs 4i..4i+3. NULL where the tiles
 * are not for this product (AMX off, not an int8 matrix, a single stream) or without memory. */
static int8_t *amx_pack(const ew_matrix *m, q8_rows x) {
    if (!amx_on || (m->kind != INT8 && m->kind != INT4) || x.tokens < 2) return NULL;
    int64_t blocks = (x.tokens + 15) / 16;
    int8_t *packed = aligned_alloc(64, (size_t)(blocks * x.groups) * 1024);
    const __m512i streams = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                               _mm512_set1_epi32(16));   /* 64 bytes a stream, in int32s */
    for (int64_t t0 = 0; packed && t0 < x.tokens; t0 += 16) {
        __mmask16 here = (__mmask16)(x.tokens - t0 >= 16 ? 0xFFFF : (1u << (x.tokens - t0)) - 1);
        for (int64_t g = 0; g < x.groups; g++) {   /* a 16 x 16 transpose of int32s: the streams lie 64 bytes apart */
            const int32_t *in = (const int32_t *)(x.q + q8_slot(x, t0, g));
            int32_t *out = (int32_t *)(packed + (t0 / 16 * x.groups + g) * 1024);
            for (int i = 0; i < 16; i++)
                _mm512_store_si512(out + 16 * i, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), here,
                                                                           _mm512_add_epi32(streams, _mm512_set1_epi32(i)), in, 4));
        }
    }
    return packed;
}

/* acc [16 rows] (a lane a stream) into y's [stream][row] layout: y [t0 + n, r0 .. r0 + 16), n < nt */
static inline void amx_write(const __m512 acc[16], float *y, int64_t rows, int64_t r0, int64_t t0, int nt) {
    float out[16 * 16] __attribute__((aligned(64)));   /* [row][stream] */
    for (int r = 0; r < 16; r++) _mm512_store_ps(out + 16 * r, acc[r]);
    const __m512i column = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0);
    for (int n = 0; n < nt; n++)
        _mm512_storeu_ps(y + (t0 + n) * rows + r0, _mm512_i32gather_ps(_mm512_add_epi32(column, _mm512_set1_epi32(n)), out, 4));
}

/* y [t0 + n, r0 .. r0 + 16) for 16 rows of an INT8 matrix and nt <= 16 streams (packed by amx_pack).
 * Tiles: 0 and 1 accumulate the even and the odd groups (a product chains on its accumulator: two
 * chains keep the unit busy while the weights stream in), 4-5 their weights, 6-7 their activations.
 * Each span of groups adds up in integers, then the streams' scales apply in floats, into 16 registers:
 * accumulating in a buffer on the stack instead (32 rows at a time) cost a quarter of the weights'
 * streaming rate, measured. The weights are tile-loaded as they lie, 16 rows of 64 bytes with a
 * stride; the same group of the next 16 rows is prefetched with each, so that 32 lines are in flight,
 * not 16 (150 MB of 768-wide rows from DRAM, 8 streams, 2 cores: 26 -> 38 GB/s, against 40 for one
 * stream's row kernel; 3072-wide 38 -> 44). */
__attribute__((target("amx-tile,amx-int8")))
static void amx_rows_int8(const ew_matrix *m, int64_t r0, q8_rows x, const int8_t *packed, int64_t t0, int nt,
                          float *y) {
    const int64_t cols = m->cols, G = x.groups, rows = m->rows;
    const int8_t *w8 = (const int8_t *)m->data + r0 * cols;
    int32_t c[2][16 * 16] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += x.span) {
        int64_t g1 = g0 + x.span < G ? g0 + x.span : G, g = g0;
        _tile_zero(0);
        _tile_zero(1);
        for (; g + 2 <= g1; g += 2) {
            for (int i = 16; i < 32; i++) _mm_prefetch((const char *)(w8 + i * cols + g * GROUP), _MM_HINT_T0);
            for (int i = 16; i < 32; i++) _mm_prefetch((const char *)(w8 + i * cols + (g + 1) * GROUP), _MM_HINT_T0);
            _tile_loadd(6, packed + g * 1024, 64);
            _tile_loadd(4, w8 + g * GROUP, cols);
            _tile_dpbssd(0, 4, 6);
            _tile_loadd(7, packed + (g + 1) * 1024, 64);
            _tile_loadd(5, w8 + (g + 1) * GROUP, cols);
            _tile_dpbssd(1, 5, 7);
        }
        if (g < g1) {
            for (int i = 16; i < 32; i++) _mm_prefetch((const char *)(w8 + i * cols + g * GROUP), _MM_HINT_T0);
            _tile_loadd(6, packed + g * 1024, 64);
            _tile_loadd(4, w8 + g * GROUP, cols);
            _tile_dpbssd(0, 4, 6);
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        __m512 s = _mm512_maskz_loadu_ps((__mmask16)((1u << nt) - 1), x.scale + q8_scale(x, t0, g0));
        for (int r = 0; r < 16; r++) {
            __m512i dot = _mm512_add_epi32(_mm512_load_si512(c[0] + 16 * r), _mm512_load_si512(c[1] + 16 * r));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
        }
    }
    for (int r = 0; r < 16; r++) acc[r] = _mm512_mul_ps(acc[r], _mm512_set1_ps(m->scale[r0 + r]));
    amx_write(acc, y, rows, r0, t0, nt);
}

/* Loads the tile configuration (on) or releases the tiles (off): once per thread around the AMX
 * products of a phase, not per call (a chunk of rows: loading and releasing per chunk made 2 streams'
 * steps 16% slower). Released after: the thread may run other AMX code (oneDNN's, in torch) between. */
__attribute__((target("amx-tile")))
static void amx_tiles(int on) {
    static const amx_config config __attribute__((aligned(64))) = {
        1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
    if (on) _tile_loadconfig(&config);
    else _tile_release();
}

/* The same for 16 rows of an INT4 matrix: each group's weights of the 16 rows unpacked to signed
 * int8 (nibble - 8) in a 1 KB tile, two groups in flight (tiles 0-1, 4-5, 6-7 as above); each
 * group's products scaled by its row scales x the streams' scales into 16 float accumulators (one a
 * row, a lane a stream). VNNI took four instructions a token, row and group (the offset, the
 * product, the conversion, the scale's product): 8 int4 streams cost 5x one. */
__attribute__((target("amx-tile,amx-int8")))
static void amx_rows_int4(const ew_matrix *m, int64_t r0, q8_rows x, const int8_t *packed, int64_t t0, int nt,
                          float *y) {
    const int64_t cols = m->cols, G = x.groups, rows = m->rows;
    const uint8_t *w4 = (const uint8_t *)m->data + r0 * cols / 2;
    const float *ws = m->scale + r0 * G;
    const __m512i low = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
    const __mmask16 here = (__mmask16)((1u << nt) - 1);
    int8_t a[2][16 * 64] __attribute__((aligned(64)));
    int32_t c[2][16 * 16] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += 2) {
        int pair = g0 + 1 < G ? 2 : 1;
        for (int k = 0; k < pair; k++) {
            for (int r = 0; r < 16; r++) {   /* nibbles of inputs 0..31 (low) and 32..63 (high), in input order */
                const uint8_t *b = w4 + r * cols / 2 + (g0 + k) * 32;
                _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
                __m256i d = _mm256_loadu_si256((const __m256i *)b);
                __m512i n = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(d), _mm256_srli_epi16(d, 4), 1), low);
                _mm512_store_si512(a[k] + 64 * r, _mm512_sub_epi8(n, eight));
            }
        }
        _tile_zero(0);
        _tile_loadd(4, a[0], 64);
        _tile_loadd(6, packed + g0 * 1024, 64);
        _tile_dpbssd(0, 4, 6);
        if (pair == 2) {
            _tile_zero(1);
            _tile_loadd(5, a[1], 64);
            _tile_loadd(7, packed + (g0 + 1) * 1024, 64);
            _tile_dpbssd(1, 5, 7);
        }
        _tile_stored(0, c[0], 64);
        if (pair == 2) _tile_stored(1, c[1], 64);
        for (int k = 0; k < pair; k++) {
            __m512 xs = _mm512_maskz_loadu_ps(here, x.scale + q8_scale(x, t0, g0 + k));
            for (int r = 0; r < 16; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[k] + 16 * r)),
                                         _mm512_mul_ps(_mm512_set1_ps(ws[r * G + g0 + k]), xs), acc[r]);
        }
    }
    amx_write(acc, y, rows, r0, t0, nt);
}

/* Rows [first, end) of an INT8 or INT4 matrix for the T streams amx_pack packed, 16 at a time, with the
 * tiles configured (amx_tiles); returns the first row it left (fewer than 16 remain). */
__attribute__((target("amx-tile,amx-int8")))
static int64_t amx_rows(const ew_matrix *m, q8_rows x, const int8_t *packed, int64_t first, int64_t end, float *y) {
    int64_t r = first;
    for (int64_t t0 = 0; t0 < x.tokens; t0 += 16) {
        int nt = x.tokens - t0 < 16 ? (int)(x.tokens - t0) : 16;
        for (r = first; r + 16 <= end; r += 16)
            (m->kind == INT4 ? amx_rows_int4 : amx_rows_int8)(m, r, x, packed + t0 / 16 * x.groups * 1024, t0, nt, y);
    }
    return r;
}
#endif

/* Whether batches of int8 rows take AMX tiles: asks Linux for them the first time `want` is set,
 * on a CPU with AMX-INT8; returns whether they are in use. */
int ew_use_amx(int want) {
#ifdef EW_AMX
    static int granted = -1;
    if (want && granted < 0) {
        unsigned a, b, c, d;
        granted = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1) &&
                  syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    amx_on = want && granted > 0;
    return amx_on;
#else
    (void)want;
    return 0;
#endif
}

#ifndef Q8_INT8_SPAN
#define Q8_INT8_SPAN 1
#endif

/* x [T, cols] fp32 -> int8 as q8_rows holds it: groups of 64 inputs, one scale per `span` of them
 * (Q8_INT8_SPAN for an INT8 matrix, 1 for INT4), with the sum of q and each token's shift */
static q8_rows quantize_q8(const ew_matrix *m, const float *x, int64_t T, int8_t *q, float *scale, int32_t *sum,
                           float *shift, int threads) {
    const int64_t G = m->cols / GROUP, span = m->kind == INT8 ? Q8_INT8_SPAN : 1, spans = (G + span - 1) / span;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < T * spans; i++) {
        int64_t t = i / spans, g0 = i % spans * span, n = G - g0 < span ? G - g0 : span;
        quantize_groups(x + t * m->cols + g0 * GROUP, (int)n, q + (g0 * T + t) * GROUP, T * GROUP,
                        scale + g0 / span * T + t, sum + g0 / span * T + t);
    }
    for (int64_t t = 0; m->kind == INT8 && t < T; t++) {   /* only int8 kernels read it */
        float total = 0.f;
        for (int64_t k = 0; k < spans; k++) total += scale[k * T + t] * (float)sum[k * T + t];
        shift[t] = 128.f * total;
    }
    return (q8_rows){q, scale, sum, shift, G, T, span};
}

#define Q8_ROW_BLOCK 32   /* rows a thread takes at a time: their int4/int8 bytes stay in L1/L2 across all tokens */

/* y [T, rows] = x [T, cols] W^T, W INT8 or INT4 with cols a multiple of 64, activations in int8 (see
 * q8_block). x holds x_size floats, y y_size. */
int ew_gemm_q8(const ew_matrix *m, const float *x, int64_t x_size, int64_t T, float *y, int64_t y_size, int threads) {
    int status = check_matrix(m, -1, -1, "matrix", -1);
    if (status) return status;
    if (m->kind != INT8 && m->kind != INT4) return refuse("gemm_q8", -1, "the matrix is not int8 or int4");
    if (m->cols % GROUP) return refuse("gemm_q8", -1, "inputs must be whole groups of 64");
    if (T < 0 || T > MAX_DIM || !x || !y || x_size / (m->cols ? m->cols : 1) < T || y_size / (m->rows ? m->rows : 1) < T) {
        snprintf(problem_text, sizeof problem_text, "x or y is smaller than %lld rows", (long long)T);
        return SMALL_BUFFER;
    }
    int64_t cols = m->cols, G = cols / GROUP;
    threads = threads > 0 ? threads : 1;
    int8_t *q = malloc((size_t)(T * cols) + 1);
    float *scale = malloc(sizeof(float) * (size_t)(T * G + 1));
    int32_t *sum = malloc(sizeof(int32_t) * (size_t)(T * G + 1));
    float *shift = malloc(sizeof(float) * (size_t)(T + 1));
    if (!q || !scale || !sum || !shift) {
        free(q), free(scale), free(sum), free(shift);
        return OUT_OF_MEMORY;
    }
    q8_rows in = quantize_q8(m, x, T, q, scale, sum, shift, threads);
    int8_t *packed = NULL;
#ifdef EW_AMX
    packed = amx_pack(m, in);   /* once, for every thread */
#endif
    int64_t blocks = (m->rows + Q8_ROW_BLOCK - 1) / Q8_ROW_BLOCK;
#pragma omp parallel num_threads(threads)
    {
#ifdef EW_AMX
        if (packed) amx_tiles(1);
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < blocks; b++) {
            int64_t first = b * Q8_ROW_BLOCK, end = first + Q8_ROW_BLOCK < m->rows ? first + Q8_ROW_BLOCK : m->rows;
#ifdef EW_AMX
            if (packed) first = amx_rows(m, in, packed, first, end, y);
#endif
            int64_t t = 0;
            for (; t + 4 <= T; t += 4) {
                int64_t r = first;
                for (; r + 2 <= end; r += 2) q8_block(m, r, 2, in, t, 4, y);
                if (r < end) q8_block(m, r, 1, in, t, 4, y);
            }
            for (; t < T; t++)
                for (int64_t r = first; r < end; r++) q8_block(m, r, 1, in, t, 1, y);
        }
#ifdef EW_AMX
        if (packed) amx_tiles(0);
#endif
    }
    free(q), free(scale), free(sum), free(shift), free(packed);
    return OK;
}

/* 1 where ew_gemm_q8 has SIMD kernels (x86 with AVX2); elsewhere it is scalar, not worth measuring */
int ew_gemm_q8_simd(void) {
#ifdef EW_GEMM_Q8_SIMD
    return 1;
#else
    return 0;
#endif
}

/* Rows row0 .. row0 + rows of `m` as fp32 [rows, cols] in `out` (out_size floats): the weights a
 * prefill multiplies, a tile at a time. One pass, rows split across threads: dequantizing in
 * torch took several passes over every tile (int4: unpack, convert, offset, scale). */
int ew_dequantize(const ew_matrix *m, int64_t row0, int64_t rows, float *out, int64_t out_size, int threads) {
    int status = check_matrix(m, -1, -1, "matrix", -1);
    if (status) return status;
    int64_t cols = m->cols;
    if (row0 < 0 || rows < 0 || row0 + rows > m->rows || !out || (uintptr_t)out % 4 || out_size / (cols ? cols : 1) < rows) {
        snprintf(problem_text, sizeof problem_text, "dequantize: rows %lld..%lld of %d, or an output smaller than that",
                 (long long)row0, (long long)(row0 + rows), m->rows);
        return SMALL_BUFFER;
    }
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
    for (int64_t r = row0; r < row0 + rows; r++) {
        float *y = out + (size_t)(r - row0) * cols;
        if (m->kind == F32) {
            memcpy(y, (const float *)m->data + (size_t)r * cols, (size_t)cols * sizeof(float));
        } else if (m->kind == BF16) {
            const uint16_t *w = (const uint16_t *)m->data + (size_t)r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) y[c] = bf16_to_f32(w[c]);
        } else if (m->kind == INT8) {
            const int8_t *w = (const int8_t *)m->data + (size_t)r * cols;
            float scale = m->scale[r];
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) y[c] = (float)w[c] * scale;
        } else {
            int64_t groups = cols / GROUP;
            for (int64_t g = 0; g < groups; g++) {
                const uint8_t *b = (const uint8_t *)m->data + (size_t)r * cols / 2 + g * GROUP / 2;
                float scale = m->scale[r * groups + g], *yg = y + g * GROUP;
#pragma omp simd
                for (int j = 0; j < GROUP / 2; j++) {
                    yg[j] = (float)((b[j] & 15) - 8) * scale;
                    yg[j + GROUP / 2] = (float)((b[j] >> 4) - 8) * scale;
                }
            }
        }
    }
    return OK;
}

/* The WKV-7 recurrence over a prefill's T tokens (everything before and after it is matrix
 * work, batched over the tokens): per head, S = S diag(w) - (S kk) b^T + v k^T with b = kk * a,
 * and y = S r, token by token. S [H, N, N] is updated in place; r, w, k, v, kk, a and y are
 * [T, H * N]; S_size and sequence_size are the floats in S and in each of the others. Heads run in
 * parallel. */
int ew_wkv(int64_t T, int H, int N, float *S, const float *r, const float *w, const float *k, const float *v,
           const float *kk, const float *a, float *y, int64_t S_size, int64_t sequence_size, int threads) {
    int64_t C = (int64_t)H * N;
    if (T < 0 || H < 1 || N < 1 || N > MAX_HEAD_SIZE || H > MAX_DIM || !S || !r || !w || !k || !v || !kk || !a || !y ||
        S_size < C * N || sequence_size / C < T || ((uintptr_t)S | (uintptr_t)r | (uintptr_t)w | (uintptr_t)k |
                                                    (uintptr_t)v | (uintptr_t)kk | (uintptr_t)a | (uintptr_t)y) % 4) {
        snprintf(problem_text, sizeof problem_text, "wkv: a buffer is smaller than %lld tokens of %d heads of %d, "
                 "or misaligned", (long long)T, H, N);
        return SMALL_BUFFER;
    }
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
    for (int h = 0; h < H; h++) {
        float *state = S + (size_t)h * N * N, b[N];
        for (int64_t t = 0; t < T; t++) {
            size_t o = (size_t)t * C + (size_t)h * N;
#pragma omp simd
            for (int j = 0; j < N; j++) b[j] = kk[o + j] * a[o + j];
            for (int i = 0; i < N; i++) {
                float *row = state + (size_t)i * N, removed = 0.f, acc = 0.f;
#pragma omp simd reduction(+ : removed)
                for (int j = 0; j < N; j++) removed += row[j] * kk[o + j];
#pragma omp simd reduction(+ : acc)
                for (int j = 0; j < N; j++) {
                    row[j] = row[j] * w[o + j] + v[o + i] * k[o + j] - removed * b[j];
                    acc += row[j] * r[o + j];
                }
                y[o + i] = acc;
            }
        }
    }
    return OK;
}

/* Decode `token`: read the state from `in`, write the next state to `out` (may be the same
 * buffers) and the logits [vocab] to `logits` (logits_size floats). 0, or a status that
 * ew_problem() explains: nothing is written unless every size checks out. */
int ew_decode(const ew_model *m, int64_t token, const ew_state *in, ew_state *out, float *logits, int64_t logits_size,
              int threads) {
    int status = check_model(m);
    if (!status) status = check_state(m, in);
    if (!status) status = check_state(m, out);
    if (status) return status;
    if (token < 0 || token >= m->vocab) {
        snprintf(problem_text, sizeof problem_text, "token %lld is outside the vocabulary 0..%d", (long long)token, m->vocab - 1);
        return BAD_TOKEN;
    }
    if (!logits || logits_size < m->vocab) {
        snprintf(problem_text, sizeof problem_text, "the logits buffer is smaller than the vocabulary");
        return SMALL_BUFFER;
    }
    const float *att_in = in->att, *ffn_in = in->ffn, *S_in = in->S;
    float *att_out = out->att, *ffn_out = out->ffn, *S_out = out->S;
    int C = m->width, F = m->ffn, H = m->heads, N = m->head_size, rank = 0;
    for (int i = 0; i < m->layers; i++) {
        const ew_layer *L = &m->layer[i];
        int ranks[4] = {L->w1.rows, L->a1.rows, L->v1.rows, L->g1.rows};
        for (int j = 0; j < 4; j++) rank = ranks[j] > rank ? ranks[j] : rank;
    }
    float *buffer = calloc((size_t)C * 19 + F + 4 * (size_t)rank, sizeof(float));
    if (!buffer) return OUT_OF_MEMORY;
    scratch s;
    float *p = buffer;
    float **fields[] = {&s.x, &s.dx, &s.xa, &s.r, &s.k, &s.v, &s.v_first, &s.lw, &s.la, &s.lv, &s.g, &s.y};
    for (size_t j = 0; j < sizeof fields / sizeof *fields; j++, p += C) *fields[j] = p;
    s.mixed = p; p += 6 * (size_t)C;
    s.hidden = p; p += F;
    s.low = p;
    float *wl = s.low, *al = s.low + rank, *vl = s.low + 2 * rank, *gl = s.low + 3 * rank;

    if (m->emb.kind == INT8) {
        const int8_t *row = (const int8_t *)m->emb.data + token * C;
        for (int c = 0; c < C; c++) s.x[c] = row[c] * m->emb.scale[token];
    } else {
        memcpy(s.x, (const float *)m->emb.data + token * C, C * sizeof(float));
    }

    spin_barrier sync = {0};   /* shared by the team */
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        for (int i = 0; i < m->layers; i++) {
            const ew_layer *L = &m->layer[i];
            size_t state = (size_t)i * H * N * N;
#pragma omp master
            {
                if (i > 0)
                    for (int c = 0; c < C; c++) s.x[c] += s.dx[c];
                layer_norm(s.x, L->ln1_w.data, L->ln1_b.data, s.xa, C, 1e-5f);
                token_shift(s.xa, att_in + (size_t)i * C, att_out + (size_t)i * C, L->mix.data, 6, C, s.mixed);
            }
            team_barrier(&sync);
            const float *xr = s.mixed, *xw = s.mixed + C, *xk = s.mixed + 2 * C, *xv = s.mixed + 3 * C,
                        *xa = s.mixed + 4 * C, *xg = s.mixed + 5 * C;
            job first[] = {{&L->r, xr, s.r, NONE}, {&L->k, xk, s.k, NONE}, {&L->v, xv, s.v, NONE},
                           {&L->w1, xw, wl, TANH}, {&L->a1, xa, al, NONE}, {&L->g1, xg, gl, SIGMOID},
                           {&L->v1, xv, vl, NONE}};
            run_jobs(first, L->v1.rows ? 7 : 6, &sync);
            job second[] = {{&L->w2, wl, s.lw, NONE}, {&L->a2, al, s.la, NONE}, {&L->g2, gl, s.g, NONE},
                            {&L->v2, vl, s.lv, NONE}};
            run_jobs(second, L->v1.rows ? 4 : 3, &sync);
#pragma omp for schedule(static) nowait
            for (int h = 0; h < H; h++)
                time_mix_head(L, i, h, N, S_in + state + (size_t)h * N * N, S_out + state + (size_t)h * N * N, &s);
            team_barrier(&sync);
            job out[] = {{&L->o, s.y, s.dx, NONE}};
            run_jobs(out, 1, &sync);
#pragma omp master
            {
                for (int c = 0; c < C; c++) s.x[c] += s.dx[c];
                layer_norm(s.x, L->ln2_w.data, L->ln2_b.data, s.xa, C, 1e-5f);
                token_shift(s.xa, ffn_in + (size_t)i * C, ffn_out + (size_t)i * C, L->ffn_xk.data, 1, C, s.mixed);
            }
            team_barrier(&sync);
            job key[] = {{&L->fk, s.mixed, s.hidden, RELU_SQUARED}};
            run_jobs(key, 1, &sync);
            job value[] = {{&L->fv, s.hidden, s.dx, NONE}};
            run_jobs(value, 1, &sync);
        }
#pragma omp master
        {
            for (int c = 0; c < C; c++) s.x[c] += s.dx[c];
            layer_norm(s.x, m->ln_out_w.data, m->ln_out_b.data, s.xa, C, 1e-5f);
        }
        team_barrier(&sync);
        job head[] = {{&m->head, s.xa, logits, NONE}};
        run_jobs(head, 1, &sync);
    }
    free(buffer);
    return OK;
}

/* -- several streams at once (continuous batching) --------------------------------------- */

#define MAX_BATCH 256

/* The jobs of one phase for B streams: job.x is [B, cols], job.y [B, rows]. Threads take the rows
 * in chunks (claim_rows); each row is read once for all B streams. int8 and int4 rows go through the
 * int8-activation blocks of ew_gemm_q8 where they have SIMD code (4 streams x 2 rows in registers),
 * each thread quantizing the phase's inputs itself (a few KB: cheaper than a barrier). */
/* What a row costs a batch, in the same units as row_weight: streams multiply it, and then the
 * arithmetic binds, not the bytes; int8 and int4 rows take the int8 blocks (about 3x the products
 * per instruction of an fp32 or bf16 row's FMAs). */
static int64_t batch_row_weight(const ew_matrix *m) {
#ifdef EW_GEMM_Q8_SIMD
    int64_t cols = m->cols > 0 ? m->cols : 1;
    return (m->kind == INT8 || m->kind == INT4) && cols % GROUP == 0 ? cols : m->kind == BF16 ? 2 * cols : 3 * cols;
#else
    return row_weight(m);
#endif
}

#if defined(EW_AVX512) || defined(EW_AVX2)
#ifdef EW_AVX512
#define EW_BF16_LANES 16
#define ew_vf __m512
#define ew_vf_zero _mm512_setzero_ps
#define ew_vf_bf16 bf16x16
#define ew_vf_fmadd _mm512_fmadd_ps
#define ew_vf_load _mm512_loadu_ps
#define ew_vf_sum _mm512_reduce_add_ps
#else
#define EW_BF16_LANES 8
#define ew_vf __m256
#define ew_vf_zero _mm256_setzero_ps
#define ew_vf_bf16 bf16x8
#define ew_vf_fmadd _mm256_fmadd_ps
#define ew_vf_load _mm256_loadu_ps
#define ew_vf_sum hsum256
#endif
/* One bf16 row (a LoRA's) against n <= 8 inputs: each weight converted once for all of them, n FMA
 * chains as wide as the build's vectors */
static inline __attribute__((always_inline)) void dot_bf16_rows(const uint16_t *w, const float *x, int64_t cols, int n,
                                                                float *out) {
    ew_vf acc[8];
    for (int b = 0; b < n; b++) acc[b] = ew_vf_zero();
    int64_t c = 0;
    for (; c + EW_BF16_LANES <= cols; c += EW_BF16_LANES) {
        ew_vf wv = ew_vf_bf16(w + c);
        for (int b = 0; b < n; b++) acc[b] = ew_vf_fmadd(wv, ew_vf_load(x + b * cols + c), acc[b]);
    }
    for (int b = 0; b < n; b++) {
        float total = ew_vf_sum(acc[b]);
        for (int64_t k = c; k < cols; k++) total += bf16_to_f32(w[k]) * x[b * cols + k];
        out[b] = total;
    }
}
static void dot_bf16_8(const uint16_t *w, const float *x, int64_t cols, float *out) { dot_bf16_rows(w, x, cols, 8, out); }
#define EW_BF16_ROWS 8

#ifdef EW_AVX512
/* The sums of 16 vectors, lane i holding v[i]'s: pairs interleaved and added (4 floats of each per
 * 128-bit lane, then 1), then the 128-bit lanes folded: 45 operations for 16 sums, where 16
 * reduce_adds take ~120 */
static inline __attribute__((always_inline)) __m512 sum16(const __m512 v[16]) {
    __m512 q[4];
    for (int k = 0; k < 4; k++) {
        const __m512 *u = v + 4 * k;
        __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
        __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
        q[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))));
    }   /* q[k]: in each 128-bit lane, that lane's sums of v[4k .. 4k + 3] */
    __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(q[2], q[3], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(q[2], q[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Two consecutive bf16 rows against 8 inputs, out [2 x 8] (row-major): each input load serves both
 * rows, and the 16 sums come out of one sum16. A LoRA's second matrix has rows of 32-128 inputs,
 * where one row at a time spent more on its 8 reduce_adds than on its products (8 streams of the
 * 0.1B int8, in process: 6.81-6.97 -> 6.55-6.91 ms a step). Only for rows that short: the first
 * matrices' rows of 768 went slower in pairs (two weight streams side by side, as run_jobs found for
 * int8), the LoRAs' first phase at 8 streams 0.69-0.70 -> 0.61-0.62 ms a row at a time. */
#define BF16_PAIR_COLS 256
static inline __attribute__((always_inline)) void dot_bf16_2x8(const uint16_t *w, const float *x, int64_t cols,
                                                               float *out) {
    __m512 acc[16];
    for (int k = 0; k < 16; k++) acc[k] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 w0 = bf16x16(w + c), w1 = bf16x16(w + cols + c);
        for (int b = 0; b < 8; b++) {
            __m512 xb = _mm512_loadu_ps(x + b * cols + c);
            acc[b] = _mm512_fmadd_ps(w0, xb, acc[b]);
            acc[8 + b] = _mm512_fmadd_ps(w1, xb, acc[8 + b]);
        }
    }
    _mm512_storeu_ps(out, sum16(acc));
    for (; c < cols; c++)
        for (int b = 0; b < 8; b++) {
            out[b] += bf16_to_f32(w[c]) * x[b * cols + c];
            out[8 + b] += bf16_to_f32(w[cols + c]) * x[b * cols + c];
        }
}
#define EW_BF16_PAIRS 1
#endif
#endif

/* One thread's inputs of a job, quantized (and packed for AMX) the first time it takes a chunk of it */
typedef struct { int ready; int8_t *q, *packed; float *scale, *shift; int32_t *sum; q8_rows in; } batch_inputs;

static void batch_chunk(const job *jb, batch_inputs *p, int B, int64_t first, int64_t end, int *tiles) {
    const ew_matrix *m = jb->m;
    int64_t cols = m->cols, rows = m->rows;
    const float *x = jb->x;
    float *y = jb->y;
#ifdef EW_GEMM_Q8_SIMD
    if ((m->kind == INT8 || m->kind == INT4) && cols % GROUP == 0) {
        if (!p->ready) {
            int64_t G = cols / GROUP;
            p->ready = 1;
            p->q = malloc((size_t)(B * cols));
            p->scale = malloc(sizeof(float) * (size_t)(B * G));
            p->sum = malloc(sizeof(int32_t) * (size_t)(B * G));
            p->shift = malloc(sizeof(float) * (size_t)B);
            if (p->q && p->scale && p->sum && p->shift) {
                p->in = quantize_q8(m, x, B, p->q, p->scale, p->sum, p->shift, 1);   /* inside the team: this thread's own */
#ifdef EW_AMX
                p->packed = amx_pack(m, p->in);
#endif
            }
        }
        if (p->q && p->scale && p->sum && p->shift) {
            int64_t r = first;
#ifdef EW_AMX
            if (p->packed) {
                if (!*tiles) amx_tiles(1), *tiles = 1;
                r = amx_rows(m, p->in, p->packed, first, end, y);
            }
#endif
            for (; r + 2 <= end; r += 2) q8_block(m, r, 2, p->in, 0, B, y);
            if (r < end) q8_block(m, r, 1, p->in, 0, B, y);
            for (int b = 0; jb->activation != NONE && b < B; b++) activate_all(y + b * rows + first, end - first, jb->activation);
            return;
        }
    }
#endif
#ifdef EW_BF16_ROWS
    if (m->kind == BF16) {
        int b = 0;
        for (; b + EW_BF16_ROWS <= B; b += EW_BF16_ROWS) {
            int64_t r = first;
#ifdef EW_BF16_PAIRS
            for (; cols <= BF16_PAIR_COLS && r + 2 <= end; r += 2) {
                float out[2 * EW_BF16_ROWS];
                dot_bf16_2x8((const uint16_t *)m->data + r * cols, x + b * cols, cols, out);
                for (int k = 0; k < EW_BF16_ROWS; k++) {
                    y[(b + k) * rows + r] = activate(out[k], jb->activation);
                    y[(b + k) * rows + r + 1] = activate(out[EW_BF16_ROWS + k], jb->activation);
                }
            }
#endif
            for (; r < end; r++) {
                float out[EW_BF16_ROWS];
                dot_bf16_8((const uint16_t *)m->data + r * cols, x + b * cols, cols, out);
                for (int k = 0; k < EW_BF16_ROWS; k++) y[(b + k) * rows + r] = activate(out[k], jb->activation);
            }
        }
        for (int64_t r = first; b < B && r < end; r++) {   /* the streams past the last 8 */
            float out[EW_BF16_ROWS];
            dot_bf16_rows((const uint16_t *)m->data + r * cols, x + b * cols, cols, B - b, out);
            for (int k = 0; k < B - b; k++) y[(b + k) * rows + r] = activate(out[k], jb->activation);
        }
        return;
    }
#endif
    for (int64_t r = first; r < end; r++)
        for (int b = 0; b < B; b++)
            y[b * rows + r] = activate(row_dot(m, (int)r, x + b * cols), jb->activation);
}

#define BATCH_CHUNK 32768   /* units of batch_row_weight: 48 rows of a 768-wide int8 matrix */

static void run_jobs_batch(const job *jobs, int count, int B, spin_barrier *sync) {
    batch_inputs inputs[MAX_JOBS] = {{0}};
    int j, tiles = 0;
    int64_t first, end;
    chunk_plan plan = plan_chunks(jobs, count, batch_row_weight, BATCH_CHUNK, sync);
    while (claim_rows(jobs, &plan, &j, &first, &end))
        batch_chunk(&jobs[j], &inputs[j], B, first, end, &tiles);
#ifdef EW_AMX
    if (tiles) amx_tiles(0);
#endif
    for (j = 0; j < count; j++)
        free(inputs[j].q), free(inputs[j].scale), free(inputs[j].sum), free(inputs[j].shift), free(inputs[j].packed);
    team_barrier(sync);
}

/* B streams, one token each (tokens [B]), advanced together through every layer: the batched form
 * of ew_decode. states[b] is stream b's state, updated in place; logits [B, vocab]. */
int ew_decode_batch(const ew_model *m, int64_t B, const int64_t *tokens, ew_state *states, float *logits,
                    int64_t logits_size, int threads) {
    int status = check_model(m);
    if (status) return status;
    if (B < 1 || B > MAX_BATCH || !tokens || !states) {
        snprintf(problem_text, sizeof problem_text, "a batch is 1 to %d streams, each with a token and a state", MAX_BATCH);
        return SMALL_BUFFER;
    }
    for (int64_t b = 0; b < B; b++) {
        if ((status = check_state(m, &states[b]))) return status;
        if (tokens[b] < 0 || tokens[b] >= m->vocab) {
            snprintf(problem_text, sizeof problem_text, "token %lld is outside the vocabulary 0..%d",
                     (long long)tokens[b], m->vocab - 1);
            return BAD_TOKEN;
        }
    }
    if (!logits || logits_size / B < m->vocab) {
        snprintf(problem_text, sizeof problem_text, "the logits buffer is smaller than %lld x the vocabulary", (long long)B);
        return SMALL_BUFFER;
    }
    int C = m->width, F = m->ffn, H = m->heads, N = m->head_size, rank = 0;
    for (int i = 0; i < m->layers; i++) {
        const ew_layer *L = &m->layer[i];
        int ranks[4] = {L->w1.rows, L->a1.rows, L->v1.rows, L->g1.rows};
        for (int j = 0; j < 4; j++) rank = ranks[j] > rank ? ranks[j] : rank;
    }
    size_t BC = (size_t)B * C;
    float *buffer = calloc(BC * 18 + (size_t)B * F + 4 * (size_t)B * rank, sizeof(float));
    if (!buffer) return OUT_OF_MEMORY;
    scratch s;   /* every field [B, C] (mixed [6, B, C], hidden [B, F], low 4 x [B, rank]) */
    float *p = buffer;
    float **fields[] = {&s.x, &s.dx, &s.xa, &s.r, &s.k, &s.v, &s.v_first, &s.lw, &s.la, &s.lv, &s.g, &s.y};
    for (size_t j = 0; j < sizeof fields / sizeof *fields; j++, p += BC) *fields[j] = p;
    s.mixed = p; p += 6 * BC;
    s.hidden = p; p += (size_t)B * F;
    float *wl = p, *al = p + (size_t)B * rank, *vl = p + 2 * (size_t)B * rank, *gl = p + 3 * (size_t)B * rank;

    for (int64_t b = 0; b < B; b++) {
        float *x = s.x + b * C;
        if (m->emb.kind == INT8) {
            const int8_t *row = (const int8_t *)m->emb.data + tokens[b] * C;
            for (int c = 0; c < C; c++) x[c] = row[c] * m->emb.scale[tokens[b]];
        } else {
            memcpy(x, (const float *)m->emb.data + tokens[b] * C, C * sizeof(float));
        }
    }

    spin_barrier sync = {0};   /* shared by the team */
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        for (int i = 0; i < m->layers; i++) {
            const ew_layer *L = &m->layer[i];
            size_t state = (size_t)i * H * N * N;
#pragma omp for schedule(guided) nowait
            for (int64_t b = 0; b < B; b++) {
                float *x = s.x + b * C, *dx = s.dx + b * C, *xa = s.xa + b * C, *att = states[b].att + (size_t)i * C;
                if (i > 0)
                    for (int c = 0; c < C; c++) x[c] += dx[c];
                layer_norm(x, L->ln1_w.data, L->ln1_b.data, xa, C, 1e-5f);
                for (int j = 0; j < 6; j++)   /* the token shift, into mixed [6, B, C] */
#pragma omp simd
                    for (int c = 0; c < C; c++)
                        s.mixed[j * BC + b * C + c] = xa[c] + (att[c] - xa[c]) * L->mix.data[j * C + c];
                memcpy(att, xa, C * sizeof(float));
            }
            team_barrier(&sync);
            const float *xr = s.mixed, *xw = s.mixed + BC, *xk = s.mixed + 2 * BC, *xv = s.mixed + 3 * BC,
                        *xa = s.mixed + 4 * BC, *xg = s.mixed + 5 * BC;
            job first[] = {{&L->r, xr, s.r, NONE}, {&L->k, xk, s.k, NONE}, {&L->v, xv, s.v, NONE},
                           {&L->w1, xw, wl, TANH}, {&L->a1, xa, al, NONE}, {&L->g1, xg, gl, SIGMOID},
                           {&L->v1, xv, vl, NONE}};
            run_jobs_batch(first, L->v1.rows ? 7 : 6, (int)B, &sync);
            job second[] = {{&L->w2, wl, s.lw, NONE}, {&L->a2, al, s.la, NONE}, {&L->g2, gl, s.g, NONE},
                            {&L->v2, vl, s.lv, NONE}};
            run_jobs_batch(second, L->v1.rows ? 4 : 3, (int)B, &sync);
#pragma omp for schedule(guided) nowait
            for (int64_t bh = 0; bh < B * H; bh++) {
                int64_t b = bh / H;
                int h = (int)(bh % H);
                scratch sb = s;   /* stream b's rows of every field time_mix_head reads or writes */
                float **mine[] = {&sb.r, &sb.k, &sb.v, &sb.v_first, &sb.lw, &sb.la, &sb.lv, &sb.g, &sb.y};
                for (size_t j = 0; j < sizeof mine / sizeof *mine; j++) *mine[j] += b * C;
                float *S = states[b].S + state + (size_t)h * N * N;
                time_mix_head(L, i, h, N, S, S, &sb);
            }
            team_barrier(&sync);
            job out[] = {{&L->o, s.y, s.dx, NONE}};
            run_jobs_batch(out, 1, (int)B, &sync);
#pragma omp for schedule(guided) nowait
            for (int64_t b = 0; b < B; b++) {
                float *x = s.x + b * C, *dx = s.dx + b * C, *xa = s.xa + b * C, *ffn = states[b].ffn + (size_t)i * C;
                for (int c = 0; c < C; c++) x[c] += dx[c];
                layer_norm(x, L->ln2_w.data, L->ln2_b.data, xa, C, 1e-5f);
                token_shift(xa, ffn, ffn, L->ffn_xk.data, 1, C, s.mixed + b * C);
            }
            team_barrier(&sync);
            job key[] = {{&L->fk, s.mixed, s.hidden, RELU_SQUARED}};
            run_jobs_batch(key, 1, (int)B, &sync);
            job value[] = {{&L->fv, s.hidden, s.dx, NONE}};
            run_jobs_batch(value, 1, (int)B, &sync);
        }
#pragma omp for schedule(guided) nowait
        for (int64_t b = 0; b < B; b++) {
            float *x = s.x + b * C, *dx = s.dx + b * C;
            for (int c = 0; c < C; c++) x[c] += dx[c];
            layer_norm(x, m->ln_out_w.data, m->ln_out_b.data, s.xa + b * C, C, 1e-5f);
        }
        team_barrier(&sync);
        job head[] = {{&m->head, s.xa, logits, NONE}};
        run_jobs_batch(head, 1, (int)B, &sync);
    }
    free(buffer);
    return OK;
}

/* -- sampling ------------------------------------------------------------------------------ */

#define DRAW_BLOCK 256   /* sampling.py's _draw: the same blocks, so that the same u draws the same token */

/* tokens[b] for each row b of logits [B, V]: its argmax (the first) where temperature[b] is 0, else
 * the draw at u[b] in [0, 1) from softmax(row / temperature[b]) over the whole vocabulary: the
 * inverse CDF in two levels as sampling.py's _draw finds it (the sums of blocks of 256 in doubles,
 * then one block), on the same exponentials as numpy's up to exp_approx's 2 ulp. One pass over a row
 * for its range, one for the block sums, where numpy made five and a vocabulary-sized array each;
 * rows shared across `threads`. 8 streams of a server sampled serially in Python for ~1 ms a step.
 * NOT_FINITE (nothing drawn) when a row holds NaN or an infinity: the model's weights are damaged. */
int ew_sample(const float *logits, int64_t B, int64_t V, const float *temperature, const double *u,
              int64_t *tokens, int threads) {
    if (B < 1 || V < 1 || V > MAX_DIM || !logits || !temperature || !u || !tokens) {
        snprintf(problem_text, sizeof problem_text, "sampling needs 1 or more rows of 1 to %d logits", MAX_DIM);
        return SMALL_BUFFER;
    }
    int damaged = 0;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(dynamic, 1) if (B > 1) reduction(|: damaged)
    for (int64_t b = 0; b < B; b++) {
        const float *x = logits + b * V;
        float top = x[0], check = 0.f;   /* x - x: 0 where finite, NaN for NaN or an infinity (a comparison skips NaN) */
#pragma omp simd reduction(max: top) reduction(+: check)
        for (int64_t i = 0; i < V; i++) {
            top = x[i] > top ? x[i] : top;
            check += x[i] - x[i];
        }
        if (check != 0.f) {
            damaged = 1;
            continue;
        }
        if (temperature[b] == 0.f) {
            int64_t i = 0;
            while (x[i] != top) i++;
            tokens[b] = i;
            continue;
        }
        const float inv = 1.f / temperature[b];
        int64_t blocks = (V + DRAW_BLOCK - 1) / DRAW_BLOCK;
        double sums[blocks], total = 0.0;   /* the running sums of the blocks */
        for (int64_t k = 0; k < blocks; k++) {
            int64_t lo = k * DRAW_BLOCK, hi = lo + DRAW_BLOCK < V ? lo + DRAW_BLOCK : V;
            double sum = 0.0;
#pragma omp simd reduction(+: sum)
            for (int64_t i = lo; i < hi; i++) sum += (double)exp_approx((x[i] - top) * inv);
            sums[k] = total += sum;
        }
        double target = u[b] * total, before = 0.0;
        int64_t k = 0;
        while (k < blocks - 1 && sums[k] <= target) k++;   /* the first block whose running sum passes it */
        if (k) before = sums[k - 1];
        int64_t i = k * DRAW_BLOCK, hi = i + DRAW_BLOCK < V ? i + DRAW_BLOCK : V;
        for (double inside = 0.0; i < hi - 1; i++)
            if ((inside += (double)exp_approx((x[i] - top) * inv)) > target - before) break;
        tokens[b] = i;
    }
    if (damaged) {
        snprintf(problem_text, sizeof problem_text, "the logits are not finite (NaN or inf)");
        return NOT_FINITE;
    }
    return OK;
}
