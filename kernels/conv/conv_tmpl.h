/* The conv and pooling kernels for one dtype: included by conv.c with REAL
 * (float/double), SFX (f32/f64) and GEMM(s) (the GEMM for shape s: fnn_sgemm, or
 * fnn_sgemm_bf16 when s->bf16; fnn_dgemm) defined.
 * The decomposition is described in conv.h.
 *
 * Inner loops are compiled twice, plain C and AVX2 (FNN_TARGET_AVX2), and
 * fnn_use_avx2() picks one per call: im2col/col2im (conv_cols.h) move and add
 * short runs with explicit AVX2 helpers (masked tails); the average pooling
 * bodies are always-inline loops that the compiler vectorises 8 floats / 4
 * doubles wide in the AVX2 clone; max pooling is in conv_pool.h.  They only
 * move, add and compare, so every path gives the same bits.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* ---- run helpers: copy, zero and add n contiguous elements ------------------------------ */

INLINE void FN(copy_scalar)(REAL *restrict d, const REAL *restrict src, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        d[i] = src[i];
}

INLINE void FN(zero_scalar)(REAL *restrict d, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        d[i] = 0;
}

INLINE void FN(add_scalar)(REAL *restrict d, const REAL *restrict src, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        d[i] += src[i];
}

#if FNN_X86
/* whole vectors, then one masked vector for the tail: the runs are short (KW*Cin
 * elements: 5 for a 5x5 kernel on one channel), where a scalar tail or a memcpy
 * call would cost more than the copy */
FNN_TARGET_AVX2 INLINE void FN(copy_avx2)(REAL *restrict d, const REAL *restrict src, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + VW <= n; i += VW)
        VSTOREU(d + i, VLOADU(src + i));
    if (i < n) {
        VMASK m = VMASK_FOR(n - i);
        VMASKSTORE(d + i, m, VMASKLOAD(src + i, m));
    }
}

FNN_TARGET_AVX2 INLINE void FN(zero_avx2)(REAL *restrict d, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + VW <= n; i += VW)
        VSTOREU(d + i, VZERO());
    if (i < n)
        VMASKSTORE(d + i, VMASK_FOR(n - i), VZERO());
}

FNN_TARGET_AVX2 INLINE void FN(add_avx2)(REAL *restrict d, const REAL *restrict src, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + VW <= n; i += VW)
        VSTOREU(d + i, VADD(VLOADU(d + i), VLOADU(src + i)));
    if (i < n) {
        VMASK m = VMASK_FOR(n - i);
        VMASKSTORE(d + i, m, VADD(VMASKLOAD(d + i, m), VMASKLOAD(src + i, m)));
    }
}
#endif

/* im2col and col2im of one image, once per helper flavour (conv_cols.h) */
#define COLS_FLAVOR scalar
#define COLS_ATTR
#include "conv_cols.h"
#undef COLS_FLAVOR
#undef COLS_ATTR
#if FNN_X86
#define COLS_FLAVOR avx2
#define COLS_ATTR FNN_TARGET_AVX2
#include "conv_cols.h"
#undef COLS_FLAVOR
#undef COLS_ATTR
#endif

/* ---- pooling bodies ------------------------------------------------------------------------ */

INLINE void FN(avgpool_row_body)(const fnn_pool_shape *s, const REAL *restrict xn,
                                 ptrdiff_t oh, REAL *restrict yr)
{
    const ptrdiff_t W = s->W, C = s->C;
    const REAL area = (REAL)(s->ph * s->pw);
    for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
        REAL *yo = yr + ow * C;
        const ptrdiff_t ih0 = oh * s->sh, iw0 = ow * s->sw;
        for (ptrdiff_t c = 0; c < C; c++)
            yo[c] = 0;
        for (ptrdiff_t i = 0; i < s->ph; i++)
            for (ptrdiff_t j = 0; j < s->pw; j++) {
                const REAL *xr = xn + ((ih0 + i) * W + iw0 + j) * C;
                for (ptrdiff_t c = 0; c < C; c++)
                    yo[c] += xr[c];
            }
        for (ptrdiff_t c = 0; c < C; c++)
            yo[c] /= area;
    }
}

/* dxn (H, W, C) of one image = the scatter of its dy over the windows */
INLINE void FN(avgpool_back_body)(const fnn_pool_shape *s, const REAL *restrict dyn,
                                  REAL *restrict dxn)
{
    const ptrdiff_t W = s->W, C = s->C;
    const REAL area = (REAL)(s->ph * s->pw);
    for (ptrdiff_t i = 0; i < s->H * W * C; i++)
        dxn[i] = 0;
    for (ptrdiff_t oh = 0; oh < s->OH; oh++)
        for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
            const REAL *g = dyn + (oh * s->OW + ow) * C;
            for (ptrdiff_t i = 0; i < s->ph; i++)
                for (ptrdiff_t j = 0; j < s->pw; j++) {
                    REAL *d = dxn + ((oh * s->sh + i) * W + ow * s->sw + j) * C;
                    for (ptrdiff_t c = 0; c < C; c++)
                        d[c] += g[c] / area;
                }
        }
}

