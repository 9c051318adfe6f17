/* The fused trainer's bf16 GEMM tiles and the bf16 copies of rows (see
 * trainer_gemm_bf16.h for the operand layout and the levels).
 *
 * Every function here is compiled once per instruction set (the always_inline
 * bodies take the target of the function they are inlined into), never with a
 * target for the whole file: the module runs on any x86-64.
 *
 * Tile shapes.  vdpbf16ps multiplies a zmm of 16 pairs of B (a 16-wide column
 * panel, two K rows) by a broadcast pair of A: one instruction per tile row and
 * K pair, so a 6 x 16 tile has only 6 independent accumulators, fewer than the
 * instruction's latency x throughput on Zen 4; the AVX-512 loop therefore runs
 * two row tiles at once (12 accumulators sharing each B load), then applies the
 * two tiles' epilogues as usual.  The AVX2 emulation has 12 ymm accumulators in
 * one tile already (two halves of 8 columns).
 */
#include "trainer_gemm_bf16.h"

/* ------------------------------------------------------ scalar microkernel */

static inline float bf16_hi(uint32_t p)
{
    uint32_t u = p & 0xffff0000u;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline float bf16_lo(uint32_t p)
{
    uint32_t u = p << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* T[6][16] = A @ B over KP pairs; each pair adds the high product, then the low
 * one (exact products: the same bits as FMAs in that order). */
static void mkb_scalar(ptrdiff_t KP, const uint32_t *A, ptrdiff_t rsa, ptrdiff_t csa,
                       const uint32_t *B, ptrdiff_t ldb, float *T)
{
    for (int i = 0; i < MR * NR; i++) T[i] = 0.0f;
    for (ptrdiff_t kp = 0; kp < KP; kp++) {
        const uint32_t *bk = B + kp * ldb;
        float bh[NR], bl[NR];
        for (int j = 0; j < NR; j++) { bh[j] = bf16_hi(bk[j]); bl[j] = bf16_lo(bk[j]); }
        for (int i = 0; i < MR; i++) {
            uint32_t a = A[i * rsa + kp * csa];
            float ah = bf16_hi(a), al = bf16_lo(a);
            for (int j = 0; j < NR; j++) {
                float t = T[i * NR + j] + ah * bh[j];
                T[i * NR + j] = t + al * bl[j];
            }
        }
    }
}

#if FNN_X86
/* ---------------------------------------------------- AVX2 emulation (levels 1-2) */

FNN_TARGET_AVX2
static void mkb_avx2(ptrdiff_t KP, const uint32_t *A, ptrdiff_t rsa, ptrdiff_t csa,
                     const uint32_t *B, ptrdiff_t ldb, float *T)
{
    __m256 c[2 * MR];
    const __m256i mh = _mm256_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 12
    for (int i = 0; i < 2 * MR; i++) c[i] = _mm256_setzero_ps();
    for (ptrdiff_t kp = 0; kp < KP; kp++) {
        const uint32_t *bk = B + kp * ldb, *ak = A + kp * csa;
        __m256i b0 = _mm256_loadu_si256((const __m256i *)bk);
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(bk + 8));
        __m256 b0h = _mm256_castsi256_ps(_mm256_and_si256(b0, mh));
        __m256 b0l = _mm256_castsi256_ps(_mm256_slli_epi32(b0, 16));
        __m256 b1h = _mm256_castsi256_ps(_mm256_and_si256(b1, mh));
        __m256 b1l = _mm256_castsi256_ps(_mm256_slli_epi32(b1, 16));
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256i a = _mm256_set1_epi32((int)ak[i * rsa]);
            __m256 ah = _mm256_castsi256_ps(_mm256_and_si256(a, mh));
            __m256 al = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
            c[2 * i] = _mm256_fmadd_ps(al, b0l, _mm256_fmadd_ps(ah, b0h, c[2 * i]));
            c[2 * i + 1] = _mm256_fmadd_ps(al, b1l, _mm256_fmadd_ps(ah, b1h, c[2 * i + 1]));
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < 2 * MR; i++) _mm256_store_ps(T + 8 * i, c[i]);
}

/* ------------------------------------------------- AVX512_BF16 (level 3) */

/* ROWS = 6 (one tile, A0) or 12 (two tiles: A0 rows 0-5, A1 rows 6-11); acc: add
 * to the sums in T (a later K block) instead of starting from zero. */
#define MKB_X512_BODY(ROWS)                                                          \
    __m512 c[ROWS];                                                                  \
    _Pragma("GCC unroll 12")                                                         \
    for (int i = 0; i < ROWS; i++) c[i] = acc ? _mm512_load_ps(T + NR * i) : _mm512_setzero_ps(); \
    for (ptrdiff_t kp = 0; kp < KP; kp++) {                                          \
        __m512bh b = (__m512bh)_mm512_loadu_si512((const void *)(B + kp * ldb));     \
        const uint32_t *a0 = A0 + kp * csa;                                          \
        _Pragma("GCC unroll 6")                                                      \
        for (int i = 0; i < MR; i++)                                                 \
            c[i] = _mm512_dpbf16_ps(c[i], (__m512bh)_mm512_set1_epi32((int)a0[i * rsa]), b); \
        if (ROWS > MR) {                                                             \
            const uint32_t *a1 = A1 + kp * csa;                                      \
            _Pragma("GCC unroll 6")                                                  \
            for (int i = 0; i < MR; i++)                                             \
                c[MR + i] = _mm512_dpbf16_ps(c[MR + i],                              \
                                             (__m512bh)_mm512_set1_epi32((int)a1[i * rsa]), b); \
        }                                                                            \
    }                                                                                \
    _Pragma("GCC unroll 12")                                                         \
    for (int i = 0; i < ROWS; i++) _mm512_store_ps(T + NR * i, c[i]);

FNN_TARGET_AVX512BF16
static void mkb_x512_6a(ptrdiff_t KP, const uint32_t *A0, ptrdiff_t rsa, ptrdiff_t csa,
                        const uint32_t *B, ptrdiff_t ldb, float *T, int acc)
{
    const uint32_t *A1 = A0;
    (void)A1;
    MKB_X512_BODY(MR)
}

FNN_TARGET_AVX512BF16
static void mkb_x512_6(ptrdiff_t KP, const uint32_t *A0, ptrdiff_t rsa, ptrdiff_t csa,
                       const uint32_t *B, ptrdiff_t ldb, float *T)
{
    mkb_x512_6a(KP, A0, rsa, csa, B, ldb, T, 0);
}

FNN_TARGET_AVX512BF16
static void mkb_x512_12(ptrdiff_t KP, const uint32_t *A0, const uint32_t *A1, ptrdiff_t rsa,
                        ptrdiff_t csa, const uint32_t *B, ptrdiff_t ldb, float *T, int acc)
{
    MKB_X512_BODY(2 * MR)
}
#endif

#if FNN_X86
/* ------------------------------------ dW tiles with their update (AVX512_BF16) */

/* The optimizer update of one row of 16 weights on its gradient g (a zmm of
 * the tile's accumulators): opt_update's formulas lane by lane; returns the
 * new weights (also stored, with the state). */
FNN_TARGET_AVX512BF16 static inline __attribute__((always_inline))
__m512 update_x512(const opt_sc *o, __m512 g, float *pw, float *p1, float *p2)
{
    __m512 w = _mm512_load_ps(pw);
    if (o->kind == FNN_OPT_SGD) {
        g = _mm512_fmadd_ps(_mm512_set1_ps(o->wd), w, g);
        if (o->mu == 0.0f) {
            w = _mm512_fnmadd_ps(_mm512_set1_ps(o->lr), g, w);
        } else {
            const __m512 mu = _mm512_set1_ps(o->mu);
            __m512 v = _mm512_fmadd_ps(mu, _mm512_load_ps(p1),
                                       _mm512_mul_ps(_mm512_set1_ps(o->damp1), g));
            _mm512_store_ps(p1, v);
            w = _mm512_fnmadd_ps(_mm512_set1_ps(o->lr), o->nesterov ? _mm512_fmadd_ps(mu, v, g) : v,
                                 w);
        }
    } else {
        const float wda = o->kind == FNN_OPT_ADAM ? o->wd : 0.0f;
        __m512 wj = _mm512_mul_ps(w, _mm512_set1_ps(o->decay));
        g = _mm512_fmadd_ps(_mm512_set1_ps(wda), wj, g);
        __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(o->b1), _mm512_load_ps(p1),
                                   _mm512_mul_ps(_mm512_set1_ps(o->c1), g));
        __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(o->b2), _mm512_load_ps(p2),
                                   _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(o->c2), g), g));
        _mm512_store_ps(p1, m);
        _mm512_store_ps(p2, v);
        __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(v), _mm512_set1_ps(o->bc2_sqrt)),
                                   _mm512_set1_ps(o->eps));
        w = _mm512_fnmadd_ps(_mm512_set1_ps(o->step_size), _mm512_div_ps(m, den), wj);
    }
    _mm512_store_ps(pw, w);
    return w;
}

