/* One instruction set's kernels of the small-M path (gemm_small.h), included
 * by gemm_small.h once per (element type, instruction set).
 *
 * Expects from the includer: T, SMK (name suffix, e.g. s_avx2), SMK_TARGET
 * (function attribute), VT, VW (vector type, lanes), VMASK (lane-mask type),
 * VZERO(), VSET1(x), VLOADU(p), VSTOREU(p, x), VFMA(a, b, c), VADD(a, b),
 * VMAX(a, b), VMASK_FIRST(r) (the first r lanes), VLOADM(p, m), VSTOREM(p, m, x),
 * and SMK_NV1..SMK_NV4: vectors per full strip for 1..4 rows.
 *
 * A strip is mt (1..4) rows of C by nv vectors of columns.  Per k it loads the
 * nv vectors of B's row k once (B is read in place: row-major, columns
 * contiguous), broadcasts the mt values A[i, k] and accumulates
 * mt x nv FMAs.  When mt x nv gives too few independent FMA chains to hide the
 * FMA latency, ku (2 or 4) interleaved k streams keep separate accumulators,
 * summed at the end in a fixed order; the path and ku depend on (mt, nv) only,
 * so a column's result never depends on the thread split (gemm_small.h cuts N
 * at multiples of every full strip's width).
 */

#define SMK_CAT_(a, b) a##b
#define SMK_CAT(a, b) SMK_CAT_(a, b)
#define SMKF(name) SMK_CAT(name, SMK)

/* Independent k streams for mt x nv accumulators (a function of the shape only). */
#ifndef SM_KU
#define SM_KU(acc) ((acc) >= 6 ? 1 : (acc) >= 3 ? 2 : 4)
#endif

/* mt x nv strip of C at columns [0, nv*VW) of B/C/bias (already offset), the last
 * vector masked to `tail` lanes when tail > 0.  Always inlined into one wrapper per
 * (mt, nv, tail?) so that the accumulators live in registers. */
static inline __attribute__((always_inline)) SMK_TARGET void
SMKF(sm_strip_)(const int mt, const int nv, const int masked, int tail, ptrdiff_t K,
                const T *A, ptrdiff_t rsa, ptrdiff_t csa, const T *B, ptrdiff_t rsb,
                T *C, ptrdiff_t rsc, ptrdiff_t csc, const SM_EP *ep)
{
    const int ku = SM_KU(mt * nv);
    VMASK m = VMASK_FIRST(masked ? tail : VW);
    (void)m;
    VT c[4][4][SMK_NVMAX];
#pragma GCC unroll 4
    for (int u = 0; u < ku; u++)
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++)
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++)
                c[u][i][v] = VZERO();
    const T *a0 = A, *a1 = A + rsa, *a2 = A + 2 * rsa, *a3 = A + 3 * rsa;
    ptrdiff_t k = 0;
#define SMK_STEP(u, kk)                                                                    \
    do {                                                                                   \
        const T *br_ = B + (kk) * rsb;                                                     \
        VT b_[SMK_NVMAX];                                                                          \
        _Pragma("GCC unroll 16") for (int v = 0; v < nv; v++)                               \
            b_[v] = (masked && v == nv - 1) ? VLOADM(br_ + v * VW, m) : VLOADU(br_ + v * VW); \
        VT x_;                                                                             \
        x_ = VSET1(a0[(kk) * csa]);                                                        \
        _Pragma("GCC unroll 16") for (int v = 0; v < nv; v++)                               \
            c[u][0][v] = VFMA(x_, b_[v], c[u][0][v]);                                      \
        if (mt > 1) {                                                                      \
            x_ = VSET1(a1[(kk) * csa]);                                                    \
            _Pragma("GCC unroll 16") for (int v = 0; v < nv; v++)                           \
                c[u][1][v] = VFMA(x_, b_[v], c[u][1][v]);                                  \
        }                                                                                  \
        if (mt > 2) {                                                                      \
            x_ = VSET1(a2[(kk) * csa]);                                                    \
            _Pragma("GCC unroll 16") for (int v = 0; v < nv; v++)                           \
                c[u][2][v] = VFMA(x_, b_[v], c[u][2][v]);                                  \
        }                                                                                  \
        if (mt > 3) {                                                                      \
            x_ = VSET1(a3[(kk) * csa]);                                                    \
            _Pragma("GCC unroll 16") for (int v = 0; v < nv; v++)                           \
                c[u][3][v] = VFMA(x_, b_[v], c[u][3][v]);                                  \
        }                                                                                  \
    } while (0)
    if (ku == 1) {
#pragma GCC unroll 2
        for (; k < K; k++)
            SMK_STEP(0, k);
    } else if (ku == 2) {
        for (; k + 2 <= K; k += 2) {
            SMK_STEP(0, k);
            SMK_STEP(1, k + 1);
        }
    } else {
        for (; k + 4 <= K; k += 4) {
            SMK_STEP(0, k);
            SMK_STEP(1, k + 1);
            SMK_STEP(2, k + 2);
            SMK_STEP(3, k + 3);
        }
    }
    for (; k < K; k++)                 /* the k tail of the interleaved streams */
        SMK_STEP(0, k);
