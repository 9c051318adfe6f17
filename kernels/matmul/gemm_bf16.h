/* bf16 rounding shared by the GEMM engine's packers (included by gemm.c).
 *
 * fp32 -> bf16 keeps the top 16 bits of the fp32 pattern, rounded to nearest
 * even, exactly as AVX512_BF16's vcvtneps2bf16 does:
 *   zero or denormal  -> zero of the same sign (the instruction flushes them)
 *   NaN               -> the top half with the quiet bit (bit 6) set
 *   otherwise         -> (bits + 0x7fff + bit16) >> 16   (inf stays inf, overflow -> inf)
 * so software packing (emulated levels) and hardware packing (avx512_bf16)
 * round every input to the same bf16 value; fastnn/kernels/matmul/reference.py
 * is the numpy specification of the same function.
 */
#ifndef FNN_GEMM_BF16_H
#define FNN_GEMM_BF16_H

#include <stdint.h>
#include <string.h>

static inline uint32_t fnn_bf16_hi_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u)                          /* NaN: quiet, keep sign and payload top */
        return (u | 0x00400000u) & 0xffff0000u;
    if (mag < 0x00800000u)                          /* zero or denormal: signed zero */
        return u & 0x80000000u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

/* x rounded to bf16 and widened back to fp32 (what the emulated levels compute with). */
static inline float fnn_bf16_round(float x)
{
    uint32_t r = fnn_bf16_hi_bits(x);
    float f;
    memcpy(&f, &r, 4);
    return f;
}

/* The bf16 pair (lo, hi) of one 32-bit lane of vdpbf16ps: lo in bits 0-15. */
static inline uint32_t fnn_bf16_pair(float lo, float hi)
{
    return (fnn_bf16_hi_bits(lo) >> 16) | fnn_bf16_hi_bits(hi);
}

/* Round n packed floats in place (emulated bf16: a pass over a packed panel,
 * still in L1/L2; GCC vectorises the branch-free form). */
static void fnn_bf16_round_buf(float *x, size_t n)
{
    uint32_t *u = (uint32_t *)x;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = u[i], mag = v & 0x7fffffffu;
        uint32_t rne = (v + 0x7fffu + ((v >> 16) & 1u)) & 0xffff0000u;
        uint32_t nan = (v | 0x00400000u) & 0xffff0000u;
        uint32_t zero = v & 0x80000000u;
        v = mag > 0x7f800000u ? nan : (mag < 0x00800000u ? zero : rne);
        u[i] = v;
    }
}

#endif