/* r[0..7]: 8 rows of 8 uint32 (bf16 pairs of W columns 2q, 2q+1); stores lanes
 * [0, n) of the transposed rows: dst[q * ld + i] = r[i] lane q. */
FNN_TARGET_AVX512BF16 static inline __attribute__((always_inline))
void store_t8(const __m256i *r, int n, uint32_t *dst, ptrdiff_t ld)
{
    __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    __m256i u[8] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3),
                    _mm256_unpacklo_epi64(t4, t6), _mm256_unpackhi_epi64(t4, t6),
                    _mm256_unpacklo_epi64(t5, t7), _mm256_unpackhi_epi64(t5, t7)};
    const __mmask8 m = (__mmask8)((1u << n) - 1u);
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        _mm256_mask_storeu_epi32(dst + q * ld, m, _mm256_permute2x128_si256(u[q], u[4 + q], 0x20));
        _mm256_mask_storeu_epi32(dst + (q + 4) * ld, m,
                                 _mm256_permute2x128_si256(u[q], u[4 + q], 0x31));
    }
}

/* ROWS (6 or 12: one or two whole row tiles from row i0) x 16 of dW, updated in
 * registers: the same update and bf16 copies as the generic epilogue
 * (vcvtneps2bf16 rounds as bf16_bits32), without the round trip through T.
 * A is a[l]'s row pairs: the tile's rows i (features) are consecutive pairs
 * (rsa = 1, tsa = MR), so the broadcasts take constant offsets (with runtime
 * strides the 12 row offsets did not fit the general registers). */
