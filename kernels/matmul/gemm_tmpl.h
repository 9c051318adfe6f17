/* The GEMM engine for one element type, included twice by gemm.c (float, double).
 *
 * Expects: T (element type), SFX (name suffix), MR, NR (microkernel tile),
 * MC_MAX, KC_MAX, NC_MAX (cache blocks), and for the AVX2 microkernel VT, VW
 * (vector type, lanes) with the V* intrinsic macros.
 *
 * Goto/BLIS loop nest for one thread's block of C:
 *
 *   for jc in N step NC:            B block  KC x NC  lives in L2/L3
 *     for pc in K step KC:          pack B(pc:pc+kc, jc:jc+nc) into NR-column micro-panels
 *       for ic in M step MC:        pack A(ic:ic+mc, pc:pc+kc) into MR-row micro-panels (L2)
 *         for jr in nc step NR:     one B micro-panel (kc x NR) stays in L1
 *           for ir in mc step MR:   microkernel: MR x NR tile of C in registers
 *
 * Every element of C is computed by exactly one microkernel call per K block,
 * in the same order whatever the thread split, so results do not depend on
 * the number of threads.  The epilogue (accumulate, bias, ReLU, mask) runs in
 * the microkernel's store phase of the last K block.
 *
 * Emulated bf16 (p->bf16, float only): the packed panels are rounded to bf16
 * in place after packing (F(round_packed_)), so the microkernels multiply
 * bf16 values in fp32 -- the arithmetic of vdpbf16ps up to summation order.
 * Needs F(round_packed_) and F(in_) (a no-op for double) from the includer.
 */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define F(name) CAT(name, SFX)
#define TILE_EP F(tile_ep_)

/* What the store phase of one microkernel call does. */
typedef struct {
    int beta;          /* add the C already there (accumulate, or K block > 0) */
    int last;          /* last K block: apply bias / ReLU / mask */
    const T *bias;     /* at this tile's first column (or row), or NULL */
    int bias_row;      /* bias indexed by row (transposed orientation) */
    int relu;
    const T *mask;     /* at this tile's (0, 0), or NULL */
    ptrdiff_t rsm, csm;
} TILE_EP;

/* Scalar store of an m x n tile held in acc (row-major, leading dim ld).
 * The arithmetic is exactly the vector store path's, element by element
 * (add, add, max(0, x), and-mask), so which path runs never changes a bit. */
static void F(store_tile_)(int m, int n, const T *acc, int ld, T *C, ptrdiff_t rsc,
                           ptrdiff_t csc, const TILE_EP *ep)
{
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            T v = acc[i * ld + j];
            T *c = &C[i * rsc + j * csc];
            if (ep->beta)
                v = v + *c;
            if (ep->last) {
                if (ep->bias)
                    v = v + ep->bias[ep->bias_row ? i : j];
                if (ep->relu)
                    v = v < (T)0 ? (T)0 : v;       /* == max(0, v): keeps NaN and -0 */
                if (ep->mask && !(ep->mask[i * ep->rsm + j * ep->csm] > (T)0))
                    v = (T)0;
            }
            *c = v;
        }
    }
}

/* ---------------------------------------------------------------- microkernels */

/* Plain C microkernel (fnn_simd_level() == 0): the same tile, no intrinsics. */
static void F(ukr_scalar_)(ptrdiff_t kc, const T *restrict Ap, const T *restrict Bp,
                           T *C, ptrdiff_t rsc, ptrdiff_t csc, int m, int n,
                           const TILE_EP *ep)
{
    T acc[MR * NR];
    for (int t = 0; t < MR * NR; t++)
        acc[t] = 0;
    for (ptrdiff_t k = 0; k < kc; k++) {
        for (int i = 0; i < MR; i++) {
            T a = Ap[k * MR + i];
            for (int j = 0; j < NR; j++)
                acc[i * NR + j] += a * Bp[k * NR + j];
        }
    }
    F(store_tile_)(m, n, acc, NR, C, rsc, csc, ep);
}

#if FNN_X86
/* Rows 0..3 of a micro-panel (m <= 4): 8 accumulators, still enough FMA
 * chains to cover the latency.  Per element the same operations as the
 * 6-row kernel, so which kernel computes a row never changes a bit. */
