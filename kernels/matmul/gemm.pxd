# Cython view of gemm.h, for every module that calls the GEMM engine.
cdef extern from "gemm.h" nogil:
    ctypedef struct fnn_epilogue:
        const void *bias
        int relu
        const void *mask
        Py_ssize_t rs_mask
        Py_ssize_t cs_mask
        int accumulate
    void fnn_sgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                   const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                   const float *B, Py_ssize_t rsb, Py_ssize_t csb,
                   float *C, Py_ssize_t rsc, Py_ssize_t csc,
                   const fnn_epilogue *ep, int nthreads)
    void fnn_dgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                   const double *A, Py_ssize_t rsa, Py_ssize_t csa,
                   const double *B, Py_ssize_t rsb, Py_ssize_t csb,
                   double *C, Py_ssize_t rsc, Py_ssize_t csc,
                   const fnn_epilogue *ep, int nthreads)
    void fnn_sgemm_bf16(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                        const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                        const float *B, Py_ssize_t rsb, Py_ssize_t csb,
                        float *C, Py_ssize_t rsc, Py_ssize_t csc,
                        const fnn_epilogue *ep, int nthreads)
    const char *fnn_sgemm_path(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                               Py_ssize_t csa, Py_ssize_t rsb, int bf16)
    int fnn_sgemm_set_fp32_engine(int which)
    int fnn_gemm_set_small(int max_m)
    int fnn_gemm_set_shared(int on, double chunk_fma)