#define DW_X512_BODY(ROWS)                                                            \
    const opt_sc *o = e->o;                                                           \
    __m512 c[ROWS];                                                                   \
    __m256i rb[16];                                                                   \
    _Pragma("GCC unroll 12")                                                          \
    for (int i = 0; i < ROWS; i++) c[i] = _mm512_setzero_ps();                        \
    for (ptrdiff_t kp = 0; kp < KP; kp++) {                                           \
        __m512bh b = (__m512bh)_mm512_loadu_si512((const void *)(B + kp * ldb));      \
        const uint32_t *a = A + kp * csa;                                             \
        _Pragma("GCC unroll 12")                                                      \
        for (int i = 0; i < ROWS; i++)                                                \
            c[i] = _mm512_dpbf16_ps(c[i], (__m512bh)_mm512_set1_epi32((int)a[i]), b);  \
    }                                                                                 \
    _Pragma("GCC unroll 12")                                                          \
    for (int i = 0; i < ROWS; i++) {                                                  \
        const ptrdiff_t off = (i0 + i) * e->ldw + j0;                                 \
        __m512 w = update_x512(o, c[i], e->W + off, e->s1 + off, e->s2 + off);        \
        rb[i] = (__m256i)_mm512_cvtneps_pbh(w);                                       \
    }                                                                                 \
    _Pragma("GCC unroll 6")                                                           \
    for (int p = 0; p < ROWS / 2; p++) {                                              \
        __m512i pr = _mm512_or_si512(_mm512_cvtepu16_epi32(rb[2 * p]),                \
                                     _mm512_slli_epi32(_mm512_cvtepu16_epi32(rb[2 * p + 1]), 16)); \
        _mm512_store_si512((void *)(e->Wb + (i0 / 2 + p) * e->ldw + j0), pr);         \
    }                                                                                 \
    if (e->WTb) {                                                                     \
        uint32_t *d = e->WTb + (j0 / 2) * e->ldwt + i0;                               \
        for (int i = ROWS; i < 16; i++) rb[i] = _mm256_setzero_si256();               \
        store_t8(rb, ROWS < 8 ? ROWS : 8, d, e->ldwt);                                \
        if (ROWS > 8) store_t8(rb + 8, ROWS - 8, d + 8, e->ldwt);                     \
    }

