/* Trace rows at compiled speed: a float16 row's softmax, top-K, ψ and its metrics, by the row's codes.
 *
 * Every function computes the same IEEE operations on the same operands, in the same order,
 * as the plain NumPy code it replaces (softmax64, a partition, core.payload's craft and encode,
 * core.proposal, core.metrics on the dense q), so the bytes are the same: exp and log are taken
 * per distinct float16 code or per id, either by NumPy between the passes (the caller passes their
 * values) or, in the fused calls values_all and craft_all, from the C library, which the caller
 * uses only where NumPy's ufuncs give those very bits (targets.trace_libm); every sum is NumPy's
 * pairwise summation of a contiguous float64 array (numpy/_core/src/umath/loops_utils.h.src:
 * blocks of 8 accumulators up to 128 items, halves rounded to a multiple of 8 above).  No V-sized
 * float64 array is written: the passes over V read the 2-byte codes and per-code tables.  Buffers
 * come in through the buffer protocol; the GIL is released during each pass, so positions craft in
 * parallel on threads.  The integer passes over the codes take AVX2 where the CPU has it (compiled
 * for those functions only); the float operations are the same scalar (or SSE2 lane) ones anyway.
 *
 * A row's codes are read three times, as the maths needs: once for the largest value (and the
 * smallest, and the sparse top: the tokens of the few largest values, whose codes are then listed
 * as held and which are ψ's top-K candidates), once for the softmax's sum (its terms need the
 * largest), and once per ψ for the metrics (theirs need the sum), the CE gap's terms over p > 0
 * written down in that same pass.  No value is ever converted from float16: every term is read
 * from a per-code table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__SSE2__) && defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1 /* AVX2 loops compiled for their functions only, taken if the CPU has AVX2 */
static int cpu_avx2 = 0;
#define AVX2 __attribute__((target("avx2")))
#endif

#define CODES 65536

static double pairwise_sum(const double *a, Py_ssize_t n)
{
    if (n < 8) {
        double res = -0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            res += a[i];
        }
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) {
            r[j] = a[j];
        }
        for (i = 8; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; j++) {
                r[j] += a[i + j];
            }
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            res += a[i];
        }
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* codes[0..8) into k: two 8-byte loads on a little-endian machine (fewer loads in the gathering passes). */
static inline void eight_codes(const uint16_t *codes, unsigned *k)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t a, b;
    memcpy(&a, codes, 8);
    memcpy(&b, codes + 4, 8);
    k[0] = (unsigned)(a & 0xFFFFu);
    k[1] = (unsigned)((a >> 16) & 0xFFFFu);
    k[2] = (unsigned)((a >> 32) & 0xFFFFu);
    k[3] = (unsigned)(a >> 48);
    k[4] = (unsigned)(b & 0xFFFFu);
    k[5] = (unsigned)((b >> 16) & 0xFFFFu);
    k[6] = (unsigned)((b >> 32) & 0xFFFFu);
    k[7] = (unsigned)(b >> 48);
#else
    for (int j = 0; j < 8; j++) {
        k[j] = codes[j];
    }
#endif
}

/* NumPy's pairwise sum of e_by_code[codes[i]], i < n, without writing the e_i down. */
static double pairwise_gather(const uint16_t *codes, const double *table, Py_ssize_t n)
{
    if (n < 8) {
        double res = -0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            res += table[codes[i]];
        }
        return res;
    }
    if (n <= 128) {
        double r[8];
        unsigned k[8];
        Py_ssize_t i;
        eight_codes(codes, k);
        for (int j = 0; j < 8; j++) {
            r[j] = table[k[j]];
        }
        for (i = 8; i < n - (n % 8); i += 8) {
            eight_codes(codes + i, k);
            for (int j = 0; j < 8; j++) {
                r[j] += table[k[j]];
            }
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            res += table[codes[i]];
        }
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_gather(codes, table, n2) + pairwise_gather(codes + n2, table, n - n2);
}

/* Release the buffers of a call (those a successful PyArg_ParseTuple filled). */
static void release(Py_buffer *b, int n)
{
    for (int i = 0; i < n; i++) {
        PyBuffer_Release(&b[i]);
    }
}

static PyObject *mismatch(const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s: buffers of mismatched lengths", what);
    return NULL;
}

/* A float16 code as an unsigned key of the same order as its value (+0 above -0; NaN excluded). */
static inline unsigned key_of(unsigned c)
{
    return (c & 0x8000u) ? 0xFFFFu - c : c | 0x8000u;
}

/* The value of a float16 code, exactly (its bits widened; a subnormal's mantissa times 2^-24). */
static double half_value(unsigned h)
{
    unsigned e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    uint64_t sign = (uint64_t)(h & 0x8000u) << 48, bits;
    double v;
    if (e == 0) {
        v = (double)m * 0x1p-24;
        return (h & 0x8000u) ? -v : v;
    }
    if (e == 31) {
        bits = sign | (uint64_t)0x7FF << 52 | (uint64_t)m << 42;
    } else {
        bits = sign | (uint64_t)(e + 1008) << 52 | (uint64_t)m << 42; /* exponent e - 15 + 1023 */
    }
    memcpy(&v, &bits, 8);
    return v;
}

#define RANGE_CODES 4096 /* a row whose values span at most this many codes lists them all, unscanned */

static inline unsigned code_of_key(unsigned key)
{
    return key & 0x8000u ? key & 0x7FFFu : 0xFFFFu - key;
}

#define NO_KEY 0x10000u /* a threshold no key reaches */
#define SAMPLE_BINS 4096 /* bins of 16 keys */

/* The hits of a block of 16 (or 8) codes, two mask bits a lane (the even ones say which), as tokens from i. */
static inline Py_ssize_t put_hits(unsigned hits, Py_ssize_t i, uint32_t *out, Py_ssize_t got)
{
    while (hits) {
        out[got++] = (uint32_t)(i + (__builtin_ctz(hits) >> 1));
        hits &= hits - 1;
    }
    return got;
}

#ifdef HAVE_AVX2_PATH
/* The largest code other than -inf's (0xFC00) as unsigned, of codes[0..V): key_range_avx2's second pass. */
AVX2 static unsigned largest_but_minus_inf(const uint16_t *codes, Py_ssize_t V)
{
    const __m256i ninf_code = _mm256_set1_epi16((short)0xFC00);
    __m256i vmax = _mm256_setzero_si256();
    for (Py_ssize_t i = 0; i + 16 <= V; i += 16) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(codes + i));
        vmax = _mm256_max_epu16(vmax, _mm256_andnot_si256(_mm256_cmpeq_epi16(c, ninf_code), c));
    }
    uint16_t h[16];
    unsigned most = 0;
    _mm256_storeu_si256((__m256i *)h, vmax);
    for (int j = 0; j < 16; j++) {
        most = h[j] > most ? h[j] : most;
    }
    return most;
}

/* key_range's vector loop, 16 codes at a time: the tokens it covered; hi, lo, lof, ninf merged in (keys - 32768),
 * and the tokens of keys >= above appended to out (from *m).  On the codes themselves: the largest as int16 (a
 * positive one if any), the smallest and largest as uint16 give the extreme keys; a row whose largest uint16 is
 * -inf's takes a second pass for the smallest key but -inf's.  Keys >= above: as keys_at_least (x, lim, invert). */
AVX2 static Py_ssize_t key_range_avx2(const uint16_t *codes, Py_ssize_t V, int *hi, int *lo, int *lof, int *ninf,
                                      short x, short lim, unsigned invert, uint32_t *out, Py_ssize_t *m)
{
    const __m256i vx = _mm256_set1_epi16(x), vlim = _mm256_set1_epi16(lim);
    __m256i smax = _mm256_set1_epi16(-32768), umin = _mm256_set1_epi16(-1), umax = _mm256_setzero_si256();
    Py_ssize_t i = 0, got = *m;
    uint32_t masks[256], blocks[256]; /* a chunk's blocks with hits, noted without a branch, then expanded */
    while (i + 16 <= V) {
        Py_ssize_t end = V - i < 256 * 16 ? i + (V - i) / 16 * 16 : i + 256 * 16, noted = 0;
        for (; i < end; i += 16) {
            __m256i c = _mm256_loadu_si256((const __m256i *)(codes + i));
            smax = _mm256_max_epi16(smax, c);
            umin = _mm256_min_epu16(umin, c);
            umax = _mm256_max_epu16(umax, c);
            unsigned hits = (unsigned)_mm256_movemask_epi8(_mm256_cmpgt_epi16(_mm256_xor_si256(c, vx), vlim));
            masks[noted] = (hits ^ invert) & 0x55555555u;
            blocks[noted] = (uint32_t)i;
            noted += masks[noted] != 0;
        }
        for (Py_ssize_t b = 0; b < noted; b++) {
            got = put_hits(masks[b], blocks[b], out, got);
        }
    }
    *m = got;
    if (i == 0) {
        return 0;
    }
    int16_t sm[16];
    uint16_t un[16], ux[16];
    _mm256_storeu_si256((__m256i *)sm, smax);
    _mm256_storeu_si256((__m256i *)un, umin);
    _mm256_storeu_si256((__m256i *)ux, umax);
    int most_s = -32768;
    unsigned least_u = 0xFFFFu, most_u = 0;
    for (int j = 0; j < 16; j++) {
        most_s = sm[j] > most_s ? sm[j] : most_s;
        least_u = un[j] < least_u ? un[j] : least_u;
        most_u = ux[j] > most_u ? ux[j] : most_u;
    }
    /* A positive code: the largest key is the largest such; else the negative code of least magnitude.  A negative
     * code: the smallest key is the one of most magnitude; else the least positive code. */
    unsigned high = most_s >= 0 ? (unsigned)most_s | 0x8000u : key_of(least_u);
    unsigned low = most_u >= 0x8000u ? key_of(most_u) : least_u | 0x8000u, low_finite = low;
    int minus_inf = most_u == 0xFC00u;
    if (minus_inf) {
        unsigned most_finite = largest_but_minus_inf(codes, i);
        low_finite = most_finite >= 0x8000u ? key_of(most_finite) : (least_u == 0xFC00u ? 0xFFFFu : least_u | 0x8000u);
    }
    int h = (int)high - 32768, l = (int)low - 32768, lf = (int)low_finite - 32768;
    *hi = h > *hi ? h : *hi;
    *lo = l < *lo ? l : *lo;
    *lof = lf < *lof ? lf : *lof;
    *ninf |= minus_inf;
    return i;
}
#endif

