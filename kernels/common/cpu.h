/* Run-time CPU feature detection and SIMD path selection.
 *
 * Every extension module links its own copy of cpu.c, so each module keeps
 * its own current level; the Python side (fastnn.kernels.set_simd_level)
 * sets all loaded modules together.
 *
 * Levels (each includes the ones below it):
 *   FNN_SIMD_SCALAR       0  plain C, always works
 *   FNN_SIMD_AVX2         1  AVX2 + FMA                      (CPUID + XCR0 bits 1,2)
 *   FNN_SIMD_AVX512       2  AVX-512 F + BW + VL + DQ        (+ XCR0 bits 5,6,7: 0xE0)
 *   FNN_SIMD_AVX512_BF16  3  AVX-512 above + AVX512_BF16 (vdpbf16ps, vcvtneps2bf16)
 *
 * The start-up level is the highest the CPU and the OS support.  The
 * environment variable FASTNN_SIMD=scalar|avx2|avx512|avx512_bf16 (or 0..3)
 * caps it, so that every lower level can be tested on one machine; a level
 * above what the CPU has gives the highest available one (the Python side
 * warns), and an unknown value is ignored (the Python side warns too).
 *
 * Kernels that only have an AVX2 path keep calling fnn_use_avx2(): it is
 * true at every level >= AVX2, so they run AVX2 at the AVX-512 levels.
 */
#ifndef FNN_CPU_H
#define FNN_CPU_H

#define FNN_SIMD_SCALAR 0
#define FNN_SIMD_AVX2 1
#define FNN_SIMD_AVX512 2
#define FNN_SIMD_AVX512_BF16 3

int fnn_cpu_has_avx2_fma(void);   /* what the CPU and OS support */
int fnn_cpu_has_avx512f(void);    /* AVX-512F with ZMM/opmask state enabled by the OS */
int fnn_cpu_has_avx512(void);     /* F + BW + VL + DQ, OS-enabled: FNN_SIMD_AVX512 */
int fnn_cpu_has_avx512bf16(void); /* the above + AVX512_BF16 */
int fnn_cpu_max_level(void);      /* highest level this CPU and OS support */
/* Nonzero on CPUs that execute 512-bit FMAs as two 256-bit halves (AMD Zen 4,
 * family 19h): AVX-512 fp32 then gains registers, not FLOPs, and the GEMM
 * dispatcher keeps AVX2 for the shape classes where it measured no gain. */
int fnn_cpu_double_pumped_512(void);
const char *fnn_cpu_model_name(void); /* "zen4", "other x86-64", "not x86" */

int fnn_simd_level(void);         /* the level kernels use now */
int fnn_set_simd_level(int level);/* clamps to [0, fnn_cpu_max_level()]; returns the level set */
const char *fnn_simd_name(int level); /* "scalar", "avx2+fma", "avx512", "avx512_bf16" */
int fnn_simd_env_level(void);     /* FASTNN_SIMD parsed: 0..3, -1 unset, -2 unknown value */

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FNN_X86 1
#define FNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FNN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define FNN_TARGET_AVX512BF16 \
    __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define FNN_X86 0
#define FNN_TARGET_AVX2
#define FNN_TARGET_AVX512
#define FNN_TARGET_AVX512BF16
#endif

/* Nonzero when the AVX2+FMA code paths may run now: an x86 build and the
 * current SIMD level allows them.  Every AVX2 kernel dispatches through this. */
static inline int fnn_use_avx2(void)
{
    return FNN_X86 && fnn_simd_level() >= FNN_SIMD_AVX2;
}

/* Nonzero when AVX-512 F/BW/VL/DQ code may run now. */
static inline int fnn_use_avx512(void)
{
    return FNN_X86 && fnn_simd_level() >= FNN_SIMD_AVX512;
}

/* Nonzero when AVX512_BF16 instructions may run now. */
static inline int fnn_use_avx512bf16(void)
{
    return FNN_X86 && fnn_simd_level() >= FNN_SIMD_AVX512_BF16;
}

#ifdef FASTNN_HAVE_OPENMP
#include <omp.h>
#endif

#endif