FNN_TARGET_AVX512BF16
static void dw_x512_6(ptrdiff_t KP, const uint32_t *A, ptrdiff_t csa, const uint32_t *B,
                      ptrdiff_t ldb, const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0)
{
    DW_X512_BODY(MR)
}

FNN_TARGET_AVX512BF16
static void dw_x512_12(ptrdiff_t KP, const uint32_t *A, ptrdiff_t csa, const uint32_t *B,
                       ptrdiff_t ldb, const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0)
{
    DW_X512_BODY(2 * MR)
}
#endif

/* ------------------------------------------------------------- tile loops */

#define BF16_ONE_TILE(MK)                                                             \
    do {                                                                              \
        ptrdiff_t i0 = ip * MR;                                                       \
        int mr = M - i0 < MR ? (int)(M - i0) : MR;                                    \
        prefetch_tile(e, i0, j0, mr);                                                 \
        MK(KP, A + ip * tsa, rsa, csa, B + j0, ldb, T);                               \
        epilogue(e, i0, j0, mr, T);                                                   \
    } while (0)

#define BF16_TILES_HEAD                                                               \
    float T[2 * MR * NR] __attribute__((aligned(64)));                                \
    ptrdiff_t ntm = (M + MR - 1) / MR, j0 = jp * NR;                                  \
    if (ip_hi > ntm) ip_hi = ntm;

void fnn_tr_bf16_tiles_scalar(FNN_TR_BF16_TILES_ARGS)
{
    BF16_TILES_HEAD
    for (ptrdiff_t ip = ip_lo; ip < ip_hi; ip++) BF16_ONE_TILE(mkb_scalar);
}

#if FNN_X86
FNN_TARGET_AVX2
void fnn_tr_bf16_tiles_avx2(FNN_TR_BF16_TILES_ARGS)
{
    BF16_TILES_HEAD
    for (ptrdiff_t ip = ip_lo; ip < ip_hi; ip++) BF16_ONE_TILE(mkb_avx2);
}

/* Forward and dX tiles deeper than 1.5 KPC pairs: K in even blocks of at most KPC
 * pairs, so that a block of the B panel (KPC x 64 bytes) stays in L1 across up to
 * KB_TILES row tiles (the partial sums go through Tb between blocks: the same
 * instructions in the same order, so the same bits). */
#define KPC 128
#define KB_TILES 16