FNN_TARGET_AVX2
static void F(ukr4_avx2_)(ptrdiff_t kc, const T *restrict Ap, const T *restrict Bp,
                          T *C, ptrdiff_t rsc, ptrdiff_t csc, int m, int n,
                          const TILE_EP *ep)
{
    VT c00 = VZERO(), c01 = VZERO(), c10 = VZERO(), c11 = VZERO();
    VT c20 = VZERO(), c21 = VZERO(), c30 = VZERO(), c31 = VZERO();
#pragma GCC unroll 4
    for (ptrdiff_t k = 0; k < kc; k++) {
        VT b0 = VLOAD(Bp), b1 = VLOAD(Bp + VW), a;
        a = VBCAST(Ap + 0); c00 = VFMA(a, b0, c00); c01 = VFMA(a, b1, c01);
        a = VBCAST(Ap + 1); c10 = VFMA(a, b0, c10); c11 = VFMA(a, b1, c11);
        a = VBCAST(Ap + 2); c20 = VFMA(a, b0, c20); c21 = VFMA(a, b1, c21);
        a = VBCAST(Ap + 3); c30 = VFMA(a, b0, c30); c31 = VFMA(a, b1, c31);
        Ap += MR;
        Bp += NR;
    }
    T acc[MR * NR] __attribute__((aligned(32)));
    VSTOREU(acc + 0 * NR, c00); VSTOREU(acc + 0 * NR + VW, c01);
    VSTOREU(acc + 1 * NR, c10); VSTOREU(acc + 1 * NR + VW, c11);
    VSTOREU(acc + 2 * NR, c20); VSTOREU(acc + 2 * NR + VW, c21);
    VSTOREU(acc + 3 * NR, c30); VSTOREU(acc + 3 * NR + VW, c31);
    F(store_tile_)(m, n, acc, NR, C, rsc, csc, ep);
}

/* MR x (2 vectors) register tile: 12 accumulators, 2 B vectors, 1 broadcast,
 * so 15 of the 16 ymm registers; 12 independent FMA chains cover Zen's
 * 2 pipes x 4 cycles latency. */
FNN_TARGET_AVX2
static void F(ukr_avx2_)(ptrdiff_t kc, const T *restrict Ap, const T *restrict Bp,
                         T *C, ptrdiff_t rsc, ptrdiff_t csc, int m, int n,
                         const TILE_EP *ep)
{
    if (m <= 4) {
        F(ukr4_avx2_)(kc, Ap, Bp, C, rsc, csc, m, n, ep);
        return;
    }
    VT c00 = VZERO(), c01 = VZERO(), c10 = VZERO(), c11 = VZERO();
    VT c20 = VZERO(), c21 = VZERO(), c30 = VZERO(), c31 = VZERO();
    VT c40 = VZERO(), c41 = VZERO(), c50 = VZERO(), c51 = VZERO();
    int full = (m == MR && n == NR && csc == 1);
    if (full) {
        /* the C tile is read (beta) or written soon: fetch its lines early */
        for (int i = 0; i < MR; i++) {
            _mm_prefetch((const char *)(C + i * rsc), _MM_HINT_T0);
            _mm_prefetch((const char *)(C + i * rsc + NR - 1), _MM_HINT_T0);
        }
    }
#pragma GCC unroll 4
    for (ptrdiff_t k = 0; k < kc; k++) {
        VT b0 = VLOAD(Bp), b1 = VLOAD(Bp + VW), a;
        a = VBCAST(Ap + 0); c00 = VFMA(a, b0, c00); c01 = VFMA(a, b1, c01);
        a = VBCAST(Ap + 1); c10 = VFMA(a, b0, c10); c11 = VFMA(a, b1, c11);
        a = VBCAST(Ap + 2); c20 = VFMA(a, b0, c20); c21 = VFMA(a, b1, c21);
        a = VBCAST(Ap + 3); c30 = VFMA(a, b0, c30); c31 = VFMA(a, b1, c31);
        a = VBCAST(Ap + 4); c40 = VFMA(a, b0, c40); c41 = VFMA(a, b1, c41);
        a = VBCAST(Ap + 5); c50 = VFMA(a, b0, c50); c51 = VFMA(a, b1, c51);
        Ap += MR;
        Bp += NR;
    }
    if (full && (!ep->last || !ep->mask || ep->csm == 1)) {
        const VT zero = VZERO();
#define FNN_STORE_ROW(i, x0, x1)                                                   \
        do {                                                                       \
            T *cr = C + (i) * rsc;                                                 \
            if (ep->beta) {                                                        \
                x0 = VADD(x0, VLOADU(cr));                                         \
                x1 = VADD(x1, VLOADU(cr + VW));                                    \
            }                                                                      \
            if (ep->last) {                                                        \
                if (ep->bias && ep->bias_row) {                                    \
                    VT b_ = VBCAST(ep->bias + (i));                                \
                    x0 = VADD(x0, b_);                                             \
                    x1 = VADD(x1, b_);                                             \
                } else if (ep->bias) {                                             \
                    x0 = VADD(x0, VLOADU(ep->bias));                               \
                    x1 = VADD(x1, VLOADU(ep->bias + VW));                          \
                }                                                                  \
                if (ep->relu) {                                                    \
                    x0 = VMAX(zero, x0);                                           \
                    x1 = VMAX(zero, x1);                                           \
                }                                                                  \
                if (ep->mask) {                                                    \
                    const T *mr_ = ep->mask + (i) * ep->rsm;                       \
                    x0 = VAND(x0, VCMPGT(VLOADU(mr_), zero));                      \
                    x1 = VAND(x1, VCMPGT(VLOADU(mr_ + VW), zero));                 \
                }                                                                  \
            }                                                                      \
            VSTOREU(cr, x0);                                                       \
            VSTOREU(cr + VW, x1);                                                  \
        } while (0)
        FNN_STORE_ROW(0, c00, c01);
        FNN_STORE_ROW(1, c10, c11);
        FNN_STORE_ROW(2, c20, c21);
        FNN_STORE_ROW(3, c30, c31);
        FNN_STORE_ROW(4, c40, c41);
        FNN_STORE_ROW(5, c50, c51);
#undef FNN_STORE_ROW
    } else {
        /* edge tile or strided C: spill the tile and store element-wise */
        T acc[MR * NR] __attribute__((aligned(32)));
        VSTOREU(acc + 0 * NR, c00); VSTOREU(acc + 0 * NR + VW, c01);
        VSTOREU(acc + 1 * NR, c10); VSTOREU(acc + 1 * NR + VW, c11);
        VSTOREU(acc + 2 * NR, c20); VSTOREU(acc + 2 * NR + VW, c21);
        VSTOREU(acc + 3 * NR, c30); VSTOREU(acc + 3 * NR + VW, c31);
        VSTOREU(acc + 4 * NR, c40); VSTOREU(acc + 4 * NR + VW, c41);
        VSTOREU(acc + 5 * NR, c50); VSTOREU(acc + 5 * NR + VW, c51);
        F(store_tile_)(m, n, acc, NR, C, rsc, csc, ep);
    }
}
#endif

