/* One RWKV-7 decode step (one token, every layer) in a single call: the fused path of
 * edgewise.rwkv.runtime. Compiled on first use by native.py; the torch path is the fallback
 * and the oracle (tests compare the two).
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
 * (symmetric, one scale per group of 64: llama.cpp's Q4 x Q8) where the CPU has AVX512-VNNI:
 * converting nibbles to floats made int4 decode bound by arithmetic, not memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(EW_SCALAR)
#include <immintrin.h>
#define EW_AVX512 1
#endif

enum { F32 = 0, BF16 = 1, INT8 = 2, INT4 = 3 };
enum { NONE = 0, TANH = 1, SIGMOID = 2, RELU_SQUARED = 3 };
#define GROUP 64
/* The int8, int4 and bf16 kernels prefetch this far ahead in the weight stream: the hardware prefetcher
 * alone leaves int8/int4 decode short of the bandwidth (measured 7-14% faster at 4-16 KB). */
#define PREFETCH 8192

typedef struct {
    int32_t kind, rows, cols, unused;
    const void *data;
    const float *scale;
} ew_matrix;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const float *mix;                        /* [6, C]: x_r x_w x_k x_v x_a x_g */
    const float *w0, *a0, *v0, *k_k, *k_a, *r_k, *lnx_w, *lnx_b, *ffn_xk;
    ew_matrix w1, w2, a1, a2, v1, v2, g1, g2; /* LoRA, [out, in]; v1.rows == 0 in layer 0 */
    ew_matrix r, k, v, o, fk, fv;
} ew_layer;

typedef struct {
    int32_t layers, width, heads, head_size, ffn, vocab;
    const ew_layer *layer;
    ew_matrix emb;                           /* [vocab, C], F32 or INT8: one row looked up */
    const float *ln_out_w, *ln_out_b;
    ew_matrix head;
} ew_model;

/* -- dot products: one output of a matrix-vector product ------------------------------- */

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

#else  /* portable: the compiler vectorises what it can */
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

#if defined(EW_AVX512) && defined(__AVX512VNNI__)
#define EW_INT4_VNNI 1

/* The inputs of an int4 product, quantized per group of 64 and laid out for `dot_int4_vnni`:
 * per pair of groups (g, g + 1), 128 bytes: inputs 0..31 of g, of g + 1, then 32..63 of g,
 * of g + 1; and 16 lanes (8 per group) of the group's scale and of its sum of q (the -8
 * offset). A last unpaired group keeps its 64 inputs in order. */
typedef struct { int8_t *q; int32_t *sum; float *scale; } int4_inputs;

static void prepare_int4(const float *x, int n, int4_inputs in) {
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
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[r], inverse));   /* round to nearest */
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

static float dot_int4_vnni(const uint8_t *w, const float *scale, int4_inputs in, int n) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps();
    int groups = n / GROUP, g = 0;
    for (; g + 2 <= groups; g += 2) {
        __m512i d = _mm512_loadu_si512(w + g * GROUP / 2);
        _mm_prefetch((const char *)(w + g * GROUP / 2) + PREFETCH, _MM_HINT_T0);
        const int8_t *xq = in.q + g * GROUP;
        /* per 32-bit lane: 4 nibbles x 4 inputs, twice; lanes 0-7 group g, 8-15 group g + 1 */
        __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(d, low), _mm512_loadu_si512(xq));
        dot = _mm512_dpbusd_epi32(dot, _mm512_and_si512(_mm512_srli_epi16(d, 4), low), _mm512_loadu_si512(xq + 64));
        dot = _mm512_sub_epi32(dot, _mm512_loadu_si512(in.sum + g * 8));   /* 8 lanes x sum = 8 sum: the offset */
        __m512 s = _mm512_mul_ps(_mm512_insertf32x8(_mm512_set1_ps(scale[g]), _mm256_set1_ps(scale[g + 1]), 1),
                                 _mm512_loadu_ps(in.scale + g * 8));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
    }
    float total = _mm512_reduce_add_ps(acc);
    if (g < groups) {  /* a last unpaired group */
        const uint8_t *b = w + g * GROUP / 2;
        const int8_t *xq = in.q + g * GROUP;
        int sum = 0;
        for (int j = 0; j < GROUP; j++) sum += (nibble(b, j) - 8) * xq[j];
        total += (float)sum * scale[g] * in.scale[g * 8];
    }
    return total;
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
    x = x < -87.3f ? -87.3f : x > 88.3f ? 88.3f : x;   /* not fminf/fmaxf: those block vectorising */
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
    case RELU_SQUARED: y = fmaxf(y, 0.f); return y * y;  /* no branch: a mispredict flushes the loads in flight */
    default: return y;
    }
}

