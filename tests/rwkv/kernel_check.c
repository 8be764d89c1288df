/* The RWKV kernels without Python, for a CPU this machine only emulates (aarch64 under qemu-user):
 * a deterministic random model, every matrix kind through ew_matmul, and decode steps through
 * ew_decode, printed as numbers. test_kernels_aarch64.py compiles this file once per variant and
 * compares the builds: each other and the x86 builds, whose kernels test_native.py holds to the
 * torch oracle.
 *
 *   kernel_check            prints "features <ew_features()>", then "matmul <kind> y..." and
 *                           "decode <kind> logits..." lines
 */
#include "../../src/edgewise/rwkv/_decode.c"

#include <stdio.h>

enum { L = 2, C = 128, H = 2, N = 64, F = 512, V = 320, R = 32 };

static uint32_t seed = 12345;
static float rnd(void) {   /* uniform in [-1, 1), the same on every machine */
    seed = seed * 1664525u + 1013904223u;
    return (float)(seed >> 8) / 16777216.f * 2.f - 1.f;
}

static float *floats(size_t n, float scale, float offset) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = offset + scale * rnd();
    return p;
}

/* A [rows, cols] matrix of `kind` made from fp32 weights w, quantized as edgewise.rwkv.quant does. */
static ew_matrix matrix(int kind, int rows, int cols, const float *w) {
    ew_matrix m = {kind, rows, cols, 0, NULL, NULL, 0, 0};
    size_t count = (size_t)rows * cols;
    if (kind == F32) {
        float *d = malloc(count * 4);
        memcpy(d, w, count * 4);
        m.data = d, m.data_bytes = (int64_t)count * 4;
    } else if (kind == BF16) {
        uint16_t *d = malloc(count * 2);
        for (size_t i = 0; i < count; i++) {
            uint32_t u;
            memcpy(&u, &w[i], 4);
            d[i] = (uint16_t)(u >> 16);
        }
        m.data = d, m.data_bytes = (int64_t)count * 2;
    } else if (kind == INT8) {
        int8_t *d = malloc(count);
        float *s = malloc(rows * 4);
        for (int r = 0; r < rows; r++) {
            float top = 1e-8f;
            for (int c = 0; c < cols; c++) top = fmaxf(top, fabsf(w[(size_t)r * cols + c]));
            s[r] = top / 127.f;
            for (int c = 0; c < cols; c++) d[(size_t)r * cols + c] = (int8_t)nearbyintf(w[(size_t)r * cols + c] / s[r]);
        }
        m.data = d, m.scale = s, m.data_bytes = (int64_t)count, m.scale_count = rows;
    } else {   /* int4: byte j of a group holds input j (low nibble) and j + 32 (high) */
        int groups = cols / GROUP;
        uint8_t *d = calloc(count / 2, 1);
        float *s = malloc((size_t)rows * groups * 4);
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) {
                const float *wg = w + (size_t)r * cols + g * GROUP;
                float top = 1e-8f;
                for (int j = 0; j < GROUP; j++) top = fmaxf(top, fabsf(wg[j]));
                float scale = top / 7.f;
                s[(size_t)r * groups + g] = scale;
                uint8_t *b = d + ((size_t)r * cols + g * GROUP) / 2;
                for (int j = 0; j < GROUP; j++) {
                    int q = (int)nearbyintf(wg[j] / scale);
                    q = (q < -8 ? -8 : q > 7 ? 7 : q) + 8;
                    b[j % 32] |= (uint8_t)(j < 32 ? q : q << 4);
                }
            }
        m.data = d, m.scale = s, m.data_bytes = (int64_t)count / 2, m.scale_count = (int64_t)rows * groups;
    }
    return m;
}

static ew_matrix random_matrix(int kind, int rows, int cols, float scale) {
    float *w = floats((size_t)rows * cols, scale, 0.f);
    ew_matrix m = matrix(kind, rows, cols, w);
    free(w);
    return m;
}