/* ---------------------------------------------------------------- packing */

/* Height of the A micro-panel that starts `rest` rows before the end of an
 * M block.  Full MR-row panels, except that a tail of 7 or 8 rows becomes
 * 4 + 3 / 4 + 4 (two 4-row tiles cost 2 x 4/6 of a 6-row one, instead of
 * one full tile plus a mostly empty one).  M = 128 = 20 x 6 + 4 + 4. */
static inline int F(panel_h_)(ptrdiff_t rest)
{
    if (rest == MR + 1 || rest == MR + 2)
        return 4;
    return (int)(rest < MR ? rest : MR);
}

/* A (mc x kc, strides rsa/csa) -> micro-panels of F(panel_h_) rows, each
 * kc x MR (k-major: the MR values of one k are adjacent, rows past the
 * panel's height are zero); panel q starts at Ap + q * MR * kc. */
static void F(pack_a_)(ptrdiff_t mc, ptrdiff_t kc, const T *A, ptrdiff_t rsa, ptrdiff_t csa,
                       T *restrict Ap, int vec)
{
    int mr;
    for (ptrdiff_t ir = 0; ir < mc; ir += mr, Ap += MR * kc) {
        mr = F(panel_h_)(mc - ir);
        const T *a = A + ir * rsa;
        T *d = Ap;
        if (mr == MR && csa == 1) {
            /* C-ordered A: MR row streams, each contiguous in k */
            F(pack_a_rows6_)(kc, a, rsa, d, vec);
        } else if (mr == MR && rsa == 1) {
            /* transposed / Fortran A: the MR values of one k are contiguous */
            for (ptrdiff_t k = 0; k < kc; k++) {
                const T *s = a + k * csa;
                for (int i = 0; i < MR; i++)
                    d[i] = s[i];
                d += MR;
            }
        } else {
            for (ptrdiff_t k = 0; k < kc; k++) {
                int i = 0;
                for (; i < mr; i++)
                    d[i] = a[i * rsa + k * csa];
                for (; i < MR; i++)
                    d[i] = 0;
                d += MR;
            }
        }
    }
}

#if FNN_X86
/* C-ordered B, full panels only: one k row of B, NR = 2 vectors per panel. */
FNN_TARGET_AVX2
static void F(pack_b_row_avx2_)(ptrdiff_t nfull, ptrdiff_t kc, const T *s, T *d)
{
    for (ptrdiff_t jr = 0; jr < nfull; jr += NR) {
        VT x0 = VLOADU(s + jr), x1 = VLOADU(s + jr + VW);
        VSTOREU(d + jr * kc, x0);
        VSTOREU(d + jr * kc + VW, x1);
    }
}
#endif

/* B (kc x nc, strides rsb/csb) -> ceil(nc/NR) micro-panels, each kc x NR
 * (the NR values of one k are adjacent), zero-padded to NR columns. */