FNN_TARGET_AVX512BF16 __attribute__((noinline))
static void tiles_kblock_x512(FNN_TR_BF16_TILES_ARGS)
{
    float Tb[KB_TILES][MR * NR] __attribute__((aligned(64)));
    ptrdiff_t ntm = (M + MR - 1) / MR, j0 = jp * NR;
    const ptrdiff_t nkb = (KP + KPC - 1) / KPC, kb = (KP + nkb - 1) / nkb;
    if (ip_hi > ntm) ip_hi = ntm;
    for (ptrdiff_t g0 = ip_lo; g0 < ip_hi; g0 += KB_TILES) {
        ptrdiff_t g1 = g0 + KB_TILES < ip_hi ? g0 + KB_TILES : ip_hi;
        for (ptrdiff_t k0 = 0; k0 < KP; k0 += kb) {
            ptrdiff_t kc = KP - k0 < kb ? KP - k0 : kb;
            const uint32_t *Bb = B + k0 * ldb + j0;
            ptrdiff_t ip = g0;
            for (; ip + 1 < g1; ip += 2)
                mkb_x512_12(kc, A + ip * tsa + k0 * csa, A + (ip + 1) * tsa + k0 * csa, rsa, csa,
                            Bb, ldb, Tb[ip - g0], k0 > 0);
            if (ip < g1)
                mkb_x512_6a(kc, A + ip * tsa + k0 * csa, rsa, csa, Bb, ldb, Tb[ip - g0], k0 > 0);
        }
        for (ptrdiff_t ip = g0; ip < g1; ip++) {
            ptrdiff_t i0 = ip * MR;
            epilogue(e, i0, j0, M - i0 < MR ? (int)(M - i0) : MR, Tb[ip - g0]);
        }
    }
}