static ew_vector vector(size_t n, float scale, float offset) { return (ew_vector){floats(n, scale, offset), (int64_t)n}; }

static void print(const char *what, const char *kind, const float *y, int n) {
    printf("%s %s", what, kind);
    for (int i = 0; i < n; i++) printf(" %.9g", y[i]);
    printf("\n");
}

int main(void) {
    const char *names[] = {"f32", "bf16", "int8", "int4"};
    printf("features %d\n", ew_features());
    for (int kind = F32; kind <= INT4; kind++) {   /* 96 x 192: an odd number of int4 groups per row */
        ew_matrix m = random_matrix(kind, 96, 192, 1.f);
        float *x = floats(2 * 192, 1.f, 0.f), y[2 * 96];
        if (ew_matmul(&m, x, 2 * 192, 2, y, 2 * 96, 2)) return 1;
        print("matmul", names[kind], y, 2 * 96);
    }
    for (int kind = F32; kind <= INT4; kind += kind == F32 ? 2 : 1) {   /* models: fp32, int8, int4 */
        seed = 777;
        ew_layer layers[L];
        int lora = kind == F32 ? F32 : BF16, ranks[4] = {16, 16, 8, R};
        for (int i = 0; i < L; i++) {
            ew_layer *l = &layers[i];
            l->ln1_w = vector(C, 0.1f, 1.f), l->ln1_b = vector(C, 0.1f, 0.f);
            l->ln2_w = vector(C, 0.1f, 1.f), l->ln2_b = vector(C, 0.1f, 0.f);
            l->mix = vector(6 * C, 0.5f, 0.5f);
            l->w0 = vector(C, 0.5f, -0.5f), l->a0 = vector(C, 0.5f, 0.f), l->v0 = vector(C, 0.5f, 0.f);
            l->k_k = vector(C, 0.2f, 0.8f), l->k_a = vector(C, 0.2f, 0.8f), l->r_k = vector(C, 0.2f, 0.f);
            l->lnx_w = vector(C, 0.1f, 1.f), l->lnx_b = vector(C, 0.1f, 0.f), l->ffn_xk = vector(C, 0.5f, 0.5f);
            ew_matrix *down[] = {&l->w1, &l->a1, &l->v1, &l->g1}, *up[] = {&l->w2, &l->a2, &l->v2, &l->g2};
            for (int j = 0; j < 4; j++) {
                int rank = j == 2 && i == 0 ? 0 : ranks[j];
                *down[j] = rank ? random_matrix(lora, rank, C, 0.1f) : (ew_matrix){0};
                *up[j] = rank ? random_matrix(lora, C, rank, 0.1f) : (ew_matrix){0};
            }
            l->r = random_matrix(kind, C, C, 0.1f), l->k = random_matrix(kind, C, C, 0.1f);
            l->v = random_matrix(kind, C, C, 0.1f), l->o = random_matrix(kind, C, C, 0.1f);
            l->fk = random_matrix(kind, F, C, 0.1f), l->fv = random_matrix(kind, C, F, 0.05f);
        }
        ew_model model = {L, C, H, N, F, V, layers, random_matrix(kind == F32 ? F32 : INT8, V, C, 1.f),
                          vector(C, 0.1f, 1.f), vector(C, 0.1f, 0.f), random_matrix(kind, V, C, 0.1f)};
        float *att = calloc(L * C, 4), *ffn = calloc(L * C, 4), *S = calloc((size_t)L * C * N, 4), logits[V];
        ew_state state = {att, ffn, S, L * C, L * C, (int64_t)L * C * N};
        int tokens[] = {1, 5, 77, 3, 42, 200, 7, 9};
        for (int t = 0; t < 8; t++)
            if (ew_decode(&model, tokens[t], &state, &state, logits, V, 2)) {
                fprintf(stderr, "ew_decode: %s\n", ew_problem());
                return 1;
            }
        print("decode", names[kind], logits, V);
    }
    return 0;
}