/* the scalar and AVX2 clones of each body, and the run-time pick */
#define CLONES(name, PARAMS, ARGS)                                                            \
    static void FN(name##_scalar) PARAMS { FN(name##_body) ARGS; }                            \
    AVX2_FN(static void FN(name##_avx2) PARAMS { FN(name##_body) ARGS; })
#if FNN_X86
#define AVX2_FN(...) FNN_TARGET_AVX2 __VA_ARGS__
#define PICK(name) (fnn_use_avx2() ? FN(name##_avx2) : FN(name##_scalar))
#else
#define AVX2_FN(...)
#define PICK(name) FN(name##_scalar)
#endif

CLONES(avgpool_row, (const fnn_pool_shape *s, const REAL *xn, ptrdiff_t oh, REAL *yr),
       (s, xn, oh, yr))
CLONES(avgpool_back, (const fnn_pool_shape *s, const REAL *dyn, REAL *dxn), (s, dyn, dxn))

/* ---- convolution ---------------------------------------------------------------------------- */

/* the columns start after the dbias and dW partials (see conv.h) */
static REAL *FN(cols_of)(const fnn_conv_shape *s, REAL *ws)
{
    return ws + 2 * s->max_blocks * s->Cout + s->max_blocks * s->KH * s->KW * s->Cin * s->Cout;
}

/* ---- one input channel: direct forward (no columns) ------------------------------------- */

/* The first layer of an image model has Cin = 1, K = KH*KW is tiny and Cout
 * small: im2col would copy runs of KW elements and the GEMM would run a
 * narrow, short-K problem.  With stride 1 along W, the KW taps of VW
 * neighbouring outputs are VW contiguous inputs, so one output row (n, oh) is
 * computed from KH zero-padded input rows: acc[pixels] += row[ow + kw] * w[tap, co],
 * taps in (kh, kw) order, co in groups of four sharing each input load. */

/* rows (KH, Wbuf) = the padded input rows of output row oh of image xi (zeros outside) */
static void FN(c1_rows)(const fnn_conv_shape *s, const REAL *xi, ptrdiff_t oh, REAL *rows,
                        ptrdiff_t Wbuf)
{
    for (ptrdiff_t i = 0; i < s->KH * Wbuf; i++)
        rows[i] = 0;
    for (ptrdiff_t kh = 0; kh < s->KH; kh++) {
        ptrdiff_t ih = oh * s->sh - s->pt + kh;
        if (ih >= 0 && ih < s->H)
            for (ptrdiff_t iw = 0; iw < s->W; iw++)
                rows[kh * Wbuf + s->pl + iw] = xi[ih * s->W + iw];
    }
}

static void FN(c1_row_scalar)(const fnn_conv_shape *s, const REAL *rows, ptrdiff_t Wbuf,
                              const REAL *w, const REAL *bias, int relu, REAL *yr)
{
    const ptrdiff_t Cout = s->Cout;
    for (ptrdiff_t ow = 0; ow < s->OW; ow++)
        for (ptrdiff_t co = 0; co < Cout; co++) {
            REAL acc = bias ? bias[co] : 0;
            for (ptrdiff_t kh = 0; kh < s->KH; kh++)
                for (ptrdiff_t kw = 0; kw < s->KW; kw++)
                    acc += rows[kh * Wbuf + ow * s->sw + kw] * w[(kh * s->KW + kw) * Cout + co];
            yr[ow * Cout + co] = relu && acc < 0 ? 0 : acc;      /* NaN stays NaN */
        }
}


#define C1_BUF 4096     /* elements of the padded rows kept on the stack */

/* The padded rows of a whole image: (H + pt + pb, Wbuf), zeros outside x; output row
 * oh reads its KH rows from row oh*sh on.  Built once per image instead of KH rows per
 * output row when it fits in C1_BUF (MNIST-sized images do). */
static int FN(c1_image_fits)(const fnn_conv_shape *s)
{
    return (s->H + s->pt + s->pb) * (s->W + s->pl + s->pr + VW) <= C1_BUF;
}

static void FN(c1_image_rows)(const fnn_conv_shape *s, const REAL *xi, REAL *img,
                              ptrdiff_t Wbuf)
{
    const ptrdiff_t Hp = s->H + s->pt + s->pb;
    for (ptrdiff_t i = 0; i < Hp * Wbuf; i++)
        img[i] = 0;
    for (ptrdiff_t ih = 0; ih < s->H; ih++)
        for (ptrdiff_t iw = 0; iw < s->W; iw++)
            img[(ih + s->pt) * Wbuf + s->pl + iw] = xi[ih * s->W + iw];
}

/* the KH padded rows of item it = (n, oh): from the whole padded image when it fits
 * (rebuilt when n changes; *cur_n tracks it), else built into rows */
static const REAL *FN(c1_item_rows)(const fnn_conv_shape *s, const REAL *x, ptrdiff_t it,
                                    REAL *rows, ptrdiff_t Wbuf, ptrdiff_t *cur_n)
{
    const ptrdiff_t n = it / s->OH, oh = it % s->OH;
    if (!FN(c1_image_fits)(s)) {
        FN(c1_rows)(s, x + n * s->H * s->W, oh, rows, Wbuf);
        return rows;
    }
    if (*cur_n != n) {
        FN(c1_image_rows)(s, x + n * s->H * s->W, rows, Wbuf);
        *cur_n = n;
    }
    return rows + oh * s->sh * Wbuf;
}


static int FN(c1_fits)(const fnn_conv_shape *s)
{
    return s->Cin == 1 && s->sw == 1 && s->Cout <= C1_MAX_COUT
           && s->KH * (s->W + s->pl + s->pr + VW) <= C1_BUF;
}

/* ---- one input channel, many output channels: direct, channels in vectors ---------------- */

/* Cin = 1 and Cout a multiple of VW above C1_MAX_COUT (the convnet's 3x3x32 first
 * layer), any stride: K = KH*KW is too short for the GEMM (packing and im2col cost
 * more than the FMAs: 26 GFLOP/s at one thread), but NHWC output pixels hold Cout
 * contiguous channels.  Forward: two pixels x NV channel vectors of accumulators,
 * each input a broadcast, each weight vector shared by the two pixels.  Weight
 * gradient: 3 taps x NV channel vectors of accumulators, each dy vector shared by
 * the taps; partial sums per block of output rows as the one-channel path. */

static int FN(c1w_fits)(const fnn_conv_shape *s)
{
    return s->Cin == 1 && s->Cout > C1_MAX_COUT && s->Cout % VW == 0
           && s->KH * (s->W + s->pl + s->pr + VW) <= C1_BUF
           && s->KH * s->KW * s->Cout <= C1_BUF;
}

#define C1W_NV 4    /* channel vectors per tile */
/* pixels per forward tile and taps per weight-gradient tile for NV channel vectors:
 * about 8-12 accumulators, enough independent FMA chains to cover the FMA latency
 * (2 pixels x 2 vectors for Cout = 16 was 4 chains: 50 GFLOP/s forward, 37 weight
 * gradient at 2 threads) while the operands still fit in 16 registers */
#define C1W_NPIX(NV) ((NV) == 1 ? 8 : (NV) == 2 ? 4 : (NV) == 3 ? 3 : 2)
#define C1W_NT(NV) ((NV) == 1 ? 12 : (NV) == 2 ? 6 : (NV) == 3 ? 4 : 3)
#define C1W_NPMAX 8
#define C1W_NTMAX 12

static void FN(c1w_row_scalar)(const fnn_conv_shape *s, const REAL *rows, ptrdiff_t Wbuf,
                               const REAL *w, const REAL *bias, int relu, REAL *yr)
{
    FN(c1_row_scalar)(s, rows, Wbuf, w, bias, relu, yr);
}

/* dw partial (taps, Cout) += the taps of the padded rows times dy, pixel by pixel */
static void FN(c1w_dw_block_scalar)(const fnn_conv_shape *s, const REAL *x, const REAL *dy,
                                    ptrdiff_t it0, ptrdiff_t it1, REAL *rows, REAL *dyT,
                                    REAL *accv, REAL *part)
{
    const ptrdiff_t Cout = s->Cout, KH = s->KH, KW = s->KW, OW = s->OW, sw = s->sw;
    const ptrdiff_t Wbuf = s->W + s->pl + s->pr + VW;
    (void)dyT;
    (void)accv;
    for (ptrdiff_t e = 0; e < KH * KW * Cout; e++)
        part[e] = 0;
    for (ptrdiff_t it = it0; it < it1; it++) {
        FN(c1_rows)(s, x + (it / s->OH) * s->H * s->W, it % s->OH, rows, Wbuf);
        const REAL *dyr = dy + it * OW * Cout;
        for (ptrdiff_t ow = 0; ow < OW; ow++)
            for (ptrdiff_t kh = 0; kh < KH; kh++)
                for (ptrdiff_t kw = 0; kw < KW; kw++) {
                    const REAL xv = rows[kh * Wbuf + ow * sw + kw];
                    REAL *pt = part + (kh * KW + kw) * Cout;
                    for (ptrdiff_t co = 0; co < Cout; co++)
                        pt[co] += xv * dyr[ow * Cout + co];
                }
    }
}

#if FNN_X86
/* output pixels [ow0, OW) of one row, channels [c0, c0 + NV*VW); NPIX pixels per step */
FNN_TARGET_AVX2 INLINE ptrdiff_t FN(c1w_fwd_tile)(const fnn_conv_shape *s, const REAL *rows,
                                                   ptrdiff_t Wbuf, const REAL *w,
                                                   const REAL *bias, int relu, REAL *yr,
                                                   ptrdiff_t c0, ptrdiff_t ow0, const int NV,
                                                   const int NPIX)
{
    const ptrdiff_t Cout = s->Cout, KH = s->KH, KW = s->KW, sw = s->sw, OW = s->OW;
    ptrdiff_t ow = ow0;
    for (; ow + NPIX <= OW; ow += NPIX) {
        VTYPE a[C1W_NPMAX][C1W_NV];
        for (int p = 0; p < NPIX; p++)
            for (int j = 0; j < NV; j++)
                a[p][j] = bias ? VLOADU(bias + c0 + j * VW) : VZERO();
        for (ptrdiff_t kh = 0; kh < KH; kh++) {
            const REAL *r = rows + kh * Wbuf + ow * sw;
            const REAL *wt = w + kh * KW * Cout + c0;
            for (ptrdiff_t kw = 0; kw < KW; kw++) {
                VTYPE xv[C1W_NPMAX];
                for (int p = 0; p < NPIX; p++)
                    xv[p] = VSET1(r[p * sw + kw]);
                for (int j = 0; j < NV; j++) {
                    const VTYPE wv = VLOADU(wt + kw * Cout + j * VW);
                    for (int p = 0; p < NPIX; p++)
                        a[p][j] = VFMA(xv[p], wv, a[p][j]);
                }
            }
        }
        for (int p = 0; p < NPIX; p++)
            for (int j = 0; j < NV; j++)   /* max(0, a): a NaN stays NaN, as the GEMM's ReLU */
                VSTOREU(yr + (ow + p) * Cout + c0 + j * VW, relu ? VMAX(VZERO(), a[p][j]) : a[p][j]);
    }
    return ow;
}

FNN_TARGET_AVX2 INLINE void FN(c1w_fwd_chunk)(const fnn_conv_shape *s, const REAL *rows,
                                              ptrdiff_t Wbuf, const REAL *w, const REAL *bias,
                                              int relu, REAL *yr, ptrdiff_t c0, const int NV)
{
    ptrdiff_t ow = FN(c1w_fwd_tile)(s, rows, Wbuf, w, bias, relu, yr, c0, 0, NV, C1W_NPIX(NV));
    if (C1W_NPIX(NV) > 2)
        ow = FN(c1w_fwd_tile)(s, rows, Wbuf, w, bias, relu, yr, c0, ow, NV, 2);
    FN(c1w_fwd_tile)(s, rows, Wbuf, w, bias, relu, yr, c0, ow, NV, 1);
}

FNN_TARGET_AVX2 static void FN(c1w_row_avx2)(const fnn_conv_shape *s, const REAL *rows,
                                             ptrdiff_t Wbuf, const REAL *w, const REAL *bias,
                                             int relu, REAL *yr)
{
    const ptrdiff_t Cout = s->Cout;
    for (ptrdiff_t c0 = 0; c0 < Cout; c0 += C1W_NV * VW) {
        switch ((Cout - c0) / VW) {
        case 1: FN(c1w_fwd_chunk)(s, rows, Wbuf, w, bias, relu, yr, c0, 1); break;
        case 2: FN(c1w_fwd_chunk)(s, rows, Wbuf, w, bias, relu, yr, c0, 2); break;
        case 3: FN(c1w_fwd_chunk)(s, rows, Wbuf, w, bias, relu, yr, c0, 3); break;
        default: FN(c1w_fwd_chunk)(s, rows, Wbuf, w, bias, relu, yr, c0, 4); break;
        }
    }
}

/* part[t0..t0+NT taps, c0..c0+NV*VW) += sum over the row's pixels of x(tap) * dy, in pixel order */
FNN_TARGET_AVX2 INLINE void FN(c1w_dw_tile)(const fnn_conv_shape *s, const REAL *rows,
                                            ptrdiff_t Wbuf, const REAL *dyr, ptrdiff_t t0,
                                            ptrdiff_t c0, REAL *part, const int NT, const int NV)
{
    const ptrdiff_t Cout = s->Cout, KW = s->KW, OW = s->OW, sw = s->sw;
    ptrdiff_t off[C1W_NTMAX];
    VTYPE a[C1W_NTMAX][C1W_NV];
    for (int t = 0; t < NT; t++) {
        off[t] = ((t0 + t) / KW) * Wbuf + (t0 + t) % KW;
        for (int j = 0; j < NV; j++)
            a[t][j] = VLOADU(part + (t0 + t) * Cout + c0 + j * VW);
    }
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        VTYPE g[C1W_NV];
        for (int j = 0; j < NV; j++)
            g[j] = VLOADU(dyr + ow * Cout + c0 + j * VW);
        for (int t = 0; t < NT; t++) {
            const VTYPE xv = VSET1(rows[off[t] + ow * sw]);
            for (int j = 0; j < NV; j++)
                a[t][j] = VFMA(xv, g[j], a[t][j]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int j = 0; j < NV; j++)
            VSTOREU(part + (t0 + t) * Cout + c0 + j * VW, a[t][j]);
}

FNN_TARGET_AVX2 INLINE void FN(c1w_dw_taps)(const fnn_conv_shape *s, const REAL *rows,
                                            ptrdiff_t Wbuf, const REAL *dyr, ptrdiff_t c0,
                                            REAL *part, const int NV)
{
    /* tiles of nearly equal size (9 taps, 6 at most: 5 + 4), each (tap, channel)
     * summed over the pixels in order whatever the tiling */
    const ptrdiff_t taps = s->KH * s->KW, ntiles = (taps + C1W_NT(NV) - 1) / C1W_NT(NV);
    for (ptrdiff_t k = 0, t0 = 0; k < ntiles; k++) {
        const ptrdiff_t nt = (taps - t0) / (ntiles - k) + ((taps - t0) % (ntiles - k) != 0);
        switch (nt) {
#define C1W_CASE(n) case n: FN(c1w_dw_tile)(s, rows, Wbuf, dyr, t0, c0, part, n, NV); break;
        C1W_CASE(1) C1W_CASE(2) C1W_CASE(3) C1W_CASE(4) C1W_CASE(5) C1W_CASE(6) C1W_CASE(7)
        C1W_CASE(8) C1W_CASE(9) C1W_CASE(10) C1W_CASE(11)
        default: FN(c1w_dw_tile)(s, rows, Wbuf, dyr, t0, c0, part, C1W_NTMAX, NV); break;
#undef C1W_CASE
        }
        t0 += nt;
    }
}

FNN_TARGET_AVX2 static void FN(c1w_dw_block_avx2)(const fnn_conv_shape *s, const REAL *x,
                                                  const REAL *dy, ptrdiff_t it0, ptrdiff_t it1,
                                                  REAL *rows, REAL *dyT, REAL *accv, REAL *part)
{
    const ptrdiff_t Cout = s->Cout, OW = s->OW, Wbuf = s->W + s->pl + s->pr + VW;
    (void)dyT;
    (void)accv;
    for (ptrdiff_t e = 0; e < s->KH * s->KW * Cout; e++)
        part[e] = 0;
    ptrdiff_t cur_n = -1;
    for (ptrdiff_t it = it0; it < it1; it++) {
        const REAL *r = FN(c1_item_rows)(s, x, it, rows, Wbuf, &cur_n);
        const REAL *dyr = dy + it * OW * Cout;
        for (ptrdiff_t c0 = 0; c0 < Cout; c0 += C1W_NV * VW) {
            switch ((Cout - c0) / VW) {
            case 1: FN(c1w_dw_taps)(s, r, Wbuf, dyr, c0, part, 1); break;
            case 2: FN(c1w_dw_taps)(s, r, Wbuf, dyr, c0, part, 2); break;
            case 3: FN(c1w_dw_taps)(s, r, Wbuf, dyr, c0, part, 3); break;
            default: FN(c1w_dw_taps)(s, r, Wbuf, dyr, c0, part, 4); break;
            }
        }
    }
}
#endif

typedef void (*FN(c1_row_fn))(const fnn_conv_shape *, const REAL *, ptrdiff_t, const REAL *,
                              const REAL *, int, REAL *);

static void FN(c1_forward)(const fnn_conv_shape *s, const REAL *x, const REAL *w,
                           const REAL *bias, int relu, REAL *y, int nthreads, FN(c1_row_fn) row)
{
    const ptrdiff_t Wbuf = s->W + s->pl + s->pr + VW, items = s->N * s->OH;
    const ptrdiff_t rowsz = s->OW * s->Cout;
    const int par = nthreads > 1 && items > 1;
    (void)par;
    _Pragma("omp parallel num_threads(nthreads) if (par)")
    {
        REAL rows[C1_BUF];
        ptrdiff_t cur_n = -1;
        _Pragma("omp for schedule(static)")
        for (ptrdiff_t it = 0; it < items; it++)
            row(s, FN(c1_item_rows)(s, x, it, rows, Wbuf, &cur_n), Wbuf, w, bias, relu,
                y + it * rowsz);
    }
}

#if FNN_X86
/* Cout <= VW: one output row with each pixel's channels in one vector, NPIX pixels
 * per step sharing each tap's weight vector (wp: the weights padded to (taps, VW),
 * bp the bias padded to VW, built by the caller).  A pixel's store may spill
 * garbage lanes into the next pixel, which is stored after it; the row's last
 * pixels use a masked store so nothing lands in the next row. */
#define C1N_NPIX 8

FNN_TARGET_AVX2 INLINE ptrdiff_t FN(c1n_fwd_tile)(const fnn_conv_shape *s, const REAL *rows,
                                                   ptrdiff_t Wbuf, const REAL *wp,
                                                   const REAL *bp, int relu, REAL *yr,
                                                   ptrdiff_t ow0, const int NPIX)
{
    const ptrdiff_t Cout = s->Cout, KH = s->KH, KW = s->KW, sw = s->sw, OW = s->OW;
    const VMASK m = VMASK_FOR(Cout);
    ptrdiff_t ow = ow0;
    for (; ow + NPIX <= OW; ow += NPIX) {
        VTYPE a[C1N_NPIX];
        for (int p = 0; p < NPIX; p++)
            a[p] = VLOADU(bp);
        for (ptrdiff_t kh = 0; kh < KH; kh++)
            for (ptrdiff_t kw = 0; kw < KW; kw++) {
                const VTYPE wv = VLOADU(wp + (kh * KW + kw) * VW);
                const REAL *r = rows + kh * Wbuf + ow * sw + kw;
                for (int p = 0; p < NPIX; p++)
                    a[p] = VFMA(VSET1(r[p * sw]), wv, a[p]);
            }
        for (int p = 0; p < NPIX; p++) {
            const VTYPE v = relu ? VMAX(VZERO(), a[p]) : a[p];   /* a NaN stays NaN */
            REAL *dst = yr + (ow + p) * Cout;
            if ((ow + p) * Cout + VW <= OW * Cout)
                VSTOREU(dst, v);
            else
                VMASKSTORE(dst, m, v);
        }
    }
    return ow;
}

FNN_TARGET_AVX2 static void FN(c1n_row_avx2)(const fnn_conv_shape *s, const REAL *rows,
                                             ptrdiff_t Wbuf, const REAL *wp, const REAL *bp,
                                             int relu, REAL *yr)
{
    ptrdiff_t ow = FN(c1n_fwd_tile)(s, rows, Wbuf, wp, bp, relu, yr, 0, C1N_NPIX);
    ow = FN(c1n_fwd_tile)(s, rows, Wbuf, wp, bp, relu, yr, ow, 4);
    FN(c1n_fwd_tile)(s, rows, Wbuf, wp, bp, relu, yr, ow, 1);
}
#undef C1N_NPIX
#endif

#if FNN_X86
/* Cout <= C1_MAX_COUT, stride 1 along W: NPV vectors of neighbouring output pixels x
 * every channel of accumulators (12 for lenet5's 6 channels), each tap one load per
 * pixel vector and one weight broadcast per channel shared by them, all lanes useful
 * (the channels-in-a-vector tile above broadcasts one input per pixel and tap, 6 of
 * 8 lanes useful).  Each output is bias + the taps in (kh, kw) order, as there: the
 * same bits.  Stores go through a small transpose buffer into NHWC. */
FNN_TARGET_AVX2 INLINE void FN(c1p_block)(const fnn_conv_shape *s, const REAL *rows,
                                          ptrdiff_t Wbuf, const REAL *w, const REAL *bias,
                                          int relu, REAL *yr, ptrdiff_t ow0, const int NC,
                                          const int NPV)
{
    const ptrdiff_t KH = s->KH, KW = s->KW, Cout = NC;
    VTYPE a[C1_MAX_COUT][2];
    REAL tmp[C1_MAX_COUT][2 * VW];
    for (int c = 0; c < NC; c++)
        for (int p = 0; p < NPV; p++)
            a[c][p] = VSET1(bias ? bias[c] : 0);
    for (ptrdiff_t kh = 0; kh < KH; kh++)
        for (ptrdiff_t kw = 0; kw < KW; kw++) {
            const REAL *r = rows + kh * Wbuf + ow0 + kw;
            const REAL *wt = w + (kh * KW + kw) * Cout;
            VTYPE xv[2];
            for (int p = 0; p < NPV; p++)
                xv[p] = VLOADU(r + p * VW);
            for (int c = 0; c < NC; c++) {
                const VTYPE wv = VSET1(wt[c]);
                for (int p = 0; p < NPV; p++)
                    a[c][p] = VFMA(xv[p], wv, a[c][p]);
            }
        }
    for (int c = 0; c < NC; c++)     /* max(0, a): a NaN stays NaN, as the GEMM's ReLU */
        for (int p = 0; p < NPV; p++)
            VSTOREU(tmp[c] + p * VW, relu ? VMAX(VZERO(), a[c][p]) : a[c][p]);
    const ptrdiff_t n = s->OW - ow0 < NPV * VW ? s->OW - ow0 : NPV * VW;
    for (ptrdiff_t i = 0; i < n; i++)
        for (int c = 0; c < NC; c++)
            yr[(ow0 + i) * Cout + c] = tmp[c][i];
}

FNN_TARGET_AVX2 INLINE void FN(c1p_row)(const fnn_conv_shape *s, const REAL *rows,
                                        ptrdiff_t Wbuf, const REAL *w, const REAL *bias,
                                        int relu, REAL *yr, const int NC)
{
    ptrdiff_t ow0 = 0;
    /* two vectors while more than one is left: the reads stay inside the padded row
     * (Wbuf = W + pl + pr + VW) */
    for (; ow0 + VW < s->OW; ow0 += 2 * VW)
        FN(c1p_block)(s, rows, Wbuf, w, bias, relu, yr, ow0, NC, 2);
    if (ow0 < s->OW)
        FN(c1p_block)(s, rows, Wbuf, w, bias, relu, yr, ow0, NC, 1);
}

FNN_TARGET_AVX2 static void FN(c1p_row_avx2)(const fnn_conv_shape *s, const REAL *rows,
                                             ptrdiff_t Wbuf, const REAL *w, const REAL *bias,
                                             int relu, REAL *yr)
{
    switch (s->Cout) {
    case 1: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 1); break;
    case 2: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 2); break;
    case 3: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 3); break;
    case 4: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 4); break;
    case 5: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 5); break;
    case 6: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 6); break;
    case 7: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 7); break;
    default: FN(c1p_row)(s, rows, Wbuf, w, bias, relu, yr, 8); break;
    }
}
#endif