/* Called by every thread of the team: each takes a contiguous share of all rows of all jobs,
 * balanced by weights read; ends with a barrier. */
static void run_jobs(const job *jobs, int count) {
    int64_t total = 0;
    for (int j = 0; j < count; j++) total += (int64_t)jobs[j].m->rows * jobs[j].m->cols;
    int t = omp_get_thread_num(), threads = omp_get_num_threads();
    int64_t lo = total * t / threads, hi = total * (t + 1) / threads, pos = 0;
    for (int j = 0; j < count; j++) {
        const ew_matrix *m = jobs[j].m;
        int64_t cols = m->cols, size = (int64_t)m->rows * cols;
        if (pos + size > lo && pos < hi) {  /* a row belongs to the thread whose share holds its start */
            int first = lo > pos ? (int)((lo - pos + cols - 1) / cols) : 0;
            int end = hi < pos + size ? (int)((hi - pos + cols - 1) / cols) : m->rows;
#ifdef EW_INT4_VNNI
            int int4 = m->kind == INT4, pairs = cols / GROUP / 2 + 1;
            int8_t q[int4 ? cols : 1];
            int32_t sums[int4 ? pairs * 16 : 1];
            float scales[int4 ? pairs * 16 : 1];
            int4_inputs in = {q, sums, scales};
            if (int4) prepare_int4(jobs[j].x, m->cols, in);
#endif
            for (int r = first; r < end; r++) {
#ifdef EW_INT4_VNNI
                float y = int4 ? dot_int4_vnni((const uint8_t *)m->data + r * cols / 2, m->scale + r * (cols / GROUP), in, m->cols)
                               : row_dot(m, r, jobs[j].x);
#else
                float y = row_dot(m, r, jobs[j].x);
#endif
                jobs[j].y[r] = activate(y, jobs[j].activation);
            }
        }
        pos += size;
    }
#pragma omp barrier
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

/* One head of the time mix, after the matrix products: decay, in-context learning rate, the
 * WKV state update and read-out, group norm, bonus, gate. Returns into s->y. */
static void time_mix_head(const ew_layer *L, int layer, int h, int N, const float *S_in, float *S_out, scratch *sc) {
    int o = h * N;
    const float *w0 = L->w0 + o, *a0 = L->a0 + o, *v0 = L->v0 + o, *k_k = L->k_k + o, *k_a = L->k_a + o, *r_k = L->r_k + o;
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
        sc->y[o + i] = ((y[i] - mean) * inv * L->lnx_w[o + i] + L->lnx_b[o + i] + bonus * v[i]) * g[i];
}

/* -- the step ---------------------------------------------------------------------------- */

int ew_abi_version(void) { return 1; }

/* Which kernels this build has: 1 AVX-512, 2 int4 x int8 by VNNI */
int ew_features(void) {
    int features = 0;
#ifdef EW_AVX512
    features |= 1;
#endif
#ifdef EW_INT4_VNNI
    features |= 2;
#endif
    return features;
}

/* y [T, rows] = x [T, cols] W^T for a few rows of x (a short prompt, or the head after a
 * prefill): the same kernels as decode. */
int ew_matmul(const ew_matrix *m, const float *x, int64_t T, float *y, int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    for (int64_t t = 0; t < T; t++) {
        job one = {m, x + t * m->cols, y + t * m->rows, NONE};
        run_jobs(&one, 1);
    }
    return 0;
}

/* Decode `token`: read the state (att_prev [L, C], ffn_prev [L, C], S [L, H, N, N]) from
 * *_in, write the next state to *_out (may be the same buffers) and the logits [vocab]. */
int ew_decode(const ew_model *m, int64_t token, const float *att_in, const float *ffn_in, const float *S_in,
              float *att_out, float *ffn_out, float *S_out, float *logits, int threads) {
    int C = m->width, F = m->ffn, H = m->heads, N = m->head_size, rank = 0;
    for (int i = 0; i < m->layers; i++) {
        const ew_layer *L = &m->layer[i];
        int ranks[4] = {L->w1.rows, L->a1.rows, L->v1.rows, L->g1.rows};
        for (int j = 0; j < 4; j++) rank = ranks[j] > rank ? ranks[j] : rank;
    }
    float *buffer = calloc((size_t)C * 19 + F + 4 * (size_t)rank, sizeof(float));
    if (!buffer) return 1;
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

#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        for (int i = 0; i < m->layers; i++) {
            const ew_layer *L = &m->layer[i];
            size_t state = (size_t)i * H * N * N;
#pragma omp master
            {
                if (i > 0)
                    for (int c = 0; c < C; c++) s.x[c] += s.dx[c];
                layer_norm(s.x, L->ln1_w, L->ln1_b, s.xa, C, 1e-5f);
                token_shift(s.xa, att_in + (size_t)i * C, att_out + (size_t)i * C, L->mix, 6, C, s.mixed);
            }
#pragma omp barrier
            const float *xr = s.mixed, *xw = s.mixed + C, *xk = s.mixed + 2 * C, *xv = s.mixed + 3 * C,
                        *xa = s.mixed + 4 * C, *xg = s.mixed + 5 * C;
            job first[] = {{&L->r, xr, s.r, NONE}, {&L->k, xk, s.k, NONE}, {&L->v, xv, s.v, NONE},
                           {&L->w1, xw, wl, TANH}, {&L->a1, xa, al, NONE}, {&L->g1, xg, gl, SIGMOID},
                           {&L->v1, xv, vl, NONE}};
            run_jobs(first, L->v1.rows ? 7 : 6);
            job second[] = {{&L->w2, wl, s.lw, NONE}, {&L->a2, al, s.la, NONE}, {&L->g2, gl, s.g, NONE},
                            {&L->v2, vl, s.lv, NONE}};
            run_jobs(second, L->v1.rows ? 4 : 3);
#pragma omp for schedule(static)
            for (int h = 0; h < H; h++)
                time_mix_head(L, i, h, N, S_in + state + (size_t)h * N * N, S_out + state + (size_t)h * N * N, &s);
            job out[] = {{&L->o, s.y, s.dx, NONE}};
            run_jobs(out, 1);
#pragma omp master
            {
                for (int c = 0; c < C; c++) s.x[c] += s.dx[c];
                layer_norm(s.x, L->ln2_w, L->ln2_b, s.xa, C, 1e-5f);
                token_shift(s.xa, ffn_in + (size_t)i * C, ffn_out + (size_t)i * C, L->ffn_xk, 1, C, s.mixed);
            }
#pragma omp barrier
            job key[] = {{&L->fk, s.mixed, s.hidden, RELU_SQUARED}};
            run_jobs(key, 1);
            job value[] = {{&L->fv, s.hidden, s.dx, NONE}};
            run_jobs(value, 1);
        }
#pragma omp master
        {
            for (int c = 0; c < C; c++) s.x[c] += s.dx[c];
            layer_norm(s.x, m->ln_out_w, m->ln_out_b, s.xa, C, 1e-5f);
        }
#pragma omp barrier
        job head[] = {{&m->head, s.xa, logits, NONE}};
        run_jobs(head, 1);
    }
    free(buffer);
    return 0;
}