static void F(pack_b_)(ptrdiff_t kc, ptrdiff_t nc, const T *B, ptrdiff_t rsb, ptrdiff_t csb,
                       T *restrict Bp, int vec)
{
    if (csb == 1) {
        /* C-ordered B: read each k row once, front to back (the hardware
         * prefetcher follows one stream; reading panel by panel would jump
         * a whole row stride every NR elements), and scatter NR-wide pieces
         * into the panels, which stay in L2 */
        ptrdiff_t nfull = nc / NR * NR;
        for (ptrdiff_t k = 0; k < kc; k++) {
            const T *s = B + k * rsb;
            T *d = Bp + k * NR;
#if FNN_X86
            if (vec)
                F(pack_b_row_avx2_)(nfull, kc, s, d);
            else
#endif
            for (ptrdiff_t jr = 0; jr < nfull; jr += NR)
                memcpy(d + jr * kc, s + jr, NR * sizeof(T));
            if (nfull < nc) {
                T *e = d + nfull * kc;
                int j = 0;
                for (; j < nc - nfull; j++)
                    e[j] = s[nfull + j];
                for (; j < NR; j++)
                    e[j] = 0;
            }
        }
        return;
    }
    for (ptrdiff_t jr = 0; jr < nc; jr += NR) {
        int nr = (int)(nc - jr < NR ? nc - jr : NR);
        const T *b = B + jr * csb;
        T *d = Bp + jr * kc;
        if (rsb == 1 && nr == NR && vec) {
            PACK_B_COLS(kc, b, csb, d);
        } else if (rsb == 1) {
            /* transposed / Fortran B: columns are contiguous in k; the panel
             * (kc x NR) is small enough that the strided writes hit L1 */
            int j = 0;
            for (; j < nr; j++) {
                const T *s = b + j * csb;
                for (ptrdiff_t k = 0; k < kc; k++)
                    d[k * NR + j] = s[k];
            }
            for (; j < NR; j++)
                for (ptrdiff_t k = 0; k < kc; k++)
                    d[k * NR + j] = 0;
        } else {
            for (ptrdiff_t k = 0; k < kc; k++) {
                int j = 0;
                for (; j < nr; j++)
                    d[k * NR + j] = b[k * rsb + j * csb];
                for (; j < NR; j++)
                    d[k * NR + j] = 0;
            }
        }
    }
}

/* ---------------------------------------------------------------- drivers */

typedef void (*F(ukr_fn_))(ptrdiff_t, const T *, const T *, T *, ptrdiff_t, ptrdiff_t,
                           int, int, const TILE_EP *);

/* One call, after the orientation is fixed: C = epilogue(A @ B). */
typedef struct {
    ptrdiff_t M, N, K;
    const T *A; ptrdiff_t rsa, csa;
    const T *B; ptrdiff_t rsb, csb;
    T *C; ptrdiff_t rsc, csc;
    const T *bias; int bias_row;        /* bias per column of C, or per row */
    int relu;
    const T *mask; ptrdiff_t rsm, csm;
    int accumulate;
    ptrdiff_t kcb, mcb, ncb;            /* cache blocks */
    F(ukr_fn_) ukr;
    int vec;                            /* SIMD packing allowed */
    int bf16;                           /* emulated bf16: round packed inputs (float only) */
} F(prob_);

/* Straightforward loop with the same epilogue: used for K == 0 and when a
 * packing buffer cannot be allocated (slow, but never wrong). */
static void F(naive_)(const F(prob_) *p, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1)
{
    TILE_EP t;
    t.beta = p->accumulate;
    t.last = 1;
    t.relu = p->relu;
    t.bias_row = p->bias_row;
    t.rsm = p->rsm;
    t.csm = p->csm;
    T acc[NR];
    for (ptrdiff_t i = i0; i < i1; i++) {
        for (ptrdiff_t j = j0; j < j1; j += NR) {
            int n = (int)(j1 - j < NR ? j1 - j : NR);
            for (int jj = 0; jj < n; jj++) {
                T s = 0;
                for (ptrdiff_t k = 0; k < p->K; k++)
                    s += F(in_)(p->A[i * p->rsa + k * p->csa], p->bf16) *
                         F(in_)(p->B[k * p->rsb + (j + jj) * p->csb], p->bf16);
                acc[jj] = s;
            }
            t.bias = p->bias ? p->bias + (p->bias_row ? i : j) : NULL;
            t.mask = p->mask ? p->mask + i * p->rsm + j * p->csm : NULL;
            F(store_tile_)(1, n, acc, NR, p->C + i * p->rsc + j * p->csc, p->rsc, p->csc, &t);
        }
    }
}

/* Rows [i0, i1) x columns [j0, j1) of C, on the calling thread. */
/* One packed mc x kc block of A times one packed kc x nc panel of B, into C at
 * (ic, jc): the micro-tiles, each with its epilogue's bias and mask placed (the
 * per-thread blocks and the shared-A split both run their blocks through this). */
static inline void F(macro_)(const F(prob_) *p, TILE_EP *t, const T *Ap, const T *Bp,
                             ptrdiff_t ic, ptrdiff_t mc, ptrdiff_t jc, ptrdiff_t nc,
                             ptrdiff_t kc)
{
    for (ptrdiff_t jr = 0; jr < nc; jr += NR) {
        int nr = (int)(nc - jr < NR ? nc - jr : NR);
        ptrdiff_t j = jc + jr;
        const T *ap = Ap;
        int mr;
        for (ptrdiff_t ir = 0; ir < mc; ir += mr, ap += MR * kc) {
            mr = F(panel_h_)(mc - ir);
            ptrdiff_t i = ic + ir;
            t->bias = p->bias ? p->bias + (p->bias_row ? i : j) : NULL;
            t->mask = p->mask ? p->mask + i * p->rsm + j * p->csm : NULL;
            p->ukr(kc, ap, Bp + jr * kc, p->C + i * p->rsc + j * p->csc, p->rsc, p->csc, mr,
                   nr, t);
        }
    }
}