void FN(fnn_conv2d_forward)(const fnn_conv_shape *s, const REAL *x, const REAL *w,
                            const REAL *bias, int relu, REAL *y, REAL *ws, int nthreads)
{
#if FNN_X86
    /* pixels in vectors with 16 taps or more (5x5, lenet5: 0.65 -> 0.54 ms at one
     * thread), or channels that do not fit one vector; with fewer taps the transposed
     * stores cost more than the broadcasts they save (3x3, 8 channels: 0.17 vs 0.20) */
    if (!s->bf16 && FN(c1_fits)(s) && fnn_use_avx2()
        && (s->KH * s->KW >= 16 || s->Cout > VW || s->KH * s->KW * VW > C1_BUF)) {
        FN(c1_forward)(s, x, w, bias, relu, y, nthreads < 1 ? 1 : nthreads, FN(c1p_row_avx2));
        return;
    }
    if (!s->bf16 && FN(c1_fits)(s) && s->Cout <= VW && s->KH * s->KW * VW <= C1_BUF
        && fnn_use_avx2()) {
        REAL wp[C1_BUF], bp[VW];
        for (ptrdiff_t t = 0; t < s->KH * s->KW; t++)
            for (ptrdiff_t c = 0; c < VW; c++)
                wp[t * VW + c] = c < s->Cout ? w[t * s->Cout + c] : 0;
        for (ptrdiff_t c = 0; c < VW; c++)
            bp[c] = bias && c < s->Cout ? bias[c] : 0;
        FN(c1_forward)(s, x, wp, bp, relu, y, nthreads < 1 ? 1 : nthreads, FN(c1n_row_avx2));
        return;
    }
#endif
    if (!s->bf16 && FN(c1_fits)(s)) {     /* the scalar level (AVX2 took it above) */
        FN(c1_forward)(s, x, w, bias, relu, y, nthreads < 1 ? 1 : nthreads, FN(c1_row_scalar));
        return;
    }
    if (!s->bf16 && FN(c1w_fits)(s)) {
        FN(c1_forward)(s, x, w, bias, relu, y, nthreads < 1 ? 1 : nthreads, PICK(c1w_row));
        return;
    }
    /* x (N, H, W, Cin), w (K = KH*KW*Cin, Cout), y (N*OH*OW, Cout) */
    void (*im2col)(const fnn_conv_shape *, const REAL *, REAL *) = PICK(im2col);
    const ptrdiff_t P = s->OH * s->OW, K = s->KH * s->KW * s->Cin, HWC = s->H * s->W * s->Cin;
    const int direct = is_direct(s);
    const ptrdiff_t g = group_images(P);
    REAL *cols = FN(cols_of)(s, ws);
    fnn_epilogue ep = {.bias = bias, .relu = relu};
    if (nthreads < 1)
        nthreads = 1;
    for (ptrdiff_t n0 = 0; n0 < s->N; n0 += s->chunk) {
        const ptrdiff_t nb = s->N - n0 < s->chunk ? s->N - n0 : s->chunk, ng = (nb + g - 1) / g;
        const int outer = nthreads > 1 && ng >= nthreads, inner = outer ? 1 : nthreads;
        (void)outer;
        _Pragma("omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (outer)")
        for (ptrdiff_t gi = 0; gi < ng; gi++) {
            const ptrdiff_t i0 = gi * g, i1 = i0 + g < nb ? i0 + g : nb;
            const REAL *A = x + (n0 + i0) * HWC;      /* direct: x's rows are the columns */
            if (!direct) {
                for (ptrdiff_t i = i0; i < i1; i++)
                    im2col(s, x + (n0 + i) * HWC, cols + i * P * K);
                A = cols + i0 * P * K;
            }
            GEMM(s)((i1 - i0) * P, s->Cout, K, A, K, 1, w, s->Cout, 1,
                 y + (n0 + i0) * P * s->Cout, s->Cout, 1, &ep, inner);
        }
    }
}