/* One vector pass: the largest key, the smallest, the smallest but -inf's, whether -inf is there, and the
 * increasing tokens of keys >= above (NO_KEY: none), appended to out from *m (out may be NULL then). */
static void key_range_above(const uint16_t *codes, Py_ssize_t V, unsigned above, uint32_t *out, Py_ssize_t *m,
                            unsigned *high, unsigned *low, unsigned *low_finite, int *minus_inf)
{
    int hi = -32768, lo = 32767, lof = 32767, ninf = 0; /* keys - 32768, as int16 */
    short lim = (short)(above >= 1 && above < NO_KEY ? (int)above - 32769 : 32767); /* key >= above: s > lim */
    Py_ssize_t i = 0, got = *m;
#ifdef HAVE_AVX2_PATH
    if (cpu_avx2) {
        int high_half = above >= 0x8000u || above == 0;
        short x = high_half ? 0 : (short)0x8000;
        short code_lim = (short)(above >= NO_KEY || above == 0 ? 32767
                                 : high_half ? (int)above - 0x8001 : (int)(0xFFFFu - above) - 0x8000);
        i = key_range_avx2(codes, V, &hi, &lo, &lof, &ninf, x, code_lim, high_half ? 0u : 0xFFFFFFFFu, out, &got);
    }
#endif
#ifdef __SSE2__
    const __m128i flip = _mm_set1_epi16((short)0x8000), ninf_code = _mm_set1_epi16((short)0xFC00);
    const __m128i top = _mm_set1_epi16(32767), vlim = _mm_set1_epi16(lim);
    __m128i vhi = _mm_set1_epi16(-32768), vlo = top, vlof = top, vninf = _mm_setzero_si128();
    for (; i + 8 <= V; i += 8) {
        __m128i c = _mm_loadu_si128((const __m128i *)(codes + i));
        __m128i s = _mm_xor_si128(_mm_xor_si128(c, _mm_or_si128(_mm_srai_epi16(c, 15), flip)), flip);
        __m128i is_ninf = _mm_cmpeq_epi16(c, ninf_code);
        vhi = _mm_max_epi16(vhi, s);
        vlo = _mm_min_epi16(vlo, s);
        vlof = _mm_min_epi16(vlof, _mm_or_si128(_mm_andnot_si128(is_ninf, s), _mm_and_si128(is_ninf, top)));
        vninf = _mm_or_si128(vninf, is_ninf);
        unsigned hits = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi16(s, vlim)) & 0x5555u;
        if (hits) {
            got = put_hits(hits, i, out, got);
        }
    }
    int16_t h[8], l[8], lf[8], n[8];
    _mm_storeu_si128((__m128i *)h, vhi);
    _mm_storeu_si128((__m128i *)l, vlo);
    _mm_storeu_si128((__m128i *)lf, vlof);
    _mm_storeu_si128((__m128i *)n, vninf);
    for (int j = 0; j < 8; j++) {
        hi = h[j] > hi ? h[j] : hi;
        lo = l[j] < lo ? l[j] : lo;
        lof = lf[j] < lof ? lf[j] : lof;
        ninf |= n[j] != 0;
    }
#endif
    for (; i < V; i++) {
        int s = (int)key_of(codes[i]) - 32768;
        hi = s > hi ? s : hi;
        lo = s < lo ? s : lo;
        if (codes[i] == 0xFC00u) {
            ninf = 1;
        } else {
            lof = s < lof ? s : lof;
        }
        if (s > lim) {
            out[got++] = (uint32_t)i;
        }
    }
    *high = (unsigned)(hi + 32768);
    *low = (unsigned)(lo + 32768);
    *low_finite = (unsigned)(lof + 32768);
    *minus_inf = ninf;
    *m = got;
}

/* key_range_above without the tokens. */
static void key_range(const uint16_t *codes, Py_ssize_t V, unsigned *high, unsigned *low, unsigned *low_finite,
                      int *minus_inf)
{
    Py_ssize_t none = 0;
    key_range_above(codes, V, NO_KEY, NULL, &none, high, low, low_finite, minus_inf);
}

#define EDGE_SAMPLES 2048 /* keys sampled for the sparse top (sampled_edge) */
#define SAMPLE_MOST (2 * EDGE_SAMPLES + 8) /* V / (V / 2048) <= 4096 tokens, in runs of 8 */
#define SPARSE_SAMPLES 6 /* the sparse top: the keys above about V / 341 tokens by the sample... */
#define SPARSE_MOST 24 /* ...if the sample puts at most about V / 85 there (else no sparse top) */

/* The lower edge (a multiple of 16) of the key bin where a sample of about 2048 of the row's keys, counted from
 * the top, reaches `want`; NO_KEY if the row is small, the count never reaches want, or it passes `most` there.
 * Runs of 8 adjacent tokens spread over the row: a run is a cache line's part, so the sample reads a sixteenth
 * of the row's lines. */
static unsigned sampled_edge(const uint16_t *codes, Py_ssize_t V, Py_ssize_t want, Py_ssize_t most)
{
    Py_ssize_t step = V / EDGE_SAMPLES, samples = 0, hist[SAMPLE_BINS], above = 0;
    uint16_t keys[SAMPLE_MOST];
    unsigned lo = 0xFFFFu, hi = 0;
    if (step < 2) {
        return NO_KEY;
    }
    for (Py_ssize_t i = 0; i + 8 <= V && samples + 8 <= SAMPLE_MOST; i += 8 * step) {
        for (int j = 0; j < 8; j++) {
            unsigned key = key_of(codes[i + j]);
            keys[samples++] = (uint16_t)key;
            lo = key < lo ? key : lo;
            hi = key > hi ? key : hi;
        }
    }
    unsigned low = lo >> 4, nbins = (hi >> 4) - low + 1;
    memset(hist, 0, nbins * sizeof *hist);
    for (Py_ssize_t t = 0; t < samples; t++) {
        hist[(keys[t] >> 4) - low]++;
    }
    for (unsigned bin = nbins; bin-- > 0;) {
        above += hist[bin];
        if (above >= want) {
            return above <= most && (low + bin) > 0 ? (low + bin) << 4 : NO_KEY;
        }
    }
    return NO_KEY;
}

/* Move the marked codes c_hi, c_hi - 1, ..., c_lo (step -1) or c_lo, ..., c_hi (step 1) to present, unmarking. */
static void list_marked(uint8_t *seen, long from, long to, int step, uint16_t *present, Py_ssize_t *n)
{
    for (long c = from; step < 0 ? c >= to : c <= to;) {
        long word = step < 0 ? c - 7 : c;
        if ((word & 7) == 0 && (step < 0 ? word >= to : c + 7 <= to)) {
            uint64_t w;
            memcpy(&w, seen + word, 8);
            if (!w) {
                c += 8 * step;
                continue;
            }
        }
        if (seen[c]) {
            seen[c] = 0;
            present[(*n)++] = (uint16_t)c;
        }
        c += step;
    }
}

/* The marked codes of keys key_hi down to key_lo (decreasing value) to present, unmarking them. */
static void list_marked_keys(uint8_t *seen, unsigned key_hi, unsigned key_lo, uint16_t *present, Py_ssize_t *n)
{
    if (key_hi >= 0x8000u) { /* positive codes: code = key - 0x8000, larger code, larger value */
        unsigned lo = key_lo > 0x8000u ? key_lo : 0x8000u;
        list_marked(seen, (long)(key_hi - 0x8000u), (long)(lo - 0x8000u), -1, present, n);
    }
    if (key_lo < 0x8000u) { /* negative codes: code = 0xFFFF - key, larger code, smaller value */
        unsigned hi = key_hi < 0x7FFFu ? key_hi : 0x7FFFu;
        list_marked(seen, (long)(0xFFFFu - hi), (long)(0xFFFFu - key_lo), 1, present, n);
    }
}

/* scan_present's passes (below), the GIL released: n, or -1 for a bad row; the sparse top's tokens in above
 * (*m of them, increasing: those of keys >= *edge, a sampled key; NO_KEY: none). */