static void F(gemm_block_)(const F(prob_) *p, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0,
                           ptrdiff_t j1)
{
    ptrdiff_t M = i1 - i0, N = j1 - j0, K = p->K;
    if (M <= 0 || N <= 0)
        return;
    ptrdiff_t mcb = p->mcb, kcb = p->kcb, ncb = p->ncb;
    ptrdiff_t mcap = mcb < M ? mcb : M, ncap = ncb < N ? ncb : N, kcap = kcb < K ? kcb : K;
    mcap = (mcap + MR - 1) / MR * MR + MR;     /* + one panel: the 4 + 4 tail split */
    ncap = (ncap + NR - 1) / NR * NR;
    T *Abuf = (T *)fnn_gemm_buffer(0, (size_t)mcap * (size_t)kcap * sizeof(T));
    T *Bbuf = (T *)fnn_gemm_buffer(1, (size_t)ncap * (size_t)kcap * sizeof(T));
    if (!Abuf || !Bbuf) {
        F(naive_)(p, i0, i1, j0, j1);
        return;
    }
    const ptrdiff_t rsa = p->rsa, csa = p->csa, rsb = p->rsb, csb = p->csb;
    TILE_EP t;
    t.relu = p->relu;
    t.bias_row = p->bias_row;
    t.rsm = p->rsm;
    t.csm = p->csm;
    for (ptrdiff_t jc = j0; jc < j1; jc += ncb) {
        ptrdiff_t nc = j1 - jc < ncb ? j1 - jc : ncb;
        for (ptrdiff_t pc = 0; pc < K; pc += kcb) {
            ptrdiff_t kc = K - pc < kcb ? K - pc : kcb;
            F(pack_b_)(kc, nc, p->B + pc * rsb + jc * csb, rsb, csb, Bbuf, p->vec);
            if (p->bf16)
                F(round_packed_)(Bbuf, (size_t)((nc + NR - 1) / NR * NR) * (size_t)kc);
            t.beta = p->accumulate || pc > 0;
            t.last = pc + kc >= K;
            for (ptrdiff_t ic = i0; ic < i1; ic += mcb) {
                ptrdiff_t mc = i1 - ic < mcb ? i1 - ic : mcb;
                F(pack_a_)(mc, kc, p->A + ic * rsa + pc * csa, rsa, csa, Abuf, p->vec);
                if (p->bf16)     /* every panel written (the 4 + 4 tail adds one) */
                    F(round_packed_)(Abuf, (size_t)((mc + MR - 1) / MR * MR + MR) * (size_t)kc);
                F(macro_)(p, &t, Abuf, Bbuf, ic, mc, jc, nc, kc);
            }
        }
    }
}

/* ---------------------------------------------------------------- narrow outputs */

/* When C has very few columns (an output layer: N = 10) the MR x NR tile
 * would leave most lanes idle.  Instead each element is a dot product along
 * k, vectorised over k: a 4 x 3 block of C keeps 12 vector accumulators, the
 * rows of A are read in place (they must be contiguous in k) and B is copied
 * once into contiguous rows of B^T.  Every element's sum runs in the same
 * order (VW strided partial sums, a fixed reduction tree, then the k tail)
 * whatever the thread split. */
#define DOT_MR 5
#define DOT_NR 2
#define DOT_MAX_N 12

#if FNN_X86
FNN_TARGET_AVX2
static void F(dot_tile_avx2_)(ptrdiff_t K, const T *const *a, const T *b0, const T *b1, T *o)
{
    const T *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4];
    VT c00 = VZERO(), c01 = VZERO(), c10 = VZERO(), c11 = VZERO(), c20 = VZERO();
    VT c21 = VZERO(), c30 = VZERO(), c31 = VZERO(), c40 = VZERO(), c41 = VZERO();
    ptrdiff_t k = 0;
    /* FNN_REG: keep a loaded vector in a register; otherwise GCC folds the
     * load into both FMAs that use it, and 12 loads per 10 FMAs make the
     * loop load-bound instead of FMA-bound. */
#define FNN_REG(v) __asm__("" : "+x"(v))
#pragma GCC unroll 2
    for (; k + VW <= K; k += VW) {
        VT y0 = VLOADU(b0 + k), y1 = VLOADU(b1 + k), x;
        FNN_REG(y0);
        FNN_REG(y1);
        x = VLOADU(a0 + k); FNN_REG(x); c00 = VFMA(x, y0, c00); c01 = VFMA(x, y1, c01);
        x = VLOADU(a1 + k); FNN_REG(x); c10 = VFMA(x, y0, c10); c11 = VFMA(x, y1, c11);
        x = VLOADU(a2 + k); FNN_REG(x); c20 = VFMA(x, y0, c20); c21 = VFMA(x, y1, c21);
        x = VLOADU(a3 + k); FNN_REG(x); c30 = VFMA(x, y0, c30); c31 = VFMA(x, y1, c31);
        x = VLOADU(a4 + k); FNN_REG(x); c40 = VFMA(x, y0, c40); c41 = VFMA(x, y1, c41);
    }