/* ---- backward data with few input channels: direct, no columns ------------------------ */

/* Stride 1 and Cin <= BD_MAX_CIN (lenet5's conv2: Cin = 6, Cout = 16): the GEMM
 * path's inner dimension is Cout (dy @ W^T: 16), its output K = KH*KW*Cin wide
 * columns that col2im adds back -- 12 GFLOP/s at one thread.  Here dx is the
 * forward convolution of dy with the flipped, transposed kernel:
 *   dx[n, ih, iw, ci] = sum_{kh, kw, co} dy[n, ih + pt - kh, iw + pl - kw, co] w[kh, kw, ci, co]
 * (dy zero outside).  Per image, dy is copied channel-planar with KW-1 zero
 * columns in front (dyP[co][oh][KW - 1 + ow]); an input row's pixels then sit in
 * vectors: acc[ci][pixels] += dyP[co][row][...] * w[kh, kw, ci, co], with rows
 * outside dy skipped (kh clipped) and the mask applied on the NHWC store.  One
 * thread per image: every dx element is one thread's sum in (kh, kw, co) order. */

#define BD_MAX_CIN 8
#define BD_BUF 16384    /* elements of the planar dy of one image */

static ptrdiff_t FN(bd_width)(const fnn_conv_shape *s)
{
    /* the planar row: KW - 1 zero columns, then room for the widest pixel block */
    const ptrdiff_t Wv = (s->W + 2 * VW - 1) / (2 * VW) * (2 * VW);
    return Wv + s->pl + s->KW - 1;
}

