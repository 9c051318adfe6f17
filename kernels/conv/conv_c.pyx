# fastnn-c-sources: ../matmul/gemm.c
# The `c` variant of the conv family: a thin wrapper over kernels/conv/conv.c.
# Arrays arrive validated, C-contiguous and of one dtype, outputs allocated and
# the workspace sized by the plan (fastnn/kernels/conv/__init__.py).
cimport numpy as cnp

from fnn_common cimport fnn_simd_level, fnn_set_simd_level, fnn_simd_name


# the SIMD level functions of simd_api.pxi, with a simd_name that says what this
# module runs at the AVX-512 levels (its GEMM and float32 max pooling have AVX-512 paths)
def simd_level():
    """Current SIMD level of this module: 0 scalar, 1 AVX2+FMA, 2 AVX-512, 3 AVX-512+BF16."""
    return fnn_simd_level()


def set_simd_level(int level):
    """Set this module's SIMD level (clamped to what the CPU supports); returns it."""
    return fnn_set_simd_level(level)


def simd_name():
    """The code paths of this module at the current level."""
    cdef int level = fnn_simd_level()
    if level < 2:
        return fnn_simd_name(level).decode()
    return (fnn_simd_name(level).decode() + ": the GEMM (as matmul) and float32 max pooling; "
            "the direct conv paths, im2col and float64 pooling avx2+fma")

cnp.import_array()

cdef extern from "conv.h" nogil:
    ctypedef struct fnn_conv_shape:
        Py_ssize_t N, H, W, Cin, KH, KW, Cout, sh, sw, pt, pb, pl, pr, OH, OW
        Py_ssize_t chunk, row_block, max_blocks
        int bf16
    ctypedef struct fnn_pool_shape:
        Py_ssize_t N, H, W, C, ph, pw, sh, sw, OH, OW
    void fnn_conv2d_forward_f32(const fnn_conv_shape *s, const float *x, const float *w,
                                const float *bias, int relu, float *y, float *ws, int nthreads)
    void fnn_conv2d_forward_f64(const fnn_conv_shape *s, const double *x, const double *w,
                                const double *bias, int relu, double *y, double *ws, int nthreads)
    void fnn_conv2d_backward_data_f32(const fnn_conv_shape *s, const float *dy, const float *w,
                                      const float *mask, float *dx, float *ws, int nthreads)
    void fnn_conv2d_backward_data_f64(const fnn_conv_shape *s, const double *dy, const double *w,
                                      const double *mask, double *dx, double *ws, int nthreads)
    void fnn_conv2d_backward_weights_f32(const fnn_conv_shape *s, const float *x, const float *dy,
                                         float *dw, float *dbias, int accumulate, float *ws,
                                         int nthreads)
    void fnn_conv2d_backward_weights_f64(const fnn_conv_shape *s, const double *x,
                                         const double *dy, double *dw, double *dbias,
                                         int accumulate, double *ws, int nthreads)
    void fnn_maxpool2d_forward_f32(const fnn_pool_shape *s, const float *x, float *y, int *argmax,
                                   int nthreads)
    void fnn_maxpool2d_forward_f64(const fnn_pool_shape *s, const double *x, double *y,
                                   int *argmax, int nthreads)
    Py_ssize_t fnn_maxpool2d_backward_f32(const fnn_pool_shape *s, const float *dy,
                                          const int *argmax, const float *mask, float *dx,
                                          int nthreads)
    Py_ssize_t fnn_maxpool2d_backward_f64(const fnn_pool_shape *s, const double *dy,
                                          const int *argmax, const double *mask, double *dx,
                                          int nthreads)
    void fnn_avgpool2d_forward_f32(const fnn_pool_shape *s, const float *x, float *y, int nthreads)
    void fnn_avgpool2d_forward_f64(const fnn_pool_shape *s, const double *x, double *y,
                                   int nthreads)
    void fnn_avgpool2d_backward_f32(const fnn_pool_shape *s, const float *dy, float *dx,
                                    int nthreads)
    void fnn_avgpool2d_backward_f64(const fnn_pool_shape *s, const double *dy, double *dx,
                                    int nthreads)


cdef void *_ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray> a)


cdef fnn_conv_shape _conv_shape(tuple x_shape, tuple w_shape, tuple y_shape, tuple stride,
                                tuple padding, tuple plan, bint bf16=False):
    cdef fnn_conv_shape s
    s.N, s.H, s.W, s.Cin = x_shape
    s.KH, s.KW, _, s.Cout = w_shape
    s.OH, s.OW = y_shape[1], y_shape[2]
    s.sh, s.sw = stride
    s.pt, s.pb, s.pl, s.pr = padding
    s.chunk, s.row_block, s.max_blocks = plan
    s.bf16 = bf16
    return s


cdef fnn_pool_shape _pool_shape(tuple x_shape, tuple y_shape, tuple pool, tuple stride):
    cdef fnn_pool_shape s
    s.N, s.H, s.W, s.C = x_shape
    s.OH, s.OW = y_shape[1], y_shape[2]
    s.ph, s.pw = pool
    s.sh, s.sw = stride
    return s


