/* Run-time CPU feature detection and SIMD path selection.
 *
 * Every extension module links its own copy of cpu.c, so each module keeps
 * its own current level; the Python side (fastnn.kernels.set_simd_level)
 * sets all loaded modules together.
 *
 * Levels: FNN_SIMD_SCALAR (plain C, always works), FNN_SIMD_AVX2 (AVX2+FMA).
 * The environment variable FASTNN_SIMD=scalar|avx2 caps the level chosen at
 * start-up (useful to test the fallback on a machine that has AVX2).
 */
#ifndef FNN_CPU_H
#define FNN_CPU_H

#define FNN_SIMD_SCALAR 0
#define FNN_SIMD_AVX2 1

int fnn_cpu_has_avx2_fma(void);   /* what the CPU and OS support */
int fnn_cpu_has_avx512f(void);
int fnn_simd_level(void);         /* the level kernels use now */
int fnn_set_simd_level(int level);/* clamps to what the CPU supports; returns the level set */
const char *fnn_simd_name(int level);

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FNN_X86 1
#define FNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define FNN_X86 0
#define FNN_TARGET_AVX2
#endif

/* Nonzero when the AVX2+FMA code paths may run now: an x86 build and the
 * current SIMD level allows them.  Every kernel dispatches through this. */
static inline int fnn_use_avx2(void)
{
    return FNN_X86 && fnn_simd_level() >= FNN_SIMD_AVX2;
}

#ifdef FASTNN_HAVE_OPENMP
#include <omp.h>
#endif

#endif