static int FN(bd_fits)(const fnn_conv_shape *s)
{
    return s->sh == 1 && s->sw == 1 && s->Cin <= BD_MAX_CIN
           && s->Cout * s->OH * FN(bd_width)(s) <= BD_BUF
           && s->KH * s->KW * s->Cin * s->Cout <= BD_BUF;
}

/* dyP (Cout, OH, Wb) = dy of one image (OH, OW, Cout), planar, columns shifted by KW - 1 */
static void FN(bd_planar)(const fnn_conv_shape *s, const REAL *dyn, ptrdiff_t Wb, REAL *dyP)
{
    const ptrdiff_t Cout = s->Cout, OH = s->OH, OW = s->OW;
    for (ptrdiff_t i = 0; i < Cout * OH * Wb; i++)
        dyP[i] = 0;
    for (ptrdiff_t oh = 0; oh < OH; oh++)
        for (ptrdiff_t ow = 0; ow < OW; ow++)
            for (ptrdiff_t co = 0; co < Cout; co++)
                dyP[(co * OH + oh) * Wb + s->KW - 1 + ow] = dyn[(oh * OW + ow) * Cout + co];
}

/* the kh range whose dy row ih + pt - kh lies in [0, OH) */
INLINE void FN(bd_kh_range)(const fnn_conv_shape *s, ptrdiff_t ih, ptrdiff_t *k0, ptrdiff_t *k1)
{
    ptrdiff_t lo = ih + s->pt - (s->OH - 1), hi = ih + s->pt + 1;
    *k0 = lo < 0 ? 0 : lo;
    *k1 = hi > s->KH ? s->KH : hi;
}

/* one image: dxn (H, W, Cin) from dyP and wT (KH, KW, Cout, Cin) */
static void FN(bd_image_scalar)(const fnn_conv_shape *s, const REAL *dyP, ptrdiff_t Wb,
                                const REAL *wT, const REAL *maskn, REAL *dxn)
{
    const ptrdiff_t Cin = s->Cin, Cout = s->Cout, KW = s->KW, OH = s->OH;
    for (ptrdiff_t ih = 0; ih < s->H; ih++) {
        ptrdiff_t k0, k1;
        FN(bd_kh_range)(s, ih, &k0, &k1);
        for (ptrdiff_t iw = 0; iw < s->W; iw++)
            for (ptrdiff_t ci = 0; ci < Cin; ci++) {
                REAL acc = 0;
                for (ptrdiff_t kh = k0; kh < k1; kh++)
                    for (ptrdiff_t kw = 0; kw < KW; kw++)
                        for (ptrdiff_t co = 0; co < Cout; co++)
                            acc += dyP[(co * OH + ih + s->pt - kh) * Wb + iw + s->pl + KW - 1 - kw]
                                   * wT[((kh * KW + kw) * Cout + co) * Cin + ci];
                const ptrdiff_t e = (ih * s->W + iw) * Cin + ci;
                dxn[e] = maskn && !(maskn[e] > 0) ? 0 : acc;
            }
    }
}

#if FNN_X86
/* NPV vectors of pixels [iw0, iw0 + NPV*VW) of input row ih, all Cin channels */
FNN_TARGET_AVX2 INLINE void FN(bd_block)(const fnn_conv_shape *s, const REAL *dyP, ptrdiff_t Wb,
                                         const REAL *wT, const REAL *maskn, REAL *dxn,
                                         ptrdiff_t ih, ptrdiff_t iw0, const int NPV)
{
    const ptrdiff_t Cin = s->Cin, Cout = s->Cout, KW = s->KW, OH = s->OH;
    VTYPE acc[BD_MAX_CIN][2];
    REAL tmp[BD_MAX_CIN][2 * VW];
    ptrdiff_t k0, k1;
    FN(bd_kh_range)(s, ih, &k0, &k1);
    for (ptrdiff_t ci = 0; ci < BD_MAX_CIN; ci++)
        for (int p = 0; p < NPV; p++)
            acc[ci][p] = VZERO();
    for (ptrdiff_t kh = k0; kh < k1; kh++)
        for (ptrdiff_t kw = 0; kw < KW; kw++) {
            const REAL *d = dyP + (ih + s->pt - kh) * Wb + iw0 + s->pl + KW - 1 - kw;
            const REAL *wt = wT + (kh * KW + kw) * Cout * Cin;
            for (ptrdiff_t co = 0; co < Cout; co++) {
                VTYPE g[2];
                for (int p = 0; p < NPV; p++)
                    g[p] = VLOADU(d + co * OH * Wb + p * VW);
                for (ptrdiff_t ci = 0; ci < Cin; ci++) {     /* Cin <= BD_MAX_CIN */
                    const VTYPE wv = VSET1(wt[co * Cin + ci]);
                    for (int p = 0; p < NPV; p++)
                        acc[ci][p] = VFMA(g[p], wv, acc[ci][p]);
                }
            }
        }
    for (ptrdiff_t ci = 0; ci < Cin; ci++)
        for (int p = 0; p < NPV; p++)
            VSTOREU(tmp[ci] + p * VW, acc[ci][p]);
    const ptrdiff_t n = s->W - iw0 < NPV * VW ? s->W - iw0 : NPV * VW;
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t ci = 0; ci < Cin; ci++) {
            const ptrdiff_t e = (ih * s->W + iw0 + i) * Cin + ci;
            dxn[e] = maskn && !(maskn[e] > 0) ? 0 : tmp[ci][i];
        }
}

FNN_TARGET_AVX2 static void FN(bd_image_avx2)(const fnn_conv_shape *s, const REAL *dyP,
                                              ptrdiff_t Wb, const REAL *wT, const REAL *maskn,
                                              REAL *dxn)
{
    for (ptrdiff_t ih = 0; ih < s->H; ih++) {
        ptrdiff_t iw0 = 0;
        for (; iw0 + VW < s->W; iw0 += 2 * VW)      /* more than one vector left: two */
            FN(bd_block)(s, dyP, Wb, wT, maskn, dxn, ih, iw0, 2);
        if (iw0 < s->W)
            FN(bd_block)(s, dyP, Wb, wT, maskn, dxn, ih, iw0, 1);
    }
}
#endif