FNN_TARGET_AVX512BF16
void fnn_tr_bf16_tiles_x512(FNN_TR_BF16_TILES_ARGS)
{
    if (e->kind != EP_DW && e->kind != EP_DWG && KP > KPC + KPC / 2) {
        tiles_kblock_x512(M, KP, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
    BF16_TILES_HEAD
    if (e->kind == EP_DW && rsa == 1 && tsa == MR) {
        /* whole row tiles (every row a weight row) updated in registers, two at a
         * time; the columns past N are W's zero padding with zero gradients, so
         * their update leaves them zero (no N check needed) */
        ptrdiff_t full = M / MR, ip_mid = ip_hi < full ? ip_hi : full, ip = ip_lo;
        for (; ip + 1 < ip_mid; ip += 2) {
            prefetch_tile(e, ip * MR, j0, MR);
            prefetch_tile(e, ip * MR + MR, j0, MR);
            dw_x512_12(KP, A + ip * MR, csa, B + j0, ldb, e, ip * MR, j0);
        }
        if (ip < ip_mid) {
            prefetch_tile(e, ip * MR, j0, MR);
            dw_x512_6(KP, A + ip * MR, csa, B + j0, ldb, e, ip * MR, j0);
            ip++;
        }
        if (ip_lo < ip) ip_lo = ip;
    }
    ptrdiff_t ip = ip_lo;
    for (; ip + 1 < ip_hi; ip += 2) {
        ptrdiff_t i0 = ip * MR;
        int mr0 = M - i0 < MR ? (int)(M - i0) : MR;
        int mr1 = M - i0 - MR < MR ? (int)(M - i0 - MR) : MR;
        prefetch_tile(e, i0, j0, mr0);
        prefetch_tile(e, i0 + MR, j0, mr1);
        mkb_x512_12(KP, A + ip * tsa, A + (ip + 1) * tsa, rsa, csa, B + j0, ldb, T, 0);
        epilogue(e, i0, j0, mr0, T);
        epilogue(e, i0 + MR, j0, mr1, T + MR * NR);
    }
    if (ip < ip_hi) BF16_ONE_TILE(mkb_x512_6);
}
#endif

/* ------------------------------------------------------ bf16 copies of rows */

static inline __attribute__((always_inline))
void rows_body(const float *C, ptrdiff_t ldc, ptrdiff_t r0, ptrdiff_t nr, ptrdiff_t ncols,
               uint16_t *Cb, uint32_t *Cp)
{
    for (ptrdiff_t r = r0; r < r0 + nr; r += 2) {
        const float *lo = C + r * ldc, *hi = lo + ldc;
        const int two = r + 1 < r0 + nr;
        if (Cb) {
            uint16_t *d = Cb + r * ldc;
            for (ptrdiff_t j = 0; j < ncols; j++) d[j] = (uint16_t)bf16_bits32(lo[j]);
            if (two)
                for (ptrdiff_t j = 0; j < ncols; j++) d[ldc + j] = (uint16_t)bf16_bits32(hi[j]);
        }
        if (Cp) {
            uint32_t *d = Cp + (r / 2) * ldc;
            if (two)
                for (ptrdiff_t j = 0; j < ncols; j++)
                    d[j] = bf16_bits32(lo[j]) | (bf16_bits32(hi[j]) << 16);
            else
                for (ptrdiff_t j = 0; j < ncols; j++) d[j] = bf16_bits32(lo[j]);
        }
    }
}

static void rows_scalar(const float *C, ptrdiff_t ldc, ptrdiff_t r0, ptrdiff_t nr,
                        ptrdiff_t ncols, uint16_t *Cb, uint32_t *Cp)
{
    rows_body(C, ldc, r0, nr, ncols, Cb, Cp);
}

#if FNN_X86
FNN_TARGET_AVX2
static void rows_avx2(const float *C, ptrdiff_t ldc, ptrdiff_t r0, ptrdiff_t nr,
                      ptrdiff_t ncols, uint16_t *Cb, uint32_t *Cp)
{
    rows_body(C, ldc, r0, nr, ncols, Cb, Cp);
}
#endif

void fnn_tr_bf16_rows(int simd, const float *C, ptrdiff_t ldc, ptrdiff_t r0, ptrdiff_t nr,
                      ptrdiff_t ncols, uint16_t *Cb, uint32_t *Cp)
{
#if FNN_X86
    if (simd >= FNN_SIMD_AVX2) {
        rows_avx2(C, ldc, r0, nr, ncols, Cb, Cp);
        return;
    }
#endif
    (void)simd;
    rows_scalar(C, ldc, r0, nr, ncols, Cb, Cp);
}

/* ----------------------------------------------------------- bf16 gather */

#define GATHER_COLS 256      /* columns converted per pass (two rows on the stack) */

static const float zero_cols[GATHER_COLS] __attribute__((aligned(64)));

static inline __attribute__((always_inline))
void gather_body(uint16_t *ab, uint32_t *ap, ptrdiff_t lda, ptrdiff_t lo, ptrdiff_t hi, int D,
                 const void *x, int x_u8, ptrdiff_t x_ld, const int64_t *idx)
{
    float t0[GATHER_COLS] __attribute__((aligned(64)));
    float t1[GATHER_COLS] __attribute__((aligned(64)));
    const float r255 = 1.0f / 255.0f;
    for (ptrdiff_t r = lo; r < hi; r += 2) {
        const int two = r + 1 < hi;
        for (int c0 = 0; c0 < D; c0 += GATHER_COLS) {
            const int n = D - c0 < GATHER_COLS ? D - c0 : GATHER_COLS;
            const float *p0, *p1 = zero_cols;
            if (x_u8) {
                const uint8_t *s0 = (const uint8_t *)x + idx[r] * x_ld + c0;
                for (int j = 0; j < n; j++) t0[j] = (float)s0[j] * r255;
                p0 = t0;
                if (two) {
                    const uint8_t *s1 = (const uint8_t *)x + idx[r + 1] * x_ld + c0;
                    for (int j = 0; j < n; j++) t1[j] = (float)s1[j] * r255;
                    p1 = t1;
                }
            } else {
                p0 = (const float *)x + idx[r] * x_ld + c0;
                if (two) p1 = (const float *)x + idx[r + 1] * x_ld + c0;
            }
            uint16_t *d0 = ab + r * lda + c0;
            uint32_t *dp = ap + (r / 2) * lda + c0;
            for (int j = 0; j < n; j++) {
                uint32_t l = bf16_bits32(p0[j]), h = bf16_bits32(p1[j]);
                d0[j] = (uint16_t)l;
                dp[j] = l | (h << 16);
            }
            if (two)
                for (int j = 0; j < n; j++) d0[lda + j] = (uint16_t)bf16_bits32(p1[j]);
        }
    }
}

static void gather_scalar(uint16_t *ab, uint32_t *ap, ptrdiff_t lda, ptrdiff_t lo, ptrdiff_t hi,
                          int D, const void *x, int x_u8, ptrdiff_t x_ld, const int64_t *idx)
{
    gather_body(ab, ap, lda, lo, hi, D, x, x_u8, x_ld, idx);
}

#if FNN_X86
FNN_TARGET_AVX2
static void gather_avx2(uint16_t *ab, uint32_t *ap, ptrdiff_t lda, ptrdiff_t lo, ptrdiff_t hi,
                        int D, const void *x, int x_u8, ptrdiff_t x_ld, const int64_t *idx)
{
    gather_body(ab, ap, lda, lo, hi, D, x, x_u8, x_ld, idx);
}
#endif

#if FNN_X86
/* uint8 rows at level 3: 16 pixels of two rows at a time, widened, scaled by
 * float32(1/255) (the same product as the scalar gather), rounded by
 * vcvtneps2bf16 (as bf16_bits32: the values are never denormal), stored
 * row-major and as pairs; a masked tail. */
FNN_TARGET_AVX512BF16
static void gather_u8_x512(uint16_t *ab, uint32_t *ap, ptrdiff_t lda, ptrdiff_t lo, ptrdiff_t hi,
                           int D, const uint8_t *x, ptrdiff_t x_ld, const int64_t *idx)
{
    const __m512 r255 = _mm512_set1_ps(1.0f / 255.0f);
    for (ptrdiff_t r = lo; r < hi; r += 2) {
        const int two = r + 1 < hi;
        const uint8_t *s0 = x + idx[r] * x_ld, *s1 = two ? x + idx[r + 1] * x_ld : NULL;
        uint16_t *d0 = ab + r * lda;
        uint32_t *dp = ap + (r / 2) * lda;
        for (int c = 0; c < D; c += 16) {
            const __mmask16 m = D - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (D - c)) - 1u);
            __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                          _mm_maskz_loadu_epi8(m, s0 + c))), r255);
            __m256i h0 = (__m256i)_mm512_cvtneps_pbh(f0), h1 = _mm256_setzero_si256();
            _mm256_mask_storeu_epi16(d0 + c, m, h0);
            if (two) {
                __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                              _mm_maskz_loadu_epi8(m, s1 + c))), r255);
                h1 = (__m256i)_mm512_cvtneps_pbh(f1);
                _mm256_mask_storeu_epi16(d0 + lda + c, m, h1);
            }
            __m512i pr = _mm512_or_si512(_mm512_cvtepu16_epi32(h0),
                                         _mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
            _mm512_mask_storeu_epi32(dp + c, m, pr);
        }
    }
}
#endif

void fnn_tr_bf16_gather(int simd, uint16_t *ab, uint32_t *ap, ptrdiff_t lda, ptrdiff_t lo,
                        ptrdiff_t hi, int D, const void *x, int x_u8, ptrdiff_t x_ld,
                        const int64_t *idx)
{
#if FNN_X86
    if (simd >= FNN_SIMD_AVX512_BF16 && x_u8) {
        gather_u8_x512(ab, ap, lda, lo, hi, D, (const uint8_t *)x, x_ld, idx);
        return;
    }
    if (simd >= FNN_SIMD_AVX2) {
        gather_avx2(ab, ap, lda, lo, hi, D, x, x_u8, x_ld, idx);
        return;
    }
#endif
    (void)simd;
    gather_scalar(ab, ap, lda, lo, hi, D, x, x_u8, x_ld, idx);
}