#undef SMK_STEP
#pragma GCC unroll 4
    for (int u = 1; u < ku; u++)
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++)
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++)
                c[0][i][v] = VADD(c[0][i][v], c[u][i][v]);

    if (csc == 1 && !ep->mask) {
        /* the epilogue in registers, in gemm.h's order: + C_old, + bias, ReLU */
        const VT zero = VZERO();
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++) {
            T *cr = C + i * rsc;
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++) {
                int last = masked && v == nv - 1;
                VT x = c[0][i][v];
                if (ep->beta)
                    x = VADD(x, last ? VLOADM(cr + v * VW, m) : VLOADU(cr + v * VW));
                if (ep->bias)
                    x = VADD(x, last ? VLOADM(ep->bias + v * VW, m) : VLOADU(ep->bias + v * VW));
                if (ep->relu)
                    x = VMAX(zero, x);
                if (last)
                    VSTOREM(cr + v * VW, m, x);
                else
                    VSTOREU(cr + v * VW, x);
            }
        }
    } else {
        /* strided C or a mask: spill, then the element-wise store */
        T acc[4 * SMK_NVMAX * VW] __attribute__((aligned(64)));
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++)
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++)
                VSTOREU(acc + i * SMK_NVMAX * VW + v * VW, c[0][i][v]);
        SMF(sm_store_)(mt, (nv - masked) * VW + (masked ? tail : 0), acc, SMK_NVMAX * VW, C, rsc, csc,
                       ep);
    }
}

/* One wrapper per (mt, nv, masked): constants propagate into the inlined strip. */
#define SMK_W(mt_, nv_, mk_)                                                               \
    static SMK_TARGET void SMK_CAT(SMKF(sm_w_), _##mt_##_##nv_##_##mk_)(                   \
        int tail, ptrdiff_t K, const T *A, ptrdiff_t rsa, ptrdiff_t csa, const T *B,       \
        ptrdiff_t rsb, T *C, ptrdiff_t rsc, ptrdiff_t csc, const SM_EP *ep)                \
    {                                                                                      \
        SMKF(sm_strip_)(mt_, nv_, mk_, tail, K, A, rsa, csa, B, rsb, C, rsc, csc, ep);     \
    }
#define SMK_W2(mt_, nv_) SMK_W(mt_, nv_, 0) SMK_W(mt_, nv_, 1)
#define SMK_ROW(mt_) SMK_W2(mt_, 1) SMK_W2(mt_, 2) SMK_W2(mt_, 3) SMK_W2(mt_, 4) \
    SMK_W2(mt_, 5) SMK_W2(mt_, 6) SMK_W2(mt_, 7) SMK_W2(mt_, 8)
#if SMK_NVMAX > 8
SMK_W2(1, 9) SMK_W2(1, 10) SMK_W2(1, 11) SMK_W2(1, 12) SMK_W2(1, 13) SMK_W2(1, 14) SMK_W2(1, 15) SMK_W2(1, 16)
#endif
SMK_ROW(1)
SMK_ROW(2)
SMK_ROW(3)
SMK_ROW(4)
#undef SMK_ROW
#undef SMK_W2
#undef SMK_W