static void FN(bd_backward_data)(const fnn_conv_shape *s, const REAL *dy, const REAL *w,
                                 const REAL *mask, REAL *dx, int nthreads)
{
    void (*image)(const fnn_conv_shape *, const REAL *, ptrdiff_t, const REAL *, const REAL *,
                  REAL *) = PICK(bd_image);
    const ptrdiff_t Cin = s->Cin, Cout = s->Cout, taps = s->KH * s->KW, Wb = FN(bd_width)(s);
    const ptrdiff_t HWC = s->H * s->W * Cin, O = s->OH * s->OW * Cout;
    REAL wT[BD_BUF];      /* (KH, KW, Cout, Cin): one broadcast per (co, ci) in order */
    for (ptrdiff_t t = 0; t < taps; t++)
        for (ptrdiff_t ci = 0; ci < Cin; ci++)
            for (ptrdiff_t co = 0; co < Cout; co++)
                wT[(t * Cout + co) * Cin + ci] = w[(t * Cin + ci) * Cout + co];
    const int par = nthreads > 1 && s->N > 1;
    (void)par;
    _Pragma("omp parallel num_threads(nthreads) if (par)")
    {
        REAL dyP[BD_BUF];
        _Pragma("omp for schedule(static)")
        for (ptrdiff_t n = 0; n < s->N; n++) {
            FN(bd_planar)(s, dy + n * O, Wb, dyP);
            image(s, dyP, Wb, wT, mask ? mask + n * HWC : NULL, dx + n * HWC);
        }
    }
}

void FN(fnn_conv2d_backward_data)(const fnn_conv_shape *s, const REAL *dy, const REAL *w,
                                  const REAL *mask, REAL *dx, REAL *ws, int nthreads)
{
    /* dcols (rows, K) = dy (rows, Cout) @ w^T; w^T[co, k] = w[k*Cout + co] */
    void (*col2im)(const fnn_conv_shape *, const REAL *, const REAL *, REAL *) = PICK(col2im);
    const ptrdiff_t P = s->OH * s->OW, K = s->KH * s->KW * s->Cin, HWC = s->H * s->W * s->Cin;
    const int direct = is_direct(s);
    const ptrdiff_t g = group_images(P);
    REAL *cols = FN(cols_of)(s, ws);
    if (nthreads < 1)
        nthreads = 1;
    if (!direct && !s->bf16 && FN(bd_fits)(s)) {
        FN(bd_backward_data)(s, dy, w, mask, dx, nthreads);
        return;
    }
    for (ptrdiff_t n0 = 0; n0 < s->N; n0 += s->chunk) {
        const ptrdiff_t nb = s->N - n0 < s->chunk ? s->N - n0 : s->chunk, ng = (nb + g - 1) / g;
        const int outer = nthreads > 1 && ng >= nthreads, inner = outer ? 1 : nthreads;
        (void)outer;
        _Pragma("omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (outer)")
        for (ptrdiff_t gi = 0; gi < ng; gi++) {
            const ptrdiff_t i0 = gi * g, i1 = i0 + g < nb ? i0 + g : nb, rows = (i1 - i0) * P;
            const REAL *dyg = dy + (n0 + i0) * P * s->Cout;
            if (direct) {
                /* 1x1, stride 1, no padding: dx rows = dy @ w^T, the mask in the epilogue */
                fnn_epilogue ep = {.mask = mask ? mask + (n0 + i0) * HWC : NULL, .rs_mask = K,
                                    .cs_mask = 1};
                GEMM(s)(rows, K, s->Cout, dyg, s->Cout, 1, w, 1, s->Cout,
                     dx + (n0 + i0) * HWC, K, 1, &ep, inner);
                continue;
            }
            fnn_epilogue ep = {.relu = 0};
            REAL *cg = cols + i0 * P * K;
            GEMM(s)(rows, K, s->Cout, dyg, s->Cout, 1, w, 1, s->Cout, cg, K, 1, &ep, inner);
            for (ptrdiff_t i = i0; i < i1; i++)
                col2im(s, cols + i * P * K, mask ? mask + (n0 + i) * HWC : NULL,
                       dx + (n0 + i) * HWC);
        }
    }
}

/* part[c] = sum over rows r0..r1-1 of d[r, c], in row order, in double */
static void FN(dbias_block_scalar)(const REAL *d, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,
                                   double *part)
{
    for (ptrdiff_t c = 0; c < C; c++)
        part[c] = 0;
    for (ptrdiff_t r = r0; r < r1; r++)
        for (ptrdiff_t c = 0; c < C; c++)
            part[c] += (double)d[r * C + c];
}

#if FNN_X86
/* The same sums (each channel's in row order, in double: the same bits) with the
 * channels in registers, 4 doubles a vector, the last channels a masked load.  The
 * plain loop kept part[] in memory, a store-to-load chain per row: the dbias of the
 * one-channel weight gradient cost as much as its FMAs. */
#ifdef CONV_F32
#define DB_LOAD(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define DB_MLOAD(p, m) _mm256_cvtps_pd(_mm_maskload_ps((p), _mm256_castsi256_si128(m)))
#define DB_MASK(n) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n)), \
                                      _mm256_setr_epi32(0, 1, 2, 3, 0, 0, 0, 0))
#else
#define DB_LOAD(p) _mm256_loadu_pd(p)
#define DB_MLOAD(p, m) _mm256_maskload_pd((p), (m))
#define DB_MASK(n) _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)(n)), \
                                      _mm256_setr_epi64x(0, 1, 2, 3))
#endif
FNN_TARGET_AVX2 INLINE void FN(dbias_cols)(const REAL *d, ptrdiff_t r0, ptrdiff_t r1,
                                           ptrdiff_t C, ptrdiff_t c0, double *part,
                                           const int NV, ptrdiff_t tail)
{
    __m256d a[4];
    const __m256i m = DB_MASK(tail);
    for (int j = 0; j < NV; j++)
        a[j] = _mm256_setzero_pd();
    for (ptrdiff_t r = r0; r < r1; r++) {
        const REAL *p = d + r * C + c0;
        for (int j = 0; j < NV; j++)
            a[j] = _mm256_add_pd(a[j], tail && j == NV - 1 ? DB_MLOAD(p + 4 * j, m)
                                                           : DB_LOAD(p + 4 * j));
    }
    for (int j = 0; j < NV; j++) {
        double t[4];
        _mm256_storeu_pd(t, a[j]);
        for (int l = 0; l < 4 && c0 + 4 * j + l < C; l++)
            part[c0 + 4 * j + l] = t[l];
    }
}

FNN_TARGET_AVX2 static void FN(dbias_block_avx2)(const REAL *d, ptrdiff_t r0, ptrdiff_t r1,
                                                 ptrdiff_t C, double *part)
{
    ptrdiff_t c0 = 0;
    for (; c0 + 16 <= C; c0 += 16)
        FN(dbias_cols)(d, r0, r1, C, c0, part, 4, 0);
    if (c0 < C) {
        const ptrdiff_t left = C - c0, nv = (left + 3) / 4, tail = left % 4;
        switch (nv) {
        case 1: FN(dbias_cols)(d, r0, r1, C, c0, part, 1, tail); break;
        case 2: FN(dbias_cols)(d, r0, r1, C, c0, part, 2, tail); break;
        case 3: FN(dbias_cols)(d, r0, r1, C, c0, part, 3, tail); break;
        default: FN(dbias_cols)(d, r0, r1, C, c0, part, 4, tail); break;
        }
    }
}
#undef DB_LOAD
#undef DB_MLOAD
#undef DB_MASK
#endif

static void FN(dbias_block)(const REAL *d, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, double *part)
{
#if FNN_X86
    if (fnn_use_avx2()) {
        FN(dbias_block_avx2)(d, r0, r1, C, part);
        return;
    }
#endif
    FN(dbias_block_scalar)(d, r0, r1, C, part);
}

/* dw (+)= the nblk partials of wpart added in block order; dbias likewise from dbpart */
static void FN(add_partials)(const REAL *wpart, const double *dbpart, ptrdiff_t nblk,
                             ptrdiff_t KC, ptrdiff_t Cout, REAL *dw, REAL *dbias, int acc,
                             int nthreads)
{
    (void)nthreads;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && KC * nblk >= 65536)")
    for (ptrdiff_t e = 0; e < KC; e++) {
        REAL t = wpart[e];
        for (ptrdiff_t b = 1; b < nblk; b++)
            t += wpart[b * KC + e];
        dw[e] = acc ? dw[e] + t : t;
    }
    if (dbias)
        for (ptrdiff_t c = 0; c < Cout; c++) {
            double t = dbpart[c];
            for (ptrdiff_t b = 1; b < nblk; b++)
                t += dbpart[b * Cout + c];
            dbias[c] = (REAL)(acc ? (double)dbias[c] + t : t);
        }
}