#undef FNN_REG
    VHSUM2(c00, c01, o + 0);
    VHSUM2(c10, c11, o + 2);
    VHSUM2(c20, c21, o + 4);
    VHSUM2(c30, c31, o + 6);
    VHSUM2(c40, c41, o + 8);
    for (; k < K; k++) {
        o[0] += a0[k] * b0[k]; o[1] += a0[k] * b1[k];
        o[2] += a1[k] * b0[k]; o[3] += a1[k] * b1[k];
        o[4] += a2[k] * b0[k]; o[5] += a2[k] * b1[k];
        o[6] += a3[k] * b0[k]; o[7] += a3[k] * b1[k];
        o[8] += a4[k] * b0[k]; o[9] += a4[k] * b1[k];
    }
}
#endif

/* Rows [i0, i1) and all N (<= DOT_MAX_N) columns of C by dot products;
 * needs p->csa == 1. */
static void F(dot_block_)(const F(prob_) *p, ptrdiff_t i0, ptrdiff_t i1)
{
#if FNN_X86
    ptrdiff_t K = p->K, N = p->N;
    if (i1 <= i0)
        return;
    T *Bt = (T *)fnn_gemm_buffer(1, (size_t)N * (size_t)K * sizeof(T));
    if (!Bt) {
        F(naive_)(p, i0, i1, 0, N);
        return;
    }
    if (p->rsb == 1) {                      /* B's columns are contiguous in k */
        for (ptrdiff_t j = 0; j < N; j++)
            memcpy(Bt + j * K, p->B + j * p->csb, (size_t)K * sizeof(T));
    } else {                                /* read B row by row, scatter to N rows */
        for (ptrdiff_t k = 0; k < K; k++) {
            const T *s = p->B + k * p->rsb;
            for (ptrdiff_t j = 0; j < N; j++)
                Bt[j * K + k] = s[j * p->csb];
        }
    }
    TILE_EP t;
    t.beta = p->accumulate;
    t.last = 1;
    t.relu = p->relu;
    t.bias_row = p->bias_row;
    t.rsm = p->rsm;
    t.csm = p->csm;
    T o[DOT_MR * DOT_NR], tmp[DOT_MR * DOT_MAX_N];
    for (ptrdiff_t i = i0; i < i1; i += DOT_MR) {
        int mr = (int)(i1 - i < DOT_MR ? i1 - i : DOT_MR);
        const T *ar[DOT_MR];
        for (int r = 0; r < DOT_MR; r++)            /* missing rows re-read row 0 */
            ar[r] = p->A + (i + (r < mr ? r : 0)) * p->rsa;
        for (ptrdiff_t j = 0; j < N; j += DOT_NR) {
            int nr = (int)(N - j < DOT_NR ? N - j : DOT_NR);
            const T *br[DOT_NR];
            for (int c = 0; c < DOT_NR; c++)
                br[c] = Bt + (j + (c < nr ? c : 0)) * K;
            F(dot_tile_avx2_)(K, ar, br[0], br[1], o);
            for (int r = 0; r < mr; r++)
                for (int c = 0; c < nr; c++)
                    tmp[r * DOT_MAX_N + j + c] = o[r * DOT_NR + c];
        }
        /* one store (with the epilogue) for the mr x N strip */
        t.bias = p->bias ? p->bias + (p->bias_row ? i : 0) : NULL;
        t.mask = p->mask ? p->mask + i * p->rsm : NULL;
        F(store_tile_)(mr, (int)N, tmp, DOT_MAX_N, p->C + i * p->rsc, p->rsc, p->csc, &t);
    }
#else
    F(naive_)(p, i0, i1, 0, p->N);
#endif
}

/* One block of a thread plan, as a pool chunk. */
typedef struct {
    const F(prob_) *p;
    const fnn_thread_plan *plan;
} F(job_);

static void F(gemm_chunk_)(void *arg, ptrdiff_t t)
{
    const F(job_) *j = (const F(job_) *)arg;
    ptrdiff_t i0, i1, j0, j1;
    fnn_plan_block(j->plan, (int)t, &i0, &i1, &j0, &j1);
    F(gemm_block_)(j->p, i0, i1, j0, j1);
}

static void F(dot_chunk_)(void *arg, ptrdiff_t t)
{
    const F(job_) *j = (const F(job_) *)arg;
    ptrdiff_t i0, i1, j0, j1;
    fnn_plan_block(j->plan, (int)t, &i0, &i1, &j0, &j1);
    F(dot_block_)(j->p, i0, i1);
}

/* ---------------------------------------------------------------- shared packed A */

/* The split over N with A packed once and shared (fnn_plan_shared decides when).
 * The pool's chunk c is columns [c * cw, c * cw + cw) of C.  A thread that starts a
 * chunk first helps pack A: it claims blocks (kb, mb) of A (K block kb, M block mb)
 * from a counter of the job and packs each into its slot of one buffer (the
 * caller's), exactly as F(gemm_block_) would; when none is left to claim it waits
 * until the blocks others claimed are packed (they are running), then runs the
 * serial loop nest for its columns with its own B panels.
 *
 * A helper that the OS wakes late misses only the chunks already claimed (the
 * caller keeps claiming), and nobody packs A twice (the per-block split packs all
 * of A once per block of columns).  The arithmetic of every element is the serial
 * path's: same K blocks, microkernel and panels. */
