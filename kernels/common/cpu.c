#include "cpu.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if FNN_X86
#include <cpuid.h>

/* XCR0: which register state the OS saves on a context switch.  A CPU that
 * has AVX-512 under an OS that does not save ZMM/opmask state must not use it. */
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

typedef struct {
    int done, avx2_fma, avx512f, avx512, bf16, zen4;
} fnn_features;

static fnn_features g_feat;

static void detect_features(fnn_features *f)
{
    unsigned a, b, c, d;
    memset(f, 0, sizeof(*f));
    f->done = 1;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    unsigned family = (a >> 8) & 0xf;
    if (family == 0xf)
        family += (a >> 20) & 0xff;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx)
        return;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6)                  /* XMM and YMM state */
        return;
    unsigned maxleaf = __get_cpuid_max(0, NULL);
    if (maxleaf < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    unsigned max7 = a;
    f->avx2_fma = ((b >> 5) & 1) && fma;
    int os512 = (xcr0 & 0xe0) == 0xe0;       /* opmask, ZMM0-15 upper halves, ZMM16-31 */
    int f512 = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    f->avx512f = f->avx2_fma && os512 && f512;
    f->avx512 = f->avx512f && dq && bw && vl;
    if (f->avx512 && max7 >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f->bf16 = (a >> 5) & 1;
    }
    /* vendor "AuthenticAMD", family 19h with AVX-512: Zen 4 */
    unsigned v0, v1, v2, v3;
    __cpuid(0, v0, v1, v2, v3);
    int amd = v1 == 0x68747541 && v3 == 0x69746e65 && v2 == 0x444d4163;
    f->zen4 = amd && family == 0x19 && f->avx512f;
}

static const fnn_features *features(void)
{
    if (!g_feat.done)
        detect_features(&g_feat);
    return &g_feat;
}

int fnn_cpu_has_avx2_fma(void) { return features()->avx2_fma; }
int fnn_cpu_has_avx512f(void) { return features()->avx512f; }
int fnn_cpu_has_avx512(void) { return features()->avx512; }
int fnn_cpu_has_avx512bf16(void) { return features()->bf16; }
int fnn_cpu_double_pumped_512(void) { return features()->zen4; }
const char *fnn_cpu_model_name(void) { return features()->zen4 ? "zen4" : "other x86-64"; }
#else
int fnn_cpu_has_avx2_fma(void) { return 0; }
int fnn_cpu_has_avx512f(void) { return 0; }
int fnn_cpu_has_avx512(void) { return 0; }
int fnn_cpu_has_avx512bf16(void) { return 0; }
int fnn_cpu_double_pumped_512(void) { return 0; }
const char *fnn_cpu_model_name(void) { return "not x86"; }
#endif

int fnn_cpu_max_level(void)
{
    if (fnn_cpu_has_avx512bf16())
        return FNN_SIMD_AVX512_BF16;
    if (fnn_cpu_has_avx512())
        return FNN_SIMD_AVX512;
    if (fnn_cpu_has_avx2_fma())
        return FNN_SIMD_AVX2;
    return FNN_SIMD_SCALAR;
}

static const char *const g_names[] = {"scalar", "avx2+fma", "avx512", "avx512_bf16"};

int fnn_simd_env_level(void)
{
    static const char *const alias[] = {"scalar", "avx2", "avx512", "avx512_bf16"};
    const char *env = getenv("FASTNN_SIMD");
    if (!env || !*env)
        return -1;
    for (int i = 0; i < 4; i++) {
        char digit[2] = {(char)('0' + i), 0};
        if (strcmp(env, alias[i]) == 0 || strcmp(env, g_names[i]) == 0 || strcmp(env, digit) == 0)
            return i;
    }
    return -2;
}

static int g_level = -1;

static int detect_level(void)
{
    int level = fnn_cpu_max_level();
    int env = fnn_simd_env_level();
    if (env >= 0 && env < level)
        level = env;
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
    int max = fnn_cpu_max_level();
    if (level < 0)
        level = 0;
    g_level = level > max ? max : level;
    return g_level;
}

const char *fnn_simd_name(int level)
{
    if (level < 0)
        level = 0;
    if (level > FNN_SIMD_AVX512_BF16)
        level = FNN_SIMD_AVX512_BF16;
    return g_names[level];
}