/* The weight gradient of a one-channel layer (the forward's direct case):
 *   dw[kh, kw, co] = sum over (n, oh, ow) of row_kh[ow + kw] * dy[n, oh, ow, co]
 * Output rows (n, oh) are cut into fixed blocks (as the GEMM path's rows);
 * within a block each (tap, co) is summed over pixels in VW lanes, lanes
 * added in order at the block's end into its partial (deterministic). */

/* dyT (Cout, OWp) = dy's row (OW, Cout) transposed, zero beyond OW */
static void FN(c1_dyT)(const REAL *dyr, ptrdiff_t OW, ptrdiff_t OWp, ptrdiff_t Cout, REAL *dyT)
{
    for (ptrdiff_t co = 0; co < Cout; co++) {
        for (ptrdiff_t ow = 0; ow < OW; ow++)
            dyT[co * OWp + ow] = dyr[ow * Cout + co];
        for (ptrdiff_t ow = OW; ow < OWp; ow++)
            dyT[co * OWp + ow] = 0;
    }
}

static void FN(c1_dw_block_scalar)(const fnn_conv_shape *s, const REAL *x, const REAL *dy,
                                   ptrdiff_t it0, ptrdiff_t it1, REAL *rows, REAL *dyT,
                                   REAL *accv, REAL *part)
{
    const ptrdiff_t Cout = s->Cout, KH = s->KH, KW = s->KW, OW = s->OW;
    const ptrdiff_t Wbuf = s->W + s->pl + s->pr + VW, OWp = (OW + VW - 1) / VW * VW;
    (void)accv;
    for (ptrdiff_t e = 0; e < KH * KW * Cout; e++)
        part[e] = 0;
    for (ptrdiff_t it = it0; it < it1; it++) {
        FN(c1_rows)(s, x + (it / s->OH) * s->H * s->W, it % s->OH, rows, Wbuf);
        FN(c1_dyT)(dy + it * OW * Cout, OW, OWp, Cout, dyT);
        for (ptrdiff_t kh = 0; kh < KH; kh++)
            for (ptrdiff_t kw = 0; kw < KW; kw++)
                for (ptrdiff_t co = 0; co < Cout; co++) {
                    const REAL *r = rows + kh * Wbuf + kw, *g = dyT + co * OWp;
                    REAL a = part[(kh * KW + kw) * Cout + co];
                    for (ptrdiff_t ow = 0; ow < OW; ow++)
                        a += r[ow] * g[ow];
                    part[(kh * KW + kw) * Cout + co] = a;
                }
    }
}

#if FNN_X86
FNN_TARGET_AVX2 static void FN(c1_dw_block_avx2)(const fnn_conv_shape *s, const REAL *x,
                                                 const REAL *dy, ptrdiff_t it0, ptrdiff_t it1,
                                                 REAL *rows, REAL *dyT, REAL *accv, REAL *part)
{
    const ptrdiff_t Cout = s->Cout, KH = s->KH, KW = s->KW, OW = s->OW, KC = KH * KW * Cout;
    const ptrdiff_t Wbuf = s->W + s->pl + s->pr + VW, OWp = (OW + VW - 1) / VW * VW;
    for (ptrdiff_t e = 0; e < KC * VW; e++)
        accv[e] = 0;
    for (ptrdiff_t it = it0; it < it1; it++) {
        FN(c1_rows)(s, x + (it / s->OH) * s->H * s->W, it % s->OH, rows, Wbuf);
        FN(c1_dyT)(dy + it * OW * Cout, OW, OWp, Cout, dyT);
        for (ptrdiff_t kh = 0; kh < KH; kh++)
            for (ptrdiff_t kw = 0; kw < KW; kw++)
                for (ptrdiff_t co = 0; co < Cout; co++) {
                    const REAL *r = rows + kh * Wbuf + kw, *g = dyT + co * OWp;
                    REAL *av = accv + ((kh * KW + kw) * Cout + co) * VW;
                    VTYPE a = VLOADU(av);
                    for (ptrdiff_t ow = 0; ow < OWp; ow += VW)
                        a = VFMA(VLOADU(r + ow), VLOADU(g + ow), a);
                    VSTOREU(av, a);
                }
    }
    for (ptrdiff_t e = 0; e < KC; e++) {
        REAL t = accv[e * VW];
        for (ptrdiff_t l = 1; l < VW; l++)
            t += accv[e * VW + l];
        part[e] = t;
    }
}
#endif

#if FNN_X86
/* Cout <= VW (lenet5's 5x5x6 first layer): the weight gradient with the output
 * channels in ONE vector (lanes beyond Cout read the next pixel's dy and are
 * dropped; the row's last pixel is a masked load), C1N_NT taps of accumulators
 * each fed by a broadcast input: the transposed-dy kernel above keeps one
 * accumulator chain per (tap, channel) and ran at 11 GFLOP/s.  Loads that would
 * leave dy's row (the last pixels, or all of them when Cout is tiny) are masked. */
#define C1N_NT 13

FNN_TARGET_AVX2 INLINE void FN(c1n_dw_tile)(const fnn_conv_shape *s, const REAL *rows,
                                            ptrdiff_t Wbuf, const REAL *dyr, ptrdiff_t t0,
                                            REAL *accp, const int NT)
{
    const ptrdiff_t Cout = s->Cout, KW = s->KW, OW = s->OW;
    ptrdiff_t off[C1N_NT];
    VTYPE a[C1N_NT];
    for (int t = 0; t < NT; t++) {
        off[t] = ((t0 + t) / KW) * Wbuf + (t0 + t) % KW;
        a[t] = VLOADU(accp + (t0 + t) * VW);
    }
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        /* a whole vector while it stays inside this row of dy */
        const VTYPE g = ow * Cout + VW <= OW * Cout ? VLOADU(dyr + ow * Cout)
                                                    : VMASKLOAD(dyr + ow * Cout, VMASK_FOR(Cout));
        for (int t = 0; t < NT; t++)
            a[t] = VFMA(VSET1(rows[off[t] + ow]), g, a[t]);
    }
    for (int t = 0; t < NT; t++)
        VSTOREU(accp + (t0 + t) * VW, a[t]);
}

FNN_TARGET_AVX2 static void FN(c1n_dw_block_avx2)(const fnn_conv_shape *s, const REAL *x,
                                                  const REAL *dy, ptrdiff_t it0, ptrdiff_t it1,
                                                  REAL *rows, REAL *dyT, REAL *accv, REAL *part)
{
    const ptrdiff_t Cout = s->Cout, OW = s->OW, taps = s->KH * s->KW;
    const ptrdiff_t Wbuf = s->W + s->pl + s->pr + VW;
    (void)dyT;
    for (ptrdiff_t e = 0; e < taps * VW; e++)
        accv[e] = 0;
    ptrdiff_t cur_n = -1;
    for (ptrdiff_t it = it0; it < it1; it++) {
        const REAL *r = FN(c1_item_rows)(s, x, it, rows, Wbuf, &cur_n);
        const REAL *dyr = dy + it * OW * Cout;
        /* tiles of nearly equal size (25 taps: 13 + 12): a lone short tile would be
         * one latency-bound FMA chain */
        const ptrdiff_t ntiles = (taps + C1N_NT - 1) / C1N_NT;
        for (ptrdiff_t k = 0, t0 = 0; k < ntiles; k++) {
            const ptrdiff_t nt = (taps - t0) / (ntiles - k) + ((taps - t0) % (ntiles - k) != 0);
            switch (nt) {
#define C1N_CASE(n) case n: FN(c1n_dw_tile)(s, r, Wbuf, dyr, t0, accv, n); break;
            C1N_CASE(1) C1N_CASE(2) C1N_CASE(3) C1N_CASE(4) C1N_CASE(5) C1N_CASE(6) C1N_CASE(7)
            C1N_CASE(8) C1N_CASE(9) C1N_CASE(10) C1N_CASE(11) C1N_CASE(12)
            default: FN(c1n_dw_tile)(s, r, Wbuf, dyr, t0, accv, C1N_NT); break;
#undef C1N_CASE
            }
            t0 += nt;
        }
    }
    for (ptrdiff_t t = 0; t < taps; t++)
        for (ptrdiff_t c = 0; c < Cout; c++)
            part[t * Cout + c] = accv[t * VW + c];
}
#endif