typedef struct {
    const F(prob_) *p;
    T *Ap;                          /* the packed A: slot (kb * nmb + mb) */
    ptrdiff_t nkb, nmb, slot;       /* K blocks, M blocks, elements per slot */
    ptrdiff_t npack, cw;            /* A blocks; columns per chunk */
    _Atomic ptrdiff_t next_pack;    /* A blocks claimed */
    _Atomic ptrdiff_t packed;       /* A blocks packed */
} F(shjob_);

static void F(shared_pack_)(F(shjob_) *j, ptrdiff_t c)
{
    const F(prob_) *p = j->p;
    ptrdiff_t kb = c / j->nmb, mb = c % j->nmb;
    ptrdiff_t pc = kb * p->kcb, ic = mb * p->mcb;
    ptrdiff_t kc = p->K - pc < p->kcb ? p->K - pc : p->kcb;
    ptrdiff_t mc = p->M - ic < p->mcb ? p->M - ic : p->mcb;
    T *d = j->Ap + c * j->slot;
    F(pack_a_)(mc, kc, p->A + ic * p->rsa + pc * p->csa, p->rsa, p->csa, d, p->vec);
    if (p->bf16)
        F(round_packed_)(d, (size_t)((mc + MR - 1) / MR * MR + MR) * (size_t)kc);
    atomic_fetch_add_explicit(&j->packed, 1, memory_order_release);
}

static void F(shared_cols_)(F(shjob_) *j, ptrdiff_t c)
{
    const F(prob_) *p = j->p;
    ptrdiff_t j0 = c * j->cw, j1 = j0 + j->cw < p->N ? j0 + j->cw : p->N;
    ptrdiff_t K = p->K, kcb = p->kcb, mcb = p->mcb;
    ptrdiff_t ncap = (j1 - j0 + NR - 1) / NR * NR, kcap = kcb < K ? kcb : K;
    T *Bbuf = (T *)fnn_gemm_buffer(1, (size_t)ncap * (size_t)kcap * sizeof(T));
    /* the packed A first: pack what nobody has claimed, then wait for the rest
     * (claimed by threads that are packing it now) */
    for (;;) {
        ptrdiff_t b = atomic_fetch_add_explicit(&j->next_pack, 1, memory_order_relaxed);
        if (b >= j->npack)
            break;
        F(shared_pack_)(j, b);
    }
    while (atomic_load_explicit(&j->packed, memory_order_acquire) < j->npack)
        fnn_pool_pause();
    if (!Bbuf) {
        F(naive_)(p, 0, p->M, j0, j1);
        return;
    }
    TILE_EP t;
    t.relu = p->relu;
    t.bias_row = p->bias_row;
    t.rsm = p->rsm;
    t.csm = p->csm;
    ptrdiff_t nc = j1 - j0;
    for (ptrdiff_t kb = 0; kb < j->nkb; kb++) {
        ptrdiff_t pc = kb * kcb, kc = K - pc < kcb ? K - pc : kcb;
        F(pack_b_)(kc, nc, p->B + pc * p->rsb + j0 * p->csb, p->rsb, p->csb, Bbuf, p->vec);
        if (p->bf16)
            F(round_packed_)(Bbuf, (size_t)ncap * (size_t)kc);
        t.beta = p->accumulate || pc > 0;
        t.last = pc + kc >= K;
        for (ptrdiff_t mb = 0; mb < j->nmb; mb++) {
            ptrdiff_t ic = mb * mcb, mc = p->M - ic < mcb ? p->M - ic : mcb;
            const T *Ablk = j->Ap + (kb * j->nmb + mb) * j->slot;
            F(macro_)(p, &t, Ablk, Bbuf, ic, mc, j0, nc, kc);
        }
    }
}

static void F(shared_chunk_)(void *arg, ptrdiff_t c)
{
    F(shared_cols_)((F(shjob_) *)arg, c);
}

/* Runs the problem on the shared-A split when fnn_plan_shared allows it (returns 1),
 * else returns 0 without doing anything. */
static int F(gemm_shared_)(const F(prob_) *p, int nthreads)
{
    fnn_shared_plan sp;
    if (!fnn_plan_shared(p->M, p->N, p->K, MR, NR, p->mcb, p->kcb, NC_MAX, sizeof(T),
                         nthreads, &sp))
        return 0;
    T *Ap = (T *)fnn_gemm_buffer(0, (size_t)sp.npack * (size_t)sp.slot * sizeof(T));
    if (!Ap)
        return 0;
    F(shjob_) job;
    job.p = p;
    job.Ap = Ap;
    job.nkb = sp.nkb;
    job.nmb = sp.nmb;
    job.slot = sp.slot;
    job.npack = sp.npack;
    job.cw = sp.cw;
    atomic_init(&job.next_pack, 0);
    atomic_init(&job.packed, 0);
    fnn_pool_run(F(shared_chunk_), &job, sp.ncols, sp.threads);
    return 1;
}

