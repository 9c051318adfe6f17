#include "cpu.h"
#include <stdlib.h>
#include <string.h>

int fnn_cpu_has_avx2_fma(void)
{
#if FNN_X86
    /* libgcc's cpu model also checks XCR0, i.e. that the OS saves YMM state */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int fnn_cpu_has_avx512f(void)
{
#if FNN_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static int g_level = -1;

static int detect_level(void)
{
    int level = fnn_cpu_has_avx2_fma() ? FNN_SIMD_AVX2 : FNN_SIMD_SCALAR;
    const char *env = getenv("FASTNN_SIMD");
    if (env && (strcmp(env, "scalar") == 0 || strcmp(env, "0") == 0))
        level = FNN_SIMD_SCALAR;
    return level;
}

int fnn_simd_level(void)
{
    if (g_level < 0)
        g_level = detect_level();
    return g_level;
}

int fnn_set_simd_level(int level)
{
    int max = fnn_cpu_has_avx2_fma() ? FNN_SIMD_AVX2 : FNN_SIMD_SCALAR;
    if (level < 0)
        level = 0;
    g_level = level > max ? max : level;
    return g_level;
}

const char *fnn_simd_name(int level)
{
    return level >= FNN_SIMD_AVX2 ? "avx2+fma" : "scalar";
}
