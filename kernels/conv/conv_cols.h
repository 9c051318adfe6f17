/* im2col and col2im of one image, included by conv_tmpl.h once per flavour:
 * COLS_FLAVOR (scalar/avx2) names the run helpers (copy/zero/add_<flavour>)
 * and the functions defined, COLS_ATTR their target attribute. */
#define CF_(a, b) a##_##b
#define CF(a, b) CF_(a, b)
#define COPY FN(CF(copy, COLS_FLAVOR))
#define ZERO FN(CF(zero, COLS_FLAVOR))
#define ADD FN(CF(add, COLS_FLAVOR))

/* dst (p1 - p0, KH*KW*Cin) = the columns of output pixels [p0, p1) of one image xi
 * (H, W, Cin); (0, OH*OW) is the whole image */
COLS_ATTR static void FN(CF(im2col_range, COLS_FLAVOR))(const fnn_conv_shape *s,
                                                        const REAL *restrict xi, ptrdiff_t p0,
                                                        ptrdiff_t p1, REAL *restrict dst)
{
    const ptrdiff_t H = s->H, W = s->W, C = s->Cin, KH = s->KH, KW = s->KW;
    const ptrdiff_t KWC = KW * C, K = KH * KWC;
    for (ptrdiff_t oh = p0 / s->OW; oh < s->OH && oh * s->OW < p1; oh++) {
        const ptrdiff_t ih0 = oh * s->sh - s->pt;
        const int rows_inside = ih0 >= 0 && ih0 + KH <= H;
        const ptrdiff_t owa = oh * s->OW < p0 ? p0 - oh * s->OW : 0;
        const ptrdiff_t owb = (oh + 1) * s->OW > p1 ? p1 - oh * s->OW : s->OW;
        for (ptrdiff_t ow = owa; ow < owb; ow++) {
            REAL *row = dst + (oh * s->OW + ow - p0) * K;
            ptrdiff_t iw0 = ow * s->sw - s->pl, kw0, kw1;
            kw_range(iw0, KW, W, &kw0, &kw1);
            if (rows_inside && kw0 == 0 && kw1 == KW) {     /* the common, interior case */
                const REAL *src = xi + (ih0 * W + iw0) * C;
                for (ptrdiff_t kh = 0; kh < KH; kh++)
                    COPY(row + kh * KWC, src + kh * W * C, KWC);
                continue;
            }
            for (ptrdiff_t kh = 0; kh < KH; kh++) {
                REAL *seg = row + kh * KWC;
                ptrdiff_t ih = ih0 + kh;
                if (ih < 0 || ih >= H) {
                    ZERO(seg, KWC);
                    continue;
                }
                ZERO(seg, kw0 * C);
                COPY(seg + kw0 * C, xi + (ih * W + iw0 + kw0) * C, (kw1 - kw0) * C);
                ZERO(seg + kw1 * C, (KW - kw1) * C);
            }
        }
    }
}

COLS_ATTR static void FN(CF(im2col, COLS_FLAVOR))(const fnn_conv_shape *s,
                                                  const REAL *restrict xi, REAL *restrict dst)
{
    FN(CF(im2col_range, COLS_FLAVOR))(s, xi, 0, s->OH * s->OW, dst);
}

/* dxi (H, W, Cin) = col2im(src) * (maski > 0): the adjoint of im2col */
COLS_ATTR static void FN(CF(col2im, COLS_FLAVOR))(const fnn_conv_shape *s,
                                                  const REAL *restrict src,
                                                  const REAL *restrict maski,
                                                  REAL *restrict dxi)
{
    const ptrdiff_t H = s->H, W = s->W, C = s->Cin, KH = s->KH, KW = s->KW;
    const ptrdiff_t KWC = KW * C, K = KH * KWC;
    ZERO(dxi, H * W * C);
    for (ptrdiff_t oh = 0; oh < s->OH; oh++) {
        const ptrdiff_t ih0 = oh * s->sh - s->pt;
        for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
            const REAL *row = src + (oh * s->OW + ow) * K;
            ptrdiff_t iw0 = ow * s->sw - s->pl, kw0, kw1;
            kw_range(iw0, KW, W, &kw0, &kw1);
            for (ptrdiff_t kh = 0; kh < KH; kh++) {
                ptrdiff_t ih = ih0 + kh;
                if (ih < 0 || ih >= H || kw1 == kw0)
                    continue;
                ADD(dxi + (ih * W + iw0 + kw0) * C, row + kh * KWC + kw0 * C, (kw1 - kw0) * C);
            }
        }
    }
    if (maski)
        for (ptrdiff_t i = 0; i < H * W * C; i++)
            dxi[i] = maski[i] > 0 ? dxi[i] : 0;
}

#undef COPY
#undef ZERO
#undef ADD
#undef CF
#undef CF_