/* Rows (or columns) of C computed but thrown away by partial tiles. */
static double F(padded_)(ptrdiff_t M, ptrdiff_t N)
{
    return (double)((M + MR - 1) / MR * MR) * (double)((N + NR - 1) / NR * NR);
}

/* The public entry point for this type. */
static void F(fnn_gemm_)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                         const T *A, ptrdiff_t rsa, ptrdiff_t csa,
                         const T *B, ptrdiff_t rsb, ptrdiff_t csb,
                         T *C, ptrdiff_t rsc, ptrdiff_t csc,
                         const fnn_epilogue *ep, int nthreads, int bf16)
{
    if (M <= 0 || N <= 0)
        return;
    F(prob_) p;
    p.bf16 = bf16;
    p.bias = ep ? (const T *)ep->bias : NULL;
    p.bias_row = 0;
    p.mask = ep ? (const T *)ep->mask : NULL;
    p.rsm = ep ? ep->rs_mask : 0;
    p.csm = ep ? ep->cs_mask : 0;
    p.relu = ep ? ep->relu != 0 : 0;
    p.accumulate = ep ? ep->accumulate != 0 : 0;
    /* Path and orientation depend on the shape, layout and SIMD level only
     * (never on the thread count).  Narrow outputs go to the dot-product path
     * when A's rows (or, transposed, B's columns) are contiguous in k.
     * Otherwise C^T = B^T A^T (every operand's strides swapped) is taken
     * when it wastes less of the MR x NR tiles. */
    int vec = fnn_use_avx2();
    int dot = 0, swap = F(padded_)(N, M) < F(padded_)(M, N) * 0.97;
#if FNN_X86
    if (vec && K >= 2 * VW && !bf16) {       /* the dot path reads A unpacked */
        if (N <= DOT_MAX_N && csa == 1 && N <= M) {
            dot = 1;
            swap = 0;
        } else if (M <= DOT_MAX_N && rsb == 1) {
            dot = 1;
            swap = 1;
        }
    }
#endif
    if (swap) {
        p.M = N; p.N = M; p.K = K;
        p.A = B; p.rsa = csb; p.csa = rsb;
        p.B = A; p.rsb = csa; p.csb = rsa;
        p.C = C; p.rsc = csc; p.csc = rsc;
        p.bias_row = 1;
        ptrdiff_t tmp = p.rsm; p.rsm = p.csm; p.csm = tmp;
    } else {
        p.M = M; p.N = N; p.K = K;
        p.A = A; p.rsa = rsa; p.csa = csa;
        p.B = B; p.rsb = rsb; p.csb = csb;
        p.C = C; p.rsc = rsc; p.csc = csc;
    }
    if (K <= 0) {
        F(naive_)(&p, 0, p.M, 0, p.N);
        return;
    }
    p.vec = vec;
    fnn_thread_plan plan;
    if (dot) {
        /* whole rows per thread, in units of DOT_MR rows */
        fnn_plan_threads(p.M, p.N, K, DOT_MR, (int)p.N, nthreads, &plan);
        if (plan.nt <= 1) {
            F(dot_block_)(&p, 0, p.M);
            return;
        }
        F(job_) job = {&p, &plan};
        fnn_pool_run(F(dot_chunk_), &job, plan.nt, plan.threads);
        return;
    }
    p.ukr = F(ukr_scalar_);
#if FNN_X86
    if (p.vec)
        p.ukr = F(ukr_avx2_);
#endif
    /* Block sizes depend on the shape only (never on the thread count), and
     * split K and M into near-equal blocks so that no block is a sliver. */
    p.kcb = fnn_even_block(K, KC_MAX, 1);
    p.mcb = fnn_even_block(p.M, MC_MAX, MR);
    p.ncb = NC_MAX;

    if (F(gemm_shared_)(&p, nthreads))
        return;
    fnn_plan_threads(p.M, p.N, K, MR, NR, nthreads, &plan);
    if (plan.nt <= 1) {
        F(gemm_block_)(&p, 0, p.M, 0, p.N);
        return;
    }
    /* the blocks run on the engine's pool (gemm_pool.h): claimed dynamically, so a
     * helper the OS has not scheduled yet never stalls the call; the split itself
     * never depends on who runs a block */
    F(job_) job = {&p, &plan};
    fnn_pool_run(F(gemm_chunk_), &job, plan.nt, plan.threads);
}

#undef DOT_MR
#undef DOT_NR
#undef DOT_MAX_N
#undef TILE_EP
#undef F
#undef CAT
#undef CAT_

/* the parameters of this instance: the next one defines its own */
#undef T
#undef SFX
#undef PACK_B_COLS
#undef MR
#undef NR
#undef MC_MAX
#undef KC_MAX
#undef NC_MAX
#if FNN_X86
#undef VT
#undef VW
#undef VZERO
#undef VLOAD
#undef VLOADU
#undef VSTOREU
#undef VBCAST
#undef VFMA
#undef VADD
#undef VMAX
#undef VAND
#undef VCMPGT
#undef VHSUM
#undef VHSUM2
#endif
