/* 2-D convolution and pooling on NHWC activations and HWIO weights
 * (the spec: fastnn/kernels/conv/reference.py).
 *
 *   forward          y  = act(im2col(x) @ W + bias)          GEMM, bias/ReLU in its epilogue
 *   backward data    dx = col2im(dy @ W^T) * (mask > 0)      GEMM into columns, then col2im
 *   backward weights dW (+)= im2col(x)^T @ dy, dbias (+)= column sums of dy
 *
 * A 1x1 kernel with stride 1 and no padding needs no columns: x itself is
 * the (M, Cin) matrix.  Direct paths (no columns, no GEMM) where im2col would
 * copy runs of a few elements and the GEMM would be narrow or have a tiny K:
 *   - one input channel (first layers), read from zero-padded input rows built
 *     once per image: Cout <= 8 (stride 1 along W): forward with 2 vectors of
 *     output pixels x every channel (16 taps or more, or Cout above the vector
 *     width), else each pixel's channels in one vector (8 pixels per step);
 *     weight gradient with the channels in one vector (13 taps of
 *     accumulators); Cout a multiple of the vector width with the channels in
 *     vectors (any stride);
 *   - backward data with stride 1 and at most 8 input channels: the flipped
 *     kernel applied to a channel-planar copy of dy, input pixels in vectors.
 * The MaxPool2D backward takes the pooled output as a mask (the ReLU backward
 * of the layer before it, fused).
 *
 * Work decomposition (a function of the shapes only, never of nthreads, so
 * the bits are the same for every thread count):
 *   - the batch is cut into chunks of `chunk` images (the plan from Python):
 *     the columns of one chunk fit in the caller's workspace;
 *   - a chunk is cut into groups of images of about GROUP_ROWS output rows;
 *     each group is one im2col + one GEMM (or GEMM + col2im).  With at least
 *     as many groups as threads, threads take whole groups (GEMMs on one
 *     thread); otherwise groups run one after another with a threaded GEMM.
 *     The GEMM gives the same bits for any thread count, so both ways agree;
 *   - the weight gradient cuts a chunk's rows into at most `max_blocks`
 *     blocks of >= `row_block` rows; each block's partial dW (and partial
 *     dbias, summed in double) is reduced in block order.
 *
 * Workspace layout (elements of the dtype; sizes from reference.plan):
 *   [2*max_blocks*Cout: dbias partials as double][max_blocks*K*Cout: dW partials]
 *   [chunk*OH*OW*K: columns]
 */
#ifndef FNN_CONV_H
#define FNN_CONV_H

#include <stddef.h>

typedef struct {
    ptrdiff_t N, H, W, Cin;       /* x */
    ptrdiff_t KH, KW, Cout;       /* w */
    ptrdiff_t sh, sw;             /* stride */
    ptrdiff_t pt, pb, pl, pr;     /* padding top, bottom, left, right */
    ptrdiff_t OH, OW;             /* output (checked >= 1 by the caller) */
    ptrdiff_t chunk, row_block, max_blocks;   /* the plan */
    /* float32 only: 1 runs every product on bf16-rounded inputs with fp32 sums
     * (fnn_sgemm_bf16: vdpbf16ps, or the emulation below AVX512_BF16).  The
     * direct paths are not GEMMs, so a bf16 call always takes the im2col + GEMM
     * path; bias, ReLU, masks and dbias stay fp32. */
    int bf16;
} fnn_conv_shape;

typedef struct {
    ptrdiff_t N, H, W, C, ph, pw, sh, sw, OH, OW;
} fnn_pool_shape;

void fnn_conv2d_forward_f32(const fnn_conv_shape *s, const float *x, const float *w,
                            const float *bias, int relu, float *y, float *ws, int nthreads);
void fnn_conv2d_forward_f64(const fnn_conv_shape *s, const double *x, const double *w,
                            const double *bias, int relu, double *y, double *ws, int nthreads);
void fnn_conv2d_backward_data_f32(const fnn_conv_shape *s, const float *dy, const float *w,
                                  const float *mask, float *dx, float *ws, int nthreads);
void fnn_conv2d_backward_data_f64(const fnn_conv_shape *s, const double *dy, const double *w,
                                  const double *mask, double *dx, double *ws, int nthreads);
void fnn_conv2d_backward_weights_f32(const fnn_conv_shape *s, const float *x, const float *dy,
                                     float *dw, float *dbias, int accumulate, float *ws,
                                     int nthreads);
void fnn_conv2d_backward_weights_f64(const fnn_conv_shape *s, const double *x, const double *dy,
                                     double *dw, double *dbias, int accumulate, double *ws,
                                     int nthreads);

/* pooling: OpenMP over (image, output row); backward over images */
void fnn_maxpool2d_forward_f32(const fnn_pool_shape *s, const float *x, float *y, int *argmax,
                               int nthreads);
void fnn_maxpool2d_forward_f64(const fnn_pool_shape *s, const double *x, double *y, int *argmax,
                               int nthreads);
/* returns the number of argmax entries outside [0, H*W) (skipped); mask: see conv_tmpl.h */
ptrdiff_t fnn_maxpool2d_backward_f32(const fnn_pool_shape *s, const float *dy, const int *argmax,
                                     const float *mask, float *dx, int nthreads);
ptrdiff_t fnn_maxpool2d_backward_f64(const fnn_pool_shape *s, const double *dy, const int *argmax,
                                     const double *mask, double *dx, int nthreads);
void fnn_avgpool2d_forward_f32(const fnn_pool_shape *s, const float *x, float *y, int nthreads);
void fnn_avgpool2d_forward_f64(const fnn_pool_shape *s, const double *x, double *y, int nthreads);
void fnn_avgpool2d_backward_f32(const fnn_pool_shape *s, const float *dy, float *dx, int nthreads);
void fnn_avgpool2d_backward_f64(const fnn_pool_shape *s, const double *dy, double *dx,
                                int nthreads);

#endif