static Py_ssize_t scan_core(const uint16_t *codes, Py_ssize_t V, uint8_t *seen, uint16_t *present, double *d,
                           uint32_t *above, Py_ssize_t *m, unsigned *edge)
{
    Py_ssize_t n = 0;
    unsigned high, low, low_finite, top = sampled_edge(codes, V, SPARSE_SAMPLES, SPARSE_MOST);
    int minus_inf;
    *m = 0;
    key_range_above(codes, V, top, above, m, &high, &low, &low_finite, &minus_inf);
    *edge = top;
    if (high >= 0xFC00u || low < 0x03FFu || high == 0x03FFu) { /* +inf or NaN, or only -inf */
        return -1;
    }
    /* The listed span: keys [low_finite, dense] (all of them), the sparse top above it as marked. */
    unsigned dense = top <= high ? top - 1 : high;
    Py_ssize_t span = dense >= low_finite ? (Py_ssize_t)(dense - low_finite) + 1 : 0;
    if (span + minus_inf <= RANGE_CODES) {
        if (top <= high) {
            for (Py_ssize_t t = 0; t < *m; t++) {
                seen[codes[above[t]]] = 1;
            }
            list_marked_keys(seen, high, top, present, &n); /* (-inf among them if top <= its key) */
        }
        for (unsigned key = dense + 1; span && key-- > low_finite;) {
            present[n++] = (uint16_t)code_of_key(key);
        }
        if (minus_inf && top > 0x03FFu) {
            present[n++] = 0xFC00u;
        }
    } else {
        for (Py_ssize_t i = 0; i < V; i++) {
            seen[codes[i]] = 1;
        }
        list_marked_keys(seen, high, low, present, &n);
    }
    double first = half_value(present[0]);
    for (Py_ssize_t j = 0; j < n; j++) {
        d[j] = half_value(present[j]) - first;
    }
    return n;
}

/* scan_present(codes: uint16[V], seen: uint8[65536] (zero, left zero), present: uint16[65536] (written),
 * d: float64[65536] (written), above: uint32[V] (written)) -> (n, m, edge): the row's codes by decreasing value,
 * and each value minus the largest (exact in float64: NumPy's ``x - x.max()``), n = -1 for a row holding NaN or
 * +inf or only -inf; the m increasing tokens of keys >= edge (a key above about V / 128 tokens by a sample;
 * NO_KEY: none), the candidates of a top-K support.  The codes of keys >= edge are listed as held (marked from
 * those tokens); below, a row whose values span at most RANGE_CODES codes lists every code of its span (some
 * perhaps absent: harmless, as nothing is summed per code); another lists the codes it holds, found by a pass
 * that marks them. */