static int FN(c1_dw_fits)(const fnn_conv_shape *s)
{
    const ptrdiff_t OWp = (s->OW + VW - 1) / VW * VW;
    return FN(c1_fits)(s) && s->KH * s->KW * s->Cout * VW <= C1_BUF && OWp * s->Cout <= C1_BUF;
}

typedef void (*FN(c1_dw_fn))(const fnn_conv_shape *, const REAL *, const REAL *, ptrdiff_t,
                             ptrdiff_t, REAL *, REAL *, REAL *, REAL *);

static void FN(c1_backward_weights)(const fnn_conv_shape *s, const REAL *x, const REAL *dy,
                                    REAL *dw, REAL *dbias, int acc, REAL *ws, int nthreads,
                                    FN(c1_dw_fn) blk)
{
    const ptrdiff_t Cout = s->Cout, KC = s->KH * s->KW * Cout, items = s->N * s->OH;
    double *dbpart = (double *)(void *)ws;
    REAL *wpart = ws + 2 * s->max_blocks * Cout;
    ptrdiff_t nblk = (items * s->OW + s->row_block - 1) / s->row_block;
    if (nblk > s->max_blocks)
        nblk = s->max_blocks;
    if (nblk < 1)
        nblk = 1;
    const ptrdiff_t ib = (items + nblk - 1) / nblk;
    nblk = (items + ib - 1) / ib;
    const int par = nthreads > 1 && nblk > 1;
    (void)par;
    _Pragma("omp parallel num_threads(nthreads) if (par)")
    {
        REAL rows[C1_BUF], dyT[C1_BUF], accv[C1_BUF];
        _Pragma("omp for schedule(dynamic, 1)")
        for (ptrdiff_t b = 0; b < nblk; b++) {
            const ptrdiff_t it0 = b * ib, it1 = it0 + ib < items ? it0 + ib : items;
            blk(s, x, dy, it0, it1, rows, dyT, accv, wpart + b * KC);
            if (dbias)
                FN(dbias_block)(dy, it0 * s->OW, it1 * s->OW, Cout, dbpart + b * Cout);
        }
    }
    FN(add_partials)(wpart, dbpart, nblk, KC, Cout, dw, dbias, acc, nthreads);
}

void FN(fnn_conv2d_backward_weights)(const fnn_conv_shape *s, const REAL *x, const REAL *dy,
                                     REAL *dw, REAL *dbias, int accumulate, REAL *ws,
                                     int nthreads)
{
    /* dw (K, Cout) (+)= cols^T (K, rows) @ dy (rows, Cout), chunk by chunk, block by block */
    void (*im2col)(const fnn_conv_shape *, const REAL *, REAL *) = PICK(im2col);
    void (*im2col_range)(const fnn_conv_shape *, const REAL *, ptrdiff_t, ptrdiff_t, REAL *) =
        PICK(im2col_range);
    const ptrdiff_t P = s->OH * s->OW, K = s->KH * s->KW * s->Cin, HWC = s->H * s->W * s->Cin;
    const ptrdiff_t Cout = s->Cout, KC = K * Cout;
    const int direct = is_direct(s);
    double *dbpart = (double *)(void *)ws;
    REAL *wpart = ws + 2 * s->max_blocks * Cout;
    REAL *cols = FN(cols_of)(s, ws);
    if (nthreads < 1)
        nthreads = 1;
    if (!s->bf16 && FN(c1_dw_fits)(s)) {
        FN(c1_dw_fn) blk = PICK(c1_dw_block);
#if FNN_X86
        if (fnn_use_avx2() && s->Cout <= VW)
            blk = FN(c1n_dw_block_avx2);
#endif
        FN(c1_backward_weights)(s, x, dy, dw, dbias, accumulate, ws, nthreads, blk);
        return;
    }
    if (!s->bf16 && FN(c1w_fits)(s)) {
        FN(c1_backward_weights)(s, x, dy, dw, dbias, accumulate, ws, nthreads,
                                PICK(c1w_dw_block));
        return;
    }
    for (ptrdiff_t n0 = 0; n0 < s->N; n0 += s->chunk) {
        const ptrdiff_t nb = s->N - n0 < s->chunk ? s->N - n0 : s->chunk, rows = nb * P;
        const int acc = accumulate || n0 > 0;
        const REAL *A = direct ? x + n0 * HWC : cols, *D = dy + n0 * P * Cout;
        ptrdiff_t nblk = (rows + s->row_block - 1) / s->row_block;
        if (nblk > s->max_blocks)
            nblk = s->max_blocks;
        if (nblk < 1)
            nblk = 1;
        const ptrdiff_t br = (rows + nblk - 1) / nblk;
        nblk = (rows + br - 1) / br;
        const int outer = nthreads > 1 && nblk >= nthreads, inner = outer ? 1 : nthreads;
        if (!direct && !outer) {
            _Pragma("omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (nthreads > 1 && nb > 1)")
            for (ptrdiff_t i = 0; i < nb; i++)
                im2col(s, x + (n0 + i) * HWC, cols + i * P * K);
        }
        if (nblk == 1) {
            fnn_epilogue ep = {.accumulate = acc};
            GEMM(s)(K, Cout, rows, A, 1, K, D, Cout, 1, dw, Cout, 1, &ep, nthreads);
            if (dbias) {
                FN(dbias_block)(D, 0, rows, Cout, dbpart);
                for (ptrdiff_t c = 0; c < Cout; c++)
                    dbias[c] = (REAL)(acc ? (double)dbias[c] + dbpart[c] : dbpart[c]);
            }
            continue;
        }
        _Pragma("omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (outer)")
        for (ptrdiff_t b = 0; b < nblk; b++) {
            const ptrdiff_t r0 = b * br, r1 = r0 + br < rows ? r0 + br : rows;
            fnn_epilogue ep = {.relu = 0};
            if (!direct && outer)
                /* the block's own columns, just before its GEMM reads them (in L2) */
                for (ptrdiff_t i = r0 / P; i * P < r1; i++) {
                    const ptrdiff_t p0 = r0 > i * P ? r0 - i * P : 0;
                    const ptrdiff_t p1 = r1 < (i + 1) * P ? r1 - i * P : P;
                    im2col_range(s, x + (n0 + i) * HWC, p0, p1, cols + (i * P + p0) * K);
                }
            GEMM(s)(K, Cout, r1 - r0, A + r0 * K, 1, K, D + r0 * Cout, Cout, 1, wpart + b * KC, Cout,
                 1, &ep, inner);
            if (dbias)
                FN(dbias_block)(D, r0, r1, Cout, dbpart + b * Cout);
        }
        FN(add_partials)(wpart, dbpart, nblk, KC, Cout, dw, dbias, acc, nthreads);
    }
}

/* ---- pooling ---------------------------------------------------------------------------------- */

/* max pooling: conv_pool.h */
#include "conv_pool.h"

void FN(fnn_avgpool2d_forward)(const fnn_pool_shape *s, const REAL *x, REAL *y, int nthreads)
{
    void (*row)(const fnn_pool_shape *, const REAL *, ptrdiff_t, REAL *) = PICK(avgpool_row);
    const ptrdiff_t rowsz = s->OW * s->C, items = s->N * s->OH;
    const int par = nthreads > 1 && items > 1 && items * rowsz * s->ph * s->pw >= POOL_PAR_MIN;
    (void)par;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (par)")
    for (ptrdiff_t it = 0; it < items; it++) {
        ptrdiff_t n = it / s->OH, oh = it % s->OH;
        row(s, x + n * s->H * s->W * s->C, oh, y + it * rowsz);
    }
}

void FN(fnn_avgpool2d_backward)(const fnn_pool_shape *s, const REAL *dy, REAL *dx, int nthreads)
{
    void (*back)(const fnn_pool_shape *, const REAL *, REAL *) = PICK(avgpool_back);
    const ptrdiff_t HWC = s->H * s->W * s->C, O = s->OH * s->OW * s->C;
    const int par = nthreads > 1 && s->N > 1 && s->N * (HWC + O * s->ph * s->pw) >= POOL_PAR_MIN;
    (void)par;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (par)")
    for (ptrdiff_t n = 0; n < s->N; n++)
        back(s, dy + n * O, dx + n * HWC);
}

#undef CLONES
#undef C1N_NT
#undef BD_MAX_CIN
#undef BD_BUF
#undef C1W_NV
#undef C1W_NT
#undef C1W_NPIX
#undef C1W_NPMAX
#undef C1W_NTMAX
#undef AVX2_FN
#undef PICK
#undef FN
#undef CAT
#undef CAT_