/* The wrapper for (mt, nv, masked). */
static SM_STRIP_FN SMKF(sm_fn_)(int mt, int nv, int masked)
{
#define SMK_C(mt_, nv_)                                                                    \
    case (mt_) * 32 + (nv_):                                                               \
        return masked ? SMK_CAT(SMKF(sm_w_), _##mt_##_##nv_##_1)                           \
                      : SMK_CAT(SMKF(sm_w_), _##mt_##_##nv_##_0);
#define SMK_CROW(mt_) SMK_C(mt_, 1) SMK_C(mt_, 2) SMK_C(mt_, 3) SMK_C(mt_, 4) \
    SMK_C(mt_, 5) SMK_C(mt_, 6) SMK_C(mt_, 7) SMK_C(mt_, 8)
    switch (mt * 32 + nv) {
    SMK_CROW(1) SMK_CROW(2) SMK_CROW(3) SMK_CROW(4)
#if SMK_NVMAX > 8
    SMK_C(1, 9) SMK_C(1, 10) SMK_C(1, 11) SMK_C(1, 12)
    SMK_C(1, 13) SMK_C(1, 14) SMK_C(1, 15) SMK_C(1, 16)
#endif
    }
#undef SMK_CROW
#undef SMK_C
    return NULL;      /* not reached: mt <= 4, nv <= the full strip's */
}

/* Columns per full strip of mt rows. */
static ptrdiff_t SMKF(sm_width_)(int mt)
{
    static const int nvfull[4] = {SMK_NV1, SMK_NV2, SMK_NV3, SMK_NV4};
    return (ptrdiff_t)nvfull[mt - 1] * VW;
}

/* Rows [0, mt) x columns [j0, j1) of C: full strips, then one narrower strip
 * (its last vector masked when the width is not a multiple of VW). */
static SMK_TARGET void SMKF(sm_rows_)(int mt, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t K,
                                      const T *A, ptrdiff_t rsa, ptrdiff_t csa, const T *B,
                                      ptrdiff_t rsb, T *C, ptrdiff_t rsc, ptrdiff_t csc,
                                      const SM_EP *ep0)
{
    static const int nvfull[4] = {SMK_NV1, SMK_NV2, SMK_NV3, SMK_NV4};
    const int nv = nvfull[mt - 1];
    const ptrdiff_t w = (ptrdiff_t)nv * VW;
    SM_EP ep = *ep0;
    SM_STRIP_FN full = SMKF(sm_fn_)(mt, nv, 0);
    ptrdiff_t j = j0;
    for (; j + w <= j1; j += w) {
        ep.bias = ep0->bias ? ep0->bias + j : NULL;
        ep.mask = ep0->mask ? ep0->mask + j * ep0->csm : NULL;
        full(0, K, A, rsa, csa, B + j, rsb, C + j * csc, rsc, csc, &ep);
    }
    if (j < j1) {
        ptrdiff_t r = j1 - j;
        int nvr = (int)((r + VW - 1) / VW), tail = (int)(r % VW);
        ep.bias = ep0->bias ? ep0->bias + j : NULL;
        ep.mask = ep0->mask ? ep0->mask + j * ep0->csm : NULL;
        SMKF(sm_fn_)(mt, nvr, tail != 0)(tail, K, A, rsa, csa, B + j, rsb,
                                                  C + j * csc, rsc, csc, &ep);
    }
}

#undef SMKF
#undef SMK_CAT
#undef SMK_CAT_

/* the parameters of this instance: the next one defines its own */
#undef SMK
#undef SMK_TARGET
#undef VT
#undef VW
#undef VMASK
#undef VZERO
#undef VSET1
#undef VLOADU
#undef VSTOREU
#undef VFMA
#undef VADD
#undef VMAX
#undef VMASK_FIRST
#undef VLOADM
#undef VSTOREM
#undef SMK_NV1
#undef SMK_NV2
#undef SMK_NV3
#undef SMK_NV4
#undef SMK_NVMAX