def conv2d_forward(cnp.ndarray x, cnp.ndarray w, object bias, tuple stride, tuple padding,
                   bint relu, cnp.ndarray out, cnp.ndarray workspace, tuple plan, int nthreads=1,
                   bint bf16=False):
    cdef fnn_conv_shape s = _conv_shape((<object> x).shape, (<object> w).shape, (<object> out).shape, stride, padding,
                                        plan, bf16)
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(w)
    cdef void *pb = _ptr(bias)
    cdef void *py = _ptr(out)
    cdef void *pws = _ptr(workspace)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_conv2d_forward_f32(&s, <const float *> px, <const float *> pw, <const float *> pb,
                                   relu, <float *> py, <float *> pws, nthreads)
    else:
        with nogil:
            fnn_conv2d_forward_f64(&s, <const double *> px, <const double *> pw,
                                   <const double *> pb, relu, <double *> py, <double *> pws,
                                   nthreads)
    return out


def conv2d_backward_data(cnp.ndarray dy, cnp.ndarray w, tuple stride, tuple padding,
                         cnp.ndarray out, object mask, cnp.ndarray workspace, tuple plan,
                         int nthreads=1, bint bf16=False):
    cdef fnn_conv_shape s = _conv_shape((<object> out).shape, (<object> w).shape, (<object> dy).shape, stride,
                                        padding, plan, bf16)
    cdef void *pdy = _ptr(dy)
    cdef void *pw = _ptr(w)
    cdef void *pm = _ptr(mask)
    cdef void *pdx = _ptr(out)
    cdef void *pws = _ptr(workspace)
    if dy.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_conv2d_backward_data_f32(&s, <const float *> pdy, <const float *> pw,
                                         <const float *> pm, <float *> pdx, <float *> pws,
                                         nthreads)
    else:
        with nogil:
            fnn_conv2d_backward_data_f64(&s, <const double *> pdy, <const double *> pw,
                                         <const double *> pm, <double *> pdx, <double *> pws,
                                         nthreads)
    return out


def conv2d_backward_weights(cnp.ndarray x, cnp.ndarray dy, tuple stride, tuple padding,
                            cnp.ndarray dw, object dbias, bint accumulate, cnp.ndarray workspace,
                            tuple plan, int nthreads=1, bint bf16=False):
    cdef fnn_conv_shape s = _conv_shape((<object> x).shape, (<object> dw).shape, (<object> dy).shape, stride,
                                        padding, plan, bf16)
    cdef void *px = _ptr(x)
    cdef void *pdy = _ptr(dy)
    cdef void *pdw = _ptr(dw)
    cdef void *pdb = _ptr(dbias)
    cdef void *pws = _ptr(workspace)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_conv2d_backward_weights_f32(&s, <const float *> px, <const float *> pdy,
                                            <float *> pdw, <float *> pdb, accumulate,
                                            <float *> pws, nthreads)
    else:
        with nogil:
            fnn_conv2d_backward_weights_f64(&s, <const double *> px, <const double *> pdy,
                                            <double *> pdw, <double *> pdb, accumulate,
                                            <double *> pws, nthreads)
    return dw


def maxpool2d_forward(cnp.ndarray x, tuple pool, tuple stride, cnp.ndarray out,
                      cnp.ndarray argmax, int nthreads=1):
    cdef fnn_pool_shape s = _pool_shape((<object> x).shape, (<object> out).shape, pool, stride)
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(out)
    cdef int *pa = <int *> _ptr(argmax)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_maxpool2d_forward_f32(&s, <const float *> px, <float *> py, pa, nthreads)
    else:
        with nogil:
            fnn_maxpool2d_forward_f64(&s, <const double *> px, <double *> py, pa, nthreads)
    return out


def maxpool2d_backward(cnp.ndarray dy, cnp.ndarray argmax, cnp.ndarray out, object mask=None,
                       int nthreads=1):
    """Returns the number of argmax entries outside [0, H*W) (skipped; the caller raises)."""
    cdef fnn_pool_shape s = _pool_shape((<object> out).shape, (<object> dy).shape, (1, 1), (1, 1))
    cdef void *pdy = _ptr(dy)
    cdef const int *pa = <const int *> _ptr(argmax)
    cdef void *pm = _ptr(mask)
    cdef void *pdx = _ptr(out)
    cdef Py_ssize_t bad
    if dy.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            bad = fnn_maxpool2d_backward_f32(&s, <const float *> pdy, pa, <const float *> pm,
                                             <float *> pdx, nthreads)
    else:
        with nogil:
            bad = fnn_maxpool2d_backward_f64(&s, <const double *> pdy, pa, <const double *> pm,
                                             <double *> pdx, nthreads)
    return bad


def avgpool2d_forward(cnp.ndarray x, tuple pool, tuple stride, cnp.ndarray out, int nthreads=1):
    cdef fnn_pool_shape s = _pool_shape((<object> x).shape, (<object> out).shape, pool, stride)
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(out)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_avgpool2d_forward_f32(&s, <const float *> px, <float *> py, nthreads)
    else:
        with nogil:
            fnn_avgpool2d_forward_f64(&s, <const double *> px, <double *> py, nthreads)
    return out


def avgpool2d_backward(cnp.ndarray dy, tuple pool, tuple stride, cnp.ndarray out,
                       int nthreads=1):
    cdef fnn_pool_shape s = _pool_shape((<object> out).shape, (<object> dy).shape, pool, stride)
    cdef void *pdy = _ptr(dy)
    cdef void *pdx = _ptr(out)
    if dy.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_avgpool2d_backward_f32(&s, <const float *> pdy, <float *> pdx, nthreads)
    else:
        with nogil:
            fnn_avgpool2d_backward_f64(&s, <const double *> pdy, <double *> pdx, nthreads)
    return out