static PyObject *scan_present(PyObject *self, PyObject *args)
{
    Py_buffer b[5];
    if (!PyArg_ParseTuple(args, "y*w*w*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4])) {
        return NULL;
    }
    if (b[0].len % 2 || b[0].len == 0 || b[1].len != CODES || b[2].len != CODES * 2 || b[3].len != CODES * 8
        || b[4].len != b[0].len * 2) {
        release(b, 5);
        return mismatch("scan_present");
    }
    const uint16_t *codes = b[0].buf;
    uint8_t *seen = b[1].buf;
    uint16_t *present = b[2].buf;
    double *d = b[3].buf;
    Py_ssize_t V = b[0].len / 2, n, m;
    unsigned edge;
    Py_BEGIN_ALLOW_THREADS
    n = scan_core(codes, V, seen, present, d, b[4].buf, &m, &edge);
    Py_END_ALLOW_THREADS
    release(b, 5);
    return Py_BuildValue("nnI", n, m, edge);
}

#define HOLDS_BLOCK 4096 /* tokens a block of holds' pass checks at a time */

/* Whether every token of a key above span_top has a marked code, and every other one a key in [bottom, span_top]
 * or -inf where ninf_ok: blocks of the vector pass, their tokens above span_top looked up. */
static int holds_marked(const uint16_t *codes, Py_ssize_t V, const uint8_t *seen, unsigned span_top, unsigned bottom,
                        int ninf_ok)
{
    uint32_t hits[HOLDS_BLOCK];
    unsigned missing = 0, lowest = 0xFFFFu;
    int any_ninf = 0;
    for (Py_ssize_t i = 0; i < V; i += HOLDS_BLOCK) {
        Py_ssize_t len = V - i < HOLDS_BLOCK ? V - i : HOLDS_BLOCK, m = 0;
        unsigned high, low, low_finite;
        int minus_inf;
        key_range_above(codes + i, len, span_top + 1, hits, &m, &high, &low, &low_finite, &minus_inf);
        for (Py_ssize_t t = 0; t < m; t++) {
            missing |= seen[codes[i + hits[t]]] ^ 1u;
        }
        lowest = low_finite < lowest ? low_finite : lowest;
        any_ninf |= minus_inf;
    }
    return !missing && lowest >= bottom && (!any_ninf || ninf_ok);
}

/* holds(codes: uint16[V], present: uint16[n] (scan_present's), seen: uint8[65536] (zero, left zero)) -> whether
 * every code is one of present's: a row read again must be the row its per-code tables were made from (the
 * passes index those tables by the codes).  A present listing a whole span of values, perhaps below a sparse top
 * of a few codes (scan_present's), takes one vector pass. */
static PyObject *holds(PyObject *self, PyObject *args)
{
    Py_buffer b[3];
    if (!PyArg_ParseTuple(args, "y*y*w*", &b[0], &b[1], &b[2])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2;
    if (b[0].len % 2 || V == 0 || n == 0 || b[2].len != CODES) {
        release(b, 3);
        return mismatch("holds");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    uint8_t *seen = b[2].buf;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    int listed_ninf = n > 1 && present[n - 1] == 0xFC00u;
    Py_ssize_t n_fin = n - listed_ninf, s = n_fin - 1; /* present[s..n_fin): a run of consecutive keys */
    while (s > 0 && key_of(present[s - 1]) == key_of(present[s]) + 1) {
        s--;
    }
    unsigned span_top = key_of(present[s]), bottom = key_of(present[n_fin - 1]);
    if (s == 0) { /* every code of the span [bottom, top] */
        unsigned high, low, low_finite;
        int minus_inf;
        key_range(codes, V, &high, &low, &low_finite, &minus_inf);
        ok = high <= span_top && low_finite >= bottom && (!minus_inf || listed_ninf);
    } else if (s <= RANGE_CODES) { /* a sparse top, then a span: the tokens above the span looked up */
        for (Py_ssize_t j = 0; j < s; j++) {
            seen[present[j]] = 1;
        }
        ok = holds_marked(codes, V, seen, span_top, bottom, listed_ninf);
        for (Py_ssize_t j = 0; j < s; j++) {
            seen[present[j]] = 0;
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            seen[present[j]] = 1;
        }
        unsigned missing = 0;
        for (Py_ssize_t i = 0; i < V; i++) {
            missing |= seen[codes[i]] ^ 1u;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            seen[present[j]] = 0;
        }
        ok = !missing;
    }
    Py_END_ALLOW_THREADS
    release(b, 3);
    return PyBool_FromLong(ok);
}

/* softmax_present's passes (below), the GIL released: S, and n_pos and positive. */
static double softmax_core(const uint16_t *codes, Py_ssize_t V, const uint16_t *present, const double *e, Py_ssize_t n,
                           double *e_by_code, double *p, uint8_t *mark, Py_ssize_t *n_pos_out,
                           Py_ssize_t *positive_out)
{
    double total;
    Py_ssize_t n_pos = 0, positive = V;
    for (Py_ssize_t j = 0; j < n; j++) {
        e_by_code[present[j]] = e[j];
    }
    total = pairwise_gather(codes, e_by_code, V);
    for (Py_ssize_t j = 0; j < n; j++) {
        p[j] = e[j] / total;
        n_pos += p[j] > 0;
    }
    if (n_pos < n) {
        for (Py_ssize_t j = n_pos; j < n; j++) {
            mark[present[j]] = 1;
        }
        for (Py_ssize_t i = 0; i < V; i++) {
            positive -= mark[codes[i]];
        }
        for (Py_ssize_t j = n_pos; j < n; j++) {
            mark[present[j]] = 0;
        }
    }
    *n_pos_out = n_pos;
    *positive_out = positive;
    return total;
}

/* softmax_present(codes: uint16[V], present: uint16[n], e: float64[n], e_by_code: float64[65536] (scratch),
 * p: float64[n] (written), mark: uint8[65536] (zero, left zero)) -> (S, n_pos, positive_tokens): S the pairwise
 * sum of e over the row in token order, p = e / S per code (NumPy's ``e / e.sum()``), n_pos the codes of
 * p > 0 (a prefix: p decreases with the value) and positive_tokens the tokens of p > 0. */
static PyObject *softmax_present(PyObject *self, PyObject *args)
{
    Py_buffer b[6];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2;
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len != CODES * 8 || b[4].len != n * 8 || b[5].len != CODES) {
        release(b, 6);
        return mismatch("softmax_present");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *e = b[2].buf;
    double *e_by_code = b[3].buf, *p = b[4].buf, total;
    uint8_t *mark = b[5].buf;
    Py_ssize_t n_pos, positive;
    Py_BEGIN_ALLOW_THREADS
    total = softmax_core(codes, V, present, e, n, e_by_code, p, mark, &n_pos, &positive);
    Py_END_ALLOW_THREADS
    release(b, 6);
    return Py_BuildValue("dnn", total, n_pos, positive);
}

/* dense(codes: uint16[V], present: uint16[n], p: float64[n], table: float64[65536] (scratch), out: float64[V]):
 * the row's p token by token. */
static PyObject *dense(PyObject *self, PyObject *args)
{
    Py_buffer b[5];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2;
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len != CODES * 8 || b[4].len != V * 8) {
        release(b, 5);
        return mismatch("dense");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf;
    double *table = b[3].buf, *out = b[4].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n; j++) {
        table[present[j]] = p[j];
    }
    for (Py_ssize_t i = 0; i < V; i++) {
        out[i] = table[codes[i]];
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    Py_RETURN_NONE;
}

/* add_to(codes: uint16[V], present: uint16[n], p: float64[n], table: float64[65536] (scratch), out: float64[V]):
 * out += the row's p token by token (NumPy's ``out += p``, without p). */
static PyObject *add_to(PyObject *self, PyObject *args)
{
    Py_buffer b[5];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2;
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len != CODES * 8 || b[4].len != V * 8) {
        release(b, 5);
        return mismatch("add_to");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf;
    double *table = b[3].buf, *out = b[4].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n; j++) {
        table[present[j]] = p[j];
    }
    for (Py_ssize_t i = 0; i < V; i++) {
        out[i] += table[codes[i]];
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    Py_RETURN_NONE;
}

/* p_at(codes: uint16[V], present: uint16[n], p: float64[n], table: float64[65536] (scratch), tokens: int64[m],
 * out: float64[m]): the row's p at the tokens (each < V). */
static PyObject *p_at(PyObject *self, PyObject *args)
{
    Py_buffer b[6];
    if (!PyArg_ParseTuple(args, "y*y*y*w*y*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2, m = b[4].len / 8;
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len != CODES * 8 || b[4].len % 8 || b[5].len != m * 8) {
        release(b, 6);
        return mismatch("p_at");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf;
    const int64_t *tokens = b[4].buf;
    double *table = b[3].buf, *out = b[5].buf;
    int outside = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        table[present[j]] = p[j];
    }
    for (Py_ssize_t t = 0; t < m; t++) {
        if (tokens[t] < 0 || tokens[t] >= V) {
            outside = 1;
            break;
        }
        out[t] = table[codes[tokens[t]]];
    }
    release(b, 6);
    if (outside) {
        PyErr_SetString(PyExc_IndexError, "p_at: a token outside the row");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* residual(codes: uint16[V], present: uint16[n], p: float64[n], table: float64[65536] (scratch), eps,
 * ids: int64[K] (increasing), q: float64[K], tokens: int64[V] (written), cum: float64[V] (written)) -> r:
 * the increasing tokens where p > q (q = eps off the ids) and the running sum (NumPy's cumsum, in order) of
 * the residual p - min(p, q) there; where that is empty or sums to 0, the tokens of p > 0 and the running
 * sum of p (engine.positions.position_tables on the dense row). */
static PyObject *residual(PyObject *self, PyObject *args)
{
    Py_buffer b[8];
    double eps;
    if (!PyArg_ParseTuple(args, "y*y*y*w*dy*y*w*w*", &b[0], &b[1], &b[2], &b[3], &eps, &b[4], &b[5], &b[6],
                          &b[7])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2, K = b[4].len / 8;
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len != CODES * 8 || b[4].len % 8 || b[5].len != K * 8
        || b[6].len != V * 8 || b[7].len != V * 8) {
        release(b, 8);
        return mismatch("residual");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf, *q = b[5].buf;
    const int64_t *ids = b[4].buf;
    double *table = b[3].buf, *cum = b[7].buf;
    int64_t *tokens = b[6].buf;
    Py_ssize_t r = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n; j++) {
        table[present[j]] = p[j];
    }
    /* Branch-free: every token is written at r, kept by moving r on when p > q; elsewhere its residual
     * p - min(p, q) is p - p = 0, and the running sum (from 0.0: 0.0 + x is x) does not move. */
    double at = 0.0;
    Py_ssize_t next = 0;
    for (Py_ssize_t i = 0; i < V; i++) {
        double pi = table[codes[i]], qi = eps;
        if (next < K && ids[next] == i) {
            qi = q[next++];
        }
        at += pi - (pi < qi ? pi : qi);
        tokens[r] = i;
        cum[r] = at;
        r += pi > qi;
    }
    if (!(r && at > 0)) { /* p = q to rounding: a rejection has probability ~0; draw from p */
        r = 0;
        at = 0.0;
        for (Py_ssize_t i = 0; i < V; i++) {
            double pi = table[codes[i]];
            at += pi;
            tokens[r] = i;
            cum[r] = at;
            r += pi != 0;
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    return PyLong_FromSsize_t(r);
}

#ifdef HAVE_AVX2_PATH
/* keys_at_least's vector loop, 16 codes at a time (see there): the tokens it covered; their hits in out. */
AVX2 static Py_ssize_t keys_at_least_avx2(const uint16_t *codes, Py_ssize_t V, short x, short lim, unsigned invert,
                                          uint32_t *out, Py_ssize_t *m)
{
    const __m256i vx = _mm256_set1_epi16(x), vlim = _mm256_set1_epi16(lim);
    Py_ssize_t i = 0, got = *m;
    for (; i + 16 <= V; i += 16) {
        __m256i c = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(codes + i)), vx);
        unsigned hits = ((unsigned)_mm256_movemask_epi8(_mm256_cmpgt_epi16(c, vlim)) ^ invert) & 0x55555555u;
        while (hits) { /* two bits a lane: the even ones say which */
            out[got++] = (uint32_t)(i + (__builtin_ctz(hits) >> 1));
            hits &= hits - 1;
        }
    }
    *m = got;
    return i;
}
#endif

/* The increasing tokens whose code's key is >= thr.  On the codes themselves: thr >= 0x8000 keeps the positive
 * codes >= thr - 0x8000 (as int16: code > thr - 0x8001, negative codes below), a lower thr every positive code
 * and the negative ones <= 0xFFFF - thr (unsigned: code ^ 0x8000 <= 0xFFFF - thr - 0x8000 as int16). */
static Py_ssize_t keys_at_least(const uint16_t *codes, Py_ssize_t V, unsigned thr, uint32_t *out)
{
    Py_ssize_t m = 0, i = 0;
    if (thr == 0) {
        for (; i < V; i++) {
            out[m++] = (uint32_t)i;
        }
        return m;
    }
#ifdef __SSE2__
    int high = thr >= 0x8000u;
    short x = high ? 0 : (short)0x8000, lim = (short)(high ? (int)thr - 0x8001 : (int)(0xFFFFu - thr) - 0x8000);
    unsigned invert = high ? 0u : 0xFFFFFFFFu; /* keep code ^ x > lim, or its contrary */
#ifdef HAVE_AVX2_PATH
    if (cpu_avx2) {
        i = keys_at_least_avx2(codes, V, x, lim, invert, out, &m);
    }
#endif
    const __m128i vx = _mm_set1_epi16(x), vlim = _mm_set1_epi16(lim);
    for (; i + 8 <= V; i += 8) {
        __m128i c = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(codes + i)), vx);
        unsigned hits = ((unsigned)_mm_movemask_epi8(_mm_cmpgt_epi16(c, vlim)) ^ invert) & 0x5555u;
        while (hits) { /* two bits a lane: the even ones say which */
            out[m++] = (uint32_t)(i + (__builtin_ctz(hits) >> 1));
            hits &= hits - 1;
        }
    }
#endif
    for (; i < V; i++) {
        if (key_of(codes[i]) >= thr) {
            out[m++] = (uint32_t)i;
        }
    }
    return m;
}

/* A sample of about 4096 of the row's keys, binned by 16 keys from bin `low` (nbins bins, those of the row's
 * keys); the number sampled (0: a small row).  Runs of 8 adjacent tokens, spread over the row: a run is a
 * cache line's part, so the sample reads an eighth of the row's lines. */
static Py_ssize_t sample_keys(const uint16_t *codes, Py_ssize_t V, Py_ssize_t *hist, unsigned low, unsigned nbins)
{
    Py_ssize_t step = V / 4096, samples = 0;
    if (step < 2) {
        return 0;
    }
    memset(hist, 0, nbins * sizeof *hist);
    for (Py_ssize_t i = 0; i + 8 <= V; i += 8 * step) {
        for (int j = 0; j < 8; j++) {
            unsigned bin = (key_of(codes[i + j]) >> 4) - low; /* (wraps above nbins below low: clamped) */
            hist[bin < nbins ? bin : 0]++;
        }
        samples += 8;
    }
    return samples;
}

/* The lower edge of the bin where the sample's count from the top reaches `want` (0 if it never does). */
static unsigned sampled_threshold(const Py_ssize_t *hist, unsigned low, unsigned nbins, Py_ssize_t want)
{
    Py_ssize_t above = 0;
    for (unsigned bin = nbins; bin-- > 0;) {
        above += hist[bin];
        if (above >= want) {
            return (low + bin) << 4;
        }
    }
    return 0;
}

/* The tokens of keys >= thr among the chosen m (all that hold them): the increasing tokens of p >= the k-th largest
 * p counted with ties, kept in chosen; returns their number, or -1 if there are fewer than k or, where `strict`,
 * the lowest p of a listed code ties with the next code's (a token below thr might then be needed).  jmap[c] is
 * then the index in present of every candidate's code c, and count[j] the candidates of present[j] (j below the
 * lowest candidate's). */
static Py_ssize_t keep_top(const uint16_t *codes, const uint16_t *present, const double *p, Py_ssize_t n,
                           Py_ssize_t k, int32_t *jmap, int64_t *count, uint32_t *chosen, Py_ssize_t m, unsigned thr,
                           int strict)
{
    Py_ssize_t listed = 0; /* present is by decreasing key: the first `listed` codes hold every candidate */
    while (listed < n && key_of(present[listed]) >= thr) {
        jmap[present[listed]] = (int32_t)listed;
        count[listed++] = 0;
    }
    if (strict && (m < k || (listed > 0 && listed < n && p[listed] == p[listed - 1]))) {
        return -1;
    }
    for (Py_ssize_t t = 0; t < m; t++) {
        count[jmap[codes[chosen[t]]]]++;
    }
    Py_ssize_t seen = 0, jk = listed - 1;
    for (Py_ssize_t j = 0; j < listed; j++) {
        seen += count[j];
        if (seen >= k) {
            jk = j;
            break;
        }
    }
    double kth = p[jk];
    Py_ssize_t kept = 0;
    for (Py_ssize_t t = 0; t < m; t++) {
        if (p[jmap[codes[chosen[t]]]] >= kth) {
            chosen[kept++] = chosen[t];
        }
    }
    return kept;
}

/* The tokens of a row's sparse top (scan_present's above: every token of a key >= edge, increasing), if any. */
struct sparse_top {
    const uint32_t *tokens;
    Py_ssize_t m;
    unsigned edge;
};

/* The increasing tokens of p >= the k-th largest p counted with ties (1 <= k <= the tokens of p > 0), in
 * chosen; returns their number.  The candidates are the row's sparse top if it holds k tokens (found by
 * scan_present's pass), else the tokens of keys >= a sampled threshold (all tokens if fewer than k are); jmap
 * and count as keep_top leaves them. */
static Py_ssize_t choose(const uint16_t *codes, Py_ssize_t V, const uint16_t *present, const double *p,
                         Py_ssize_t n, Py_ssize_t k, int32_t *jmap, int64_t *count, uint32_t *chosen,
                         struct sparse_top sparse)
{
    if (sparse.m >= k && sparse.edge < NO_KEY) {
        memcpy(chosen, sparse.tokens, (size_t)sparse.m * sizeof *chosen);
        Py_ssize_t kept = keep_top(codes, present, p, n, k, jmap, count, chosen, sparse.m, sparse.edge, 1);
        if (kept >= 0) {
            return kept;
        }
    }
    /* Candidates: the tokens of keys >= a threshold under about 2 k + 4 x (V / samples) tokens by the sample;
     * a threshold that keeps fewer than k tokens is lowered (16 times as many sampled), down to every token. */
    unsigned low = key_of(present[n - 1]) >> 4, nbins = (key_of(present[0]) >> 4) - low + 1; /* the row's keys */
    Py_ssize_t hist[SAMPLE_BINS], samples = sample_keys(codes, V, hist, low, nbins), m = 0;
    unsigned thr = 0;
    for (Py_ssize_t want = samples ? 2 * ((k * samples + V - 1) / V) + 4 : 0;; want *= 16) {
        thr = want && want < samples ? sampled_threshold(hist, low, nbins, want) : 0;
        m = keys_at_least(codes, V, thr, chosen);
        if (m >= k || thr == 0) {
            break;
        }
    }
    return keep_top(codes, present, p, n, k, jmap, count, chosen, m, thr, 0);
}

/* The sparse top passed in (tokens: uint32[m], each < V; edge): NULL if a token is out of the row. */
static int sparse_of(const Py_buffer *tokens, unsigned edge, Py_ssize_t V, struct sparse_top *out)
{
    const uint32_t *t = tokens->buf;
    Py_ssize_t m = tokens->len / 4;
    if (tokens->len % 4) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        if ((Py_ssize_t)t[i] >= V) {
            return 0;
        }
    }
    out->tokens = t;
    out->m = m;
    out->edge = edge;
    return 1;
}

/* top_tokens(codes, present, p, n_pos, k, jmap: int32[65536], count: int64[2 * 65536], chosen: uint32[V], out: int64[V])
 * sparse: uint32[m], edge (scan_present's above) -> m: the increasing tokens of the k largest p and all tied with
 * the k-th (k <= the tokens of p > 0). */
static PyObject *top_tokens(PyObject *self, PyObject *args)
{
    Py_buffer b[8];
    Py_ssize_t n_pos, k;
    unsigned edge;
    struct sparse_top sparse;
    if (!PyArg_ParseTuple(args, "y*y*y*nnw*w*w*w*y*I", &b[0], &b[1], &b[2], &n_pos, &k, &b[3], &b[4], &b[5], &b[6],
                          &b[7], &edge)) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2;
    if (b[0].len % 2 || b[2].len != n * 8 || n_pos < 1 || n_pos > n || k < 1 || k > V || b[3].len != CODES * 4
        || b[4].len != CODES * 16 || b[5].len != V * 4 || b[6].len != V * 8 || !sparse_of(&b[7], edge, V, &sparse)) {
        release(b, 8);
        return mismatch("top_tokens");
    }
    uint32_t *chosen = b[5].buf;
    int64_t *out = b[6].buf;
    Py_ssize_t m;
    Py_BEGIN_ALLOW_THREADS
    m = choose(b[0].buf, V, b[1].buf, b[2].buf, n, k, b[3].buf, b[4].buf, chosen, sparse);
    for (Py_ssize_t t = 0; t < m; t++) {
        out[t] = chosen[t];
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    return PyLong_FromSsize_t(m);
}

static void put_u32(uint8_t *at, uint32_t v)
{
    at[0] = (uint8_t)v;
    at[1] = (uint8_t)(v >> 8);
    at[2] = (uint8_t)(v >> 16);
    at[3] = (uint8_t)(v >> 24);
}

static void put_f32(uint8_t *at, double v)
{
    float f = (float)v;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    put_u32(at, bits);
}

/* craft's passes (below), the GIL released: whether the payload is valid (else the NumPy code is run). */
static int craft_core(const uint16_t *codes, Py_ssize_t V, const uint16_t *present, const double *p, Py_ssize_t n,
                      const double *logp, Py_ssize_t k, double tau, double eps_in, int32_t *jmap, int64_t *count,
                      uint32_t *chosen, uint32_t *order, int64_t *ids, double *top, uint8_t *body, double *d,
                      struct sparse_top sparse, double *eps_out, double *delta_out, double *topk_out)
{
    int wide = V > 65536;
    double eps32 = 0.0, delta = 0.0, topk = 0.0;
    int ok = 1;
    Py_ssize_t m = choose(codes, V, present, p, n, k, jmap, count, chosen, sparse);
    /* Decreasing p, ties by the lower token: a stable counting sort of the chosen tokens by their rank
     * (the distinct p values, decreasing), reusing count. */
    Py_ssize_t last = jmap[codes[chosen[m - 1]]], ranks = 0;
    for (Py_ssize_t t = 0; t < m; t++) {
        Py_ssize_t j = jmap[codes[chosen[t]]];
        last = j > last ? j : last;
    }
    int64_t *rank_of = count, *start = count + (last + 1); /* count holds 2 x 65536 */
    for (Py_ssize_t j = 0; j <= last; j++) {
        ranks += j > 0 && p[j] != p[j - 1];
        rank_of[j] = ranks;
        start[ranks] = 0;
    }
    for (Py_ssize_t t = 0; t < m; t++) {
        start[rank_of[jmap[codes[chosen[t]]]]]++;
    }
    int64_t at = 0;
    for (Py_ssize_t r = 0; r <= ranks; r++) {
        int64_t c = start[r];
        start[r] = at;
        at += c;
    }
    for (Py_ssize_t t = 0; t < m; t++) {
        order[start[rank_of[jmap[codes[chosen[t]]]]]++] = chosen[t];
    }
    double low = 0.0;
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_ssize_t j = jmap[codes[order[i]]];
        ids[i] = order[i];
        top[i] = p[j];
        d[i] = logp[j] - logp[jmap[codes[order[0]]]]; /* ell, then the codes' logits below */
        if (i == 0 || d[i] < low) {
            low = d[i];
        }
    }
    double spread = -low;
    if (spread > 0) {
        delta = (double)(float)(spread / 255.0);
    }
    uint8_t *qcodes = body + 24 + k * (wide ? 4 : 2);
    for (Py_ssize_t i = 0; i < k; i++) {
        double c = 0.0;
        if (delta > 0) {
            c = rint(-d[i] / delta);
            c = c < 0 ? 0 : (c > 255 ? 255 : c);
        }
        qcodes[i] = (uint8_t)c;
        ok &= i == 0 ? qcodes[0] == 0 : qcodes[i] >= qcodes[i - 1];
    }
    topk = pairwise_sum(top, k);
    if (eps_in != eps_in) { /* auto: the target's tail mass spread over the V - k others */
        double tail = 1.0 - topk;
        tail = tail > 0.0 ? tail : 0.0;
        if (k < V) {
            eps32 = (double)(float)(tail / (double)(V - k));
            while ((double)(V - k) * eps32 >= 1.0) {
                eps32 = (double)nextafterf((float)eps32, 0.0f);
            }
        }
    } else {
        eps32 = eps_in;
    }
    ok &= V >= 2 && V <= 0xFFFFFFFFLL && k <= 0xFFFF && isfinite(tau) && tau > 0 && isfinite(eps32) && eps32 >= 0
          && (double)(V - k) * eps32 < 1 && isfinite(delta) && delta >= 0;
    memcpy(body, "PSI1", 4);
    body[4] = 1;
    body[5] = (uint8_t)wide;
    body[6] = (uint8_t)k;
    body[7] = (uint8_t)(k >> 8);
    put_u32(body + 8, (uint32_t)V);
    put_f32(body + 12, tau);
    put_f32(body + 16, eps32);
    put_f32(body + 20, delta);
    for (Py_ssize_t i = 0; i < k; i++) {
        if (wide) {
            put_u32(body + 24 + 4 * i, (uint32_t)ids[i]);
        } else {
            body[24 + 2 * i] = (uint8_t)ids[i];
            body[25 + 2 * i] = (uint8_t)(ids[i] >> 8);
        }
    }
    /* F(ψ)'s logits -codes * delta / tau, minus their largest (core.proposal.explicit_probabilities) */
    double high = 0.0;
    for (Py_ssize_t i = 0; i < k; i++) {
        d[i] = -(double)qcodes[i] * delta / tau;
        if (i == 0 || d[i] > high) {
            high = d[i];
        }
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        d[i] = d[i] - high;
    }
    *eps_out = eps32;
    *delta_out = delta;
    *topk_out = topk;
    return ok;
}

/* craft(codes, present, p, logp, n_pos, k, tau32, eps (NaN: auto), jmap, count, chosen: uint32[V],
 * order: uint32[V], ids: int64[k] (written), top: float64[k] (written), body: uint8[payload size - 4]
 * (written), d: float64[k] (written), sparse: uint32[m], edge (scan_present's above; edge NO_KEY: none))
 * -> (eps32, delta, topk) or None.
 *
 * core.payload.craft_payload_from_support on the row's top support, then encode_payload without the CRC:
 * the ids by decreasing p (ties: lower id first), their log p (logp, NumPy's, per code), delta, the codes,
 * eps, the header.  d is -codes * delta / tau minus its largest, whose exp gives F(ψ)'s weights
 * (core.proposal.explicit_probabilities).  None where the NumPy code would raise (it is then run). */
static PyObject *craft(PyObject *self, PyObject *args)
{
    Py_buffer b[13];
    Py_ssize_t n_pos, k;
    double tau, eps_in;
    unsigned edge;
    struct sparse_top sparse;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnddw*w*w*w*w*w*w*w*y*I", &b[0], &b[1], &b[2], &b[3], &n_pos, &k, &tau,
                          &eps_in, &b[4], &b[5], &b[6], &b[7], &b[8], &b[9], &b[10], &b[11], &b[12], &edge)) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2;
    Py_ssize_t body_len = 24 + k * (V > 65536 ? 5 : 3);
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len != n_pos * 8 || n_pos < 1 || n_pos > n || k < 1 || k > V
        || b[4].len != CODES * 4 || b[5].len != CODES * 16 || b[6].len != V * 4 || b[7].len != V * 4
        || b[8].len != k * 8 || b[9].len != k * 8 || b[10].len != body_len || b[11].len != k * 8
        || !sparse_of(&b[12], edge, V, &sparse)) {
        release(b, 13);
        return mismatch("craft");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf, *logp = b[3].buf;
    int32_t *jmap = b[4].buf;
    int64_t *count = b[5].buf, *ids = b[8].buf;
    uint32_t *chosen = b[6].buf, *order = b[7].buf;
    double *top = b[9].buf, *d = b[11].buf;
    uint8_t *body = b[10].buf;
    double eps32 = 0.0, delta = 0.0, topk = 0.0;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = craft_core(codes, V, present, p, n, logp, k, tau, eps_in, jmap, count, chosen, order, ids, top, body, d, sparse,
                    &eps32, &delta, &topk);
    Py_END_ALLOW_THREADS
    release(b, 13);
    if (!ok) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("ddd", eps32, delta, topk);
}

/* F(ψ) on the ids, ``(1 - (V - k) eps) * (w / sum w)``, then eps: whether any q <= 0. */
static int explicit_core(const double *w, Py_ssize_t k, Py_ssize_t V, double eps, double *q)
{
    double total = pairwise_sum(w, k), keep = 1.0 - (double)(V - k) * eps;
    int zero = !(eps > 0);
    for (Py_ssize_t i = 0; i < k; i++) {
        q[i] = keep * (w[i] / total);
        zero |= !(q[i] > 0);
    }
    q[k] = eps;
    return zero;
}

/* explicit_q(w: float64[k], V, eps32, q: float64[k + 1] (written)) -> any q <= 0: F(ψ) on the ids,
 * ``(1 - (V - k) eps) * (w / sum w)``, then eps. */
static PyObject *explicit_q(PyObject *self, PyObject *args)
{
    Py_buffer b[2];
    Py_ssize_t V;
    double eps;
    if (!PyArg_ParseTuple(args, "y*ndw*", &b[0], &V, &eps, &b[1])) {
        return NULL;
    }
    Py_ssize_t k = b[0].len / 8;
    if (b[0].len % 8 || b[1].len != (k + 1) * 8 || k < 1) {
        release(b, 2);
        return mismatch("explicit_q");
    }
    int zero = explicit_core(b[0].buf, k, V, eps, b[1].buf);
    release(b, 2);
    return PyBool_FromLong(zero);
}


/* NumPy's pairwise sum of pairs[i] (2 doubles each), i < n: both sums at once, each lane the scalar one. */
#ifdef __SSE2__
typedef __m128d pair_t;
#define PAIR_LOAD(at) _mm_loadu_pd(at)
#define PAIR_ADD(x, y) _mm_add_pd(x, y)
#define PAIR_ZERO() _mm_set1_pd(-0.0)
#define PAIR_STORE(at, x) _mm_storeu_pd(at, x)
#else
typedef struct {
    double a, b;
} pair_t;
static inline pair_t pair_load(const double *at)
{
    pair_t x = {at[0], at[1]};
    return x;
}
static inline pair_t pair_add(pair_t x, pair_t y)
{
    pair_t z = {x.a + y.a, x.b + y.b};
    return z;
}
static inline pair_t pair_zero(void)
{
    pair_t z = {-0.0, -0.0};
    return z;
}
static inline void pair_store(double *at, pair_t x)
{
    at[0] = x.a;
    at[1] = x.b;
}
#define PAIR_LOAD(at) pair_load(at)
#define PAIR_ADD(x, y) pair_add(x, y)
#define PAIR_ZERO() pair_zero()
#define PAIR_STORE(at, x) pair_store(at, x)
#endif

/* A leaf of NumPy's tree (n <= 128) over the pairs AT(i): 8 accumulators, then the rest in turn. */
#define PAIR_LEAF(AT)                                                                                  \
    do {                                                                                               \
        if (n < 8) {                                                                                   \
            pair_t res = PAIR_ZERO();                                                                  \
            for (Py_ssize_t i = 0; i < n; i++) {                                                       \
                res = PAIR_ADD(res, PAIR_LOAD(AT(i)));                                                 \
            }                                                                                          \
            return res;                                                                                \
        }                                                                                              \
        pair_t r0 = PAIR_LOAD(AT(0)), r1 = PAIR_LOAD(AT(1)), r2 = PAIR_LOAD(AT(2)), r3 = PAIR_LOAD(AT(3));  \
        pair_t r4 = PAIR_LOAD(AT(4)), r5 = PAIR_LOAD(AT(5)), r6 = PAIR_LOAD(AT(6)), r7 = PAIR_LOAD(AT(7));  \
        Py_ssize_t i;                                                                                  \
        for (i = 8; i < n - (n % 8); i += 8) {                                                         \
            r0 = PAIR_ADD(r0, PAIR_LOAD(AT(i)));                                                       \
            r1 = PAIR_ADD(r1, PAIR_LOAD(AT(i + 1)));                                                   \
            r2 = PAIR_ADD(r2, PAIR_LOAD(AT(i + 2)));                                                   \
            r3 = PAIR_ADD(r3, PAIR_LOAD(AT(i + 3)));                                                   \
            r4 = PAIR_ADD(r4, PAIR_LOAD(AT(i + 4)));                                                   \
            r5 = PAIR_ADD(r5, PAIR_LOAD(AT(i + 5)));                                                   \
            r6 = PAIR_ADD(r6, PAIR_LOAD(AT(i + 6)));                                                   \
            r7 = PAIR_ADD(r7, PAIR_LOAD(AT(i + 7)));                                                   \
        }                                                                                              \
        pair_t res = PAIR_ADD(PAIR_ADD(PAIR_ADD(r0, r1), PAIR_ADD(r2, r3)),                            \
                              PAIR_ADD(PAIR_ADD(r4, r5), PAIR_ADD(r6, r7)));                           \
        for (; i < n; i++) {                                                                           \
            res = PAIR_ADD(res, PAIR_LOAD(AT(i)));                                                     \
        }                                                                                              \
        return res;                                                                                    \
    } while (0)

#define BY_CODE(i) (table + 2 * codes[i])
#define IN_BUFFER(i) (buffer + 2 * (i))

static pair_t leaf_by_code(const uint16_t *codes, const double *table, Py_ssize_t n)
{
    if (n < 8) {
        PAIR_LEAF(BY_CODE);
    }
    unsigned k[8];
    eight_codes(codes, k);
    pair_t r0 = PAIR_LOAD(table + 2 * k[0]), r1 = PAIR_LOAD(table + 2 * k[1]), r2 = PAIR_LOAD(table + 2 * k[2]);
    pair_t r3 = PAIR_LOAD(table + 2 * k[3]), r4 = PAIR_LOAD(table + 2 * k[4]), r5 = PAIR_LOAD(table + 2 * k[5]);
    pair_t r6 = PAIR_LOAD(table + 2 * k[6]), r7 = PAIR_LOAD(table + 2 * k[7]);
    Py_ssize_t i;
    for (i = 8; i < n - (n % 8); i += 8) { /* PAIR_LEAF's loop, the codes read 8 at a time */
        eight_codes(codes + i, k);
        r0 = PAIR_ADD(r0, PAIR_LOAD(table + 2 * k[0]));
        r1 = PAIR_ADD(r1, PAIR_LOAD(table + 2 * k[1]));
        r2 = PAIR_ADD(r2, PAIR_LOAD(table + 2 * k[2]));
        r3 = PAIR_ADD(r3, PAIR_LOAD(table + 2 * k[3]));
        r4 = PAIR_ADD(r4, PAIR_LOAD(table + 2 * k[4]));
        r5 = PAIR_ADD(r5, PAIR_LOAD(table + 2 * k[5]));
        r6 = PAIR_ADD(r6, PAIR_LOAD(table + 2 * k[6]));
        r7 = PAIR_ADD(r7, PAIR_LOAD(table + 2 * k[7]));
    }
    pair_t res = PAIR_ADD(PAIR_ADD(PAIR_ADD(r0, r1), PAIR_ADD(r2, r3)), PAIR_ADD(PAIR_ADD(r4, r5), PAIR_ADD(r6, r7)));
    for (; i < n; i++) {
        res = PAIR_ADD(res, PAIR_LOAD(table + 2 * codes[i]));
    }
    return res;
}

static pair_t leaf_buffer(const double *buffer, Py_ssize_t n)
{
    PAIR_LEAF(IN_BUFFER);
}

/* What the metrics read: the row by its codes, F(ψ) on the ids (increasing) and eps elsewhere. */
struct against {
    const uint16_t *codes;
    const double *table; /* per code: min(p, eps), p (log p - log eps); the ids' terms at SPARE_CODE on if spare */
    const int64_t *ids;
    const double *on_ids; /* per id: min(p, q), p (log p - log q) */
    Py_ssize_t K, next;
    int spare;
    const int32_t *jmap; /* with work: each code's index in present (the spare slots' 0), p > 0 below n_pos */
    Py_ssize_t n_pos, w;
    double *work; /* NULL, or where the terms of p > 0 are written down in token order (w of them) */
};

#define SPARE_CODE 0x7C01u /* positive NaN codes (a row holding one is refused): table slots for the ids' terms */
#define SPARE_CODES 1023

/* The pairwise sums of both terms over tokens [lo, lo + n), NumPy's tree, the ids' terms put in place. */
static pair_t pairwise_terms(struct against *a, Py_ssize_t lo, Py_ssize_t n)
{
    if (n <= 128) {
        const uint16_t *leaf = a->codes + lo;
        uint16_t local[128];
        if (a->next < a->K && a->ids[a->next] < lo + n && a->spare) {
            /* the leaf's codes, an id's swapped for its slot: the same sums of the same terms */
            memcpy(local, leaf, (size_t)n * sizeof *local);
            while (a->next < a->K && a->ids[a->next] < lo + n) {
                local[a->ids[a->next] - lo] = (uint16_t)(SPARE_CODE + a->next);
                a->next++;
            }
            leaf = local;
        }
        if (a->next >= a->K || a->ids[a->next] >= lo + n) {
            if (a->work != NULL) { /* (the leaf's codes read again from L1) */
                Py_ssize_t w = a->w;
                for (Py_ssize_t i = 0; i < n; i++) {
                    a->work[w] = a->table[2 * leaf[i] + 1];
                    w += a->jmap[leaf[i]] < a->n_pos;
                }
                a->w = w;
            }
            return leaf_by_code(leaf, a->table, n);
        }
        double buffer[256];
        for (Py_ssize_t i = 0; i < n; i++) {
            memcpy(buffer + 2 * i, a->table + 2 * a->codes[lo + i], 16);
        }
        while (a->next < a->K && a->ids[a->next] < lo + n) {
            memcpy(buffer + 2 * (a->ids[a->next] - lo), a->on_ids + 2 * a->next, 16);
            a->next++;
        }
        return leaf_buffer(buffer, n);
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    pair_t left = pairwise_terms(a, lo, n2);
    pair_t right = pairwise_terms(a, lo + n2, n - n2);
    return PAIR_ADD(left, right);
}

struct id_term {
    int64_t id;
    double min, term;
};

static int by_id(const void *x, const void *y)
{
    int64_t a = ((const struct id_term *)x)->id, b = ((const struct id_term *)y)->id;
    return (a > b) - (a < b);
}

/* metrics' passes (below), the GIL released: 0, or -1 out of memory. */
static int metrics_core(const uint16_t *codes, Py_ssize_t V, const uint16_t *present, const double *p, Py_ssize_t n,
                        const double *logp, Py_ssize_t n_pos, Py_ssize_t positive, const int64_t *ids, Py_ssize_t K,
                        const double *q, const double *log_q, int32_t *jmap, double *table, double *on_ids,
                        double *work, double *overlap_out, double *ce_out)
{
    int full = positive == V;
    double eps = q[K], log_eps = log_q[K], overlap = 0.0, ce = 0.0;
    int infinite = 0, failed = 0;
    struct id_term *sorted = malloc((size_t)(K ? K : 1) * sizeof *sorted);
    if (sorted == NULL) {
        failed = 1;
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            jmap[present[j]] = (int32_t)j;
            table[2 * present[j]] = p[j] < eps ? p[j] : eps;
            table[2 * present[j] + 1] = j < n_pos ? p[j] * (logp[j] - log_eps) : 0.0;
        }
        for (Py_ssize_t i = 0; i < K; i++) {
            Py_ssize_t j = jmap[codes[ids[i]]];
            sorted[i].id = ids[i];
            sorted[i].min = p[j] < q[i] ? p[j] : q[i];
            sorted[i].term = j < n_pos ? p[j] * (logp[j] - log_q[i]) : 0.0;
            infinite |= j < n_pos && !(q[i] > 0);
        }
        infinite |= !(eps > 0) && positive > K; /* a token off the ids with p > 0 (ids all have p > 0) */
        if (K <= 256) { /* the few ids by token: an insertion sort */
            for (Py_ssize_t i = 1; i < K; i++) {
                struct id_term x = sorted[i];
                Py_ssize_t j = i;
                for (; j > 0 && sorted[j - 1].id > x.id; j--) {
                    sorted[j] = sorted[j - 1];
                }
                sorted[j] = x;
            }
        } else {
            qsort(sorted, (size_t)K, sizeof *sorted, by_id);
        }
        int64_t *id_list = malloc((size_t)(K ? K : 1) * sizeof *id_list);
        if (id_list == NULL) {
            failed = 1;
        } else {
            for (Py_ssize_t i = 0; i < K; i++) {
                id_list[i] = sorted[i].id;
                on_ids[2 * i] = sorted[i].min;
                on_ids[2 * i + 1] = sorted[i].term;
            }
            int spare = K <= SPARE_CODES, gap = !full && !infinite; /* gap: the terms over p > 0 only */
            struct against a = {codes, table, id_list, on_ids, K, 0, spare, jmap, n_pos, 0, spare && gap ? work : NULL};
            if (spare) {
                memcpy(table + 2 * SPARE_CODE, on_ids, (size_t)K * 16);
                for (Py_ssize_t i = 0; i < K; i++) {
                    jmap[SPARE_CODE + i] = 0; /* an id has p > 0 */
                }
            }
            double sums[2];
            PAIR_STORE(sums, pairwise_terms(&a, 0, V));
            overlap = sums[0];
            ce = sums[1];
            if (gap && spare) { /* written down in token order by the same pass */
                ce = pairwise_sum(work, a.w);
            } else if (gap) { /* written down in token order by a pass of their own */
                Py_ssize_t w = 0, next = 0;
                for (Py_ssize_t i = 0; i < V; i++) {
                    Py_ssize_t j = jmap[codes[i]];
                    if (next < K && id_list[next] == i) {
                        if (j < n_pos) {
                            work[w++] = on_ids[2 * next + 1];
                        }
                        next++;
                    } else if (j < n_pos) {
                        work[w++] = table[2 * codes[i] + 1];
                    }
                }
                ce = pairwise_sum(work, w);
            }
            free(id_list);
        }
        free(sorted);
    }
    if (infinite) {
        ce = HUGE_VAL;
    } else if (!(ce > 0)) {
        ce = 0.0;
    }
    *overlap_out = overlap;
    *ce_out = ce;
    return failed ? -1 : 0;
}

/* metrics(codes, present, p, logp, positive_tokens, ids (payload order), q: float64[k + 1] (eps last),
 * log_q: float64[k + 1], jmap: int32[65536], table: float64[2 * 65536], on_ids: float64[2k], work: float64[V or 1])
 * -> (overlap, ce): core.metrics' ``sum min(p, q)`` and ``sum over p > 0 of p (log p - log q)`` (inf where q <= 0
 * there, clamped at 0) on the dense q, in NumPy's summation order. */
static PyObject *metrics(PyObject *self, PyObject *args)
{
    Py_buffer b[11];
    Py_ssize_t positive;
    if (!PyArg_ParseTuple(args, "y*y*y*y*ny*y*y*w*w*w*w*", &b[0], &b[1], &b[2], &b[3], &positive, &b[4], &b[5],
                          &b[6], &b[7], &b[8], &b[9], &b[10])) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2, n_pos = b[3].len / 8, K = b[4].len / 8;
    int full = positive == V;
    if (b[0].len % 2 || b[2].len != n * 8 || n_pos > n || b[5].len != (K + 1) * 8 || b[6].len != (K + 1) * 8
        || b[7].len != CODES * 4 || b[8].len != CODES * 16 || b[9].len != K * 16 || b[10].len != (full ? 8 : V * 8)) {
        release(b, 11);
        return mismatch("metrics");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf, *logp = b[3].buf, *q = b[5].buf, *log_q = b[6].buf;
    const int64_t *ids = b[4].buf;
    int32_t *jmap = b[7].buf;
    double *table = b[8].buf, *on_ids = b[9].buf, *work = b[10].buf;
    double overlap = 0.0, ce = 0.0;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = metrics_core(codes, V, present, p, n, logp, n_pos, positive, ids, K, q, log_q, jmap, table, on_ids, work,
                          &overlap, &ce);
    Py_END_ALLOW_THREADS
    release(b, 11);
    if (failed) {
        return PyErr_NoMemory();
    }
    return Py_BuildValue("dd", overlap, ce);
}

/* libm(x: float64[n], out: float64[n] (written), log: bool): the C library's exp (or log) of each x, which
 * values_all and craft_all take where NumPy takes its own; the caller uses them only where NumPy's ufunc gives
 * these very bits (NumPy calls the C library's unless it has a vector loop for the machine). */
static PyObject *libm(PyObject *self, PyObject *args)
{
    Py_buffer b[2];
    int take_log;
    if (!PyArg_ParseTuple(args, "y*w*p", &b[0], &b[1], &take_log)) {
        return NULL;
    }
    Py_ssize_t n = b[0].len / 8;
    if (b[0].len % 8 || b[1].len != n * 8) {
        release(b, 2);
        return mismatch("libm");
    }
    const double *x = b[0].buf;
    double *out = b[1].buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = take_log ? log(x[i]) : exp(x[i]);
    }
    release(b, 2);
    Py_RETURN_NONE;
}

/* values_all(codes: uint16[V], seen: uint8[65536], present: uint16[65536], p: float64[65536], logp: float64[65536]
 * (written), table: float64[65536] (scratch), mark: uint8[65536], above: uint32[V] (written)) -> (n, n_pos,
 * positive, m, edge), or None for a row holding NaN or +inf or only -inf: scan_present, the C library's exp of d,
 * softmax_present and its log of the positive p, in one call (where they are NumPy's: `libm`). */
static PyObject *values_all(PyObject *self, PyObject *args)
{
    Py_buffer b[8];
    if (!PyArg_ParseTuple(args, "y*w*w*w*w*w*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6], &b[7])) {
        return NULL;
    }
    if (b[0].len % 2 || b[0].len == 0 || b[1].len != CODES || b[2].len != CODES * 2 || b[3].len != CODES * 8
        || b[4].len != CODES * 8 || b[5].len != CODES * 8 || b[6].len != CODES || b[7].len != b[0].len * 2) {
        release(b, 8);
        return mismatch("values_all");
    }
    const uint16_t *codes = b[0].buf;
    uint16_t *present = b[2].buf;
    double *p = b[3].buf, *logp = b[4].buf, *table = b[5].buf;
    Py_ssize_t V = b[0].len / 2, n, n_pos = 0, positive = 0, m;
    unsigned edge;
    Py_BEGIN_ALLOW_THREADS
    n = scan_core(codes, V, b[1].buf, present, logp, b[7].buf, &m, &edge); /* d, in logp for now */
    if (n >= 0) {
        for (Py_ssize_t j = 0; j < n; j++) {
            logp[j] = exp(logp[j]);
        }
        softmax_core(codes, V, present, logp, n, table, p, b[6].buf, &n_pos, &positive);
        for (Py_ssize_t j = 0; j < n_pos; j++) {
            logp[j] = log(p[j]);
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    if (n < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("nnnnI", n, n_pos, positive, m, edge);
}

/* craft_all(codes, present, p, logp, positive, k, tau32, eps (NaN: auto), jmap, count, chosen, order, ids, top,
 * body, d: as craft's; q: float64[k + 1], log_q: float64[k + 1], table: float64[2 * 65536], on_ids: float64[2k],
 * work: float64[V or 1]: as metrics'; sparse, edge: as craft's) -> (eps32, delta, topk, overlap, ce) or None:
 * craft, then F(ψ) from the
 * C library's exp of d (explicit_q) and the metrics against it with its log of q, in one call (where they are
 * NumPy's: `libm`). */
static PyObject *craft_all(PyObject *self, PyObject *args)
{
    Py_buffer b[18];
    Py_ssize_t positive, k;
    double tau, eps_in;
    unsigned edge;
    struct sparse_top sparse;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnddw*w*w*w*w*w*w*w*w*w*w*w*w*y*I", &b[0], &b[1], &b[2], &b[3], &positive, &k,
                          &tau, &eps_in, &b[4], &b[5], &b[6], &b[7], &b[8], &b[9], &b[10], &b[11], &b[12], &b[13],
                          &b[14], &b[15], &b[16], &b[17], &edge)) {
        return NULL;
    }
    Py_ssize_t V = b[0].len / 2, n = b[1].len / 2, n_pos = b[3].len / 8;
    Py_ssize_t body_len = 24 + k * (V > 65536 ? 5 : 3);
    if (b[0].len % 2 || b[2].len != n * 8 || b[3].len % 8 || n_pos < 1 || n_pos > n || k < 1 || k > V
        || b[4].len != CODES * 4 || b[5].len != CODES * 16 || b[6].len != V * 4 || b[7].len != V * 4
        || b[8].len != k * 8 || b[9].len != k * 8 || b[10].len != body_len || b[11].len != k * 8
        || b[12].len != (k + 1) * 8 || b[13].len != (k + 1) * 8 || b[14].len != CODES * 16 || b[15].len != k * 16
        || b[16].len != (positive == V ? 8 : V * 8) || !sparse_of(&b[17], edge, V, &sparse)) {
        release(b, 18);
        return mismatch("craft_all");
    }
    const uint16_t *codes = b[0].buf, *present = b[1].buf;
    const double *p = b[2].buf, *logp = b[3].buf;
    int64_t *ids = b[8].buf;
    double *d = b[11].buf, *q = b[12].buf, *log_q = b[13].buf;
    double eps32 = 0.0, delta = 0.0, topk = 0.0, overlap = 0.0, ce = 0.0;
    int ok, failed = 0;
    Py_BEGIN_ALLOW_THREADS
    ok = craft_core(codes, V, present, p, n, logp, k, tau, eps_in, b[4].buf, b[5].buf, b[6].buf, b[7].buf, ids,
                    b[9].buf, b[10].buf, d, sparse, &eps32, &delta, &topk);
    if (ok) {
        for (Py_ssize_t i = 0; i < k; i++) {
            d[i] = exp(d[i]);
        }
        explicit_core(d, k, V, eps32, q);
        for (Py_ssize_t i = 0; i <= k; i++) {
            log_q[i] = log(q[i]);
        }
        failed = metrics_core(codes, V, present, p, n, logp, n_pos, positive, ids, k, q, log_q, b[4].buf, b[14].buf,
                              b[15].buf, b[16].buf, &overlap, &ce);
    }
    Py_END_ALLOW_THREADS
    release(b, 18);
    if (failed) {
        return PyErr_NoMemory();
    }
    if (!ok) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("ddddd", eps32, delta, topk, overlap, ce);
}

static PyMethodDef methods[] = {
    {"libm", libm, METH_VARARGS, "the C library's exp or log of each value"},
    {"values_all", values_all, METH_VARARGS, "scan_present, exp, softmax_present and log in one call"},
    {"craft_all", craft_all, METH_VARARGS, "craft, explicit_q with exp, and metrics with log in one call"},
    {"scan_present", scan_present, METH_VARARGS, "the row's distinct codes by decreasing value, and value - max"},
    {"holds", holds, METH_VARARGS, "whether every code of a row is one of its present codes"},
    {"softmax_present", softmax_present, METH_VARARGS, "p per distinct code: e / (NumPy's pairwise sum of e)"},
    {"dense", dense, METH_VARARGS, "the row's p token by token"},
    {"add_to", add_to, METH_VARARGS, "out += the row's p token by token"},
    {"p_at", p_at, METH_VARARGS, "the row's p at some tokens"},
    {"residual", residual, METH_VARARGS, "the tokens of p > q and the running sum of the residual there"},
    {"top_tokens", top_tokens, METH_VARARGS, "the increasing tokens of the k largest p and all tied with the k-th"},
    {"craft", craft, METH_VARARGS, "ψ's ids, codes, eps, delta and wire body from the row's top support"},
    {"explicit_q", explicit_q, METH_VARARGS, "F(ψ) on the ids from exp of the logits"},
    {"metrics", metrics, METH_VARARGS, "(overlap, ce gap) of p against q = eps off the ids"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trace_rows", NULL, -1, methods};

PyMODINIT_FUNC PyInit__trace_rows(void)
{
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    cpu_avx2 = __builtin_cpu_supports("avx2") && getenv("THERMOSPEC_NO_AVX2") == NULL;
#endif
    return PyModule_Create(&module);
}
