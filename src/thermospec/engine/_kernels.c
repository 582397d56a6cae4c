/*
 * Compiled inner loops of the speculative bigram chain (thermospec._kernels); the chain on
 * compact tables (thermospec.compact) is compact_chain, at the end.
 *
 * Exactly the step of thermospec.engine.run_chain_reference, on per-context
 * tables laid out by thermospec.kernels.TableCache:
 *
 *   tables[slot] = [draft_cdf (V) | ratio (V) | residual_cdf (V)]  float64
 *   totals[slot] = [draft_cdf[V-1], residual_cdf[V-1]]             float64
 *   lasts[slot]  = [last positive index of each cdf]                int64
 *   slot_of[x]   = slot holding context x, or -1
 *   guides[slot] = [draft guide (G + 1) | residual guide (G + 1)]   int32
 *
 * One step (step_rule, the one writing of the rule for both layouts) with uniforms
 * (u_draft, u_accept, u_residual):
 *   y = min(bisect_right(draft_cdf, u_draft * total), last)
 *   accept iff u_accept < ratio[y] (strict), else
 *   x = min(bisect_right(residual_cdf, u_residual * total), last)
 *
 * The uniforms are read from an array, or drawn here from a NumPy PCG64 state
 * (pcg_uniform: the same doubles as Generator.random, in the same order).  A run that keeps
 * only counts (no telemetry) with every context's tables loaded steps in plain_loop: no step
 * array, no slot look-up, fewer counts per step (the rest follow from them).
 * bisect_right and the products are the same IEEE double operations as the
 * Python path (built without FMA contraction), so both emit the same tokens.
 * No NumPy headers: arrays arrive through the buffer protocol, shapes are
 * checked by the Python wrapper, and sizes are re-checked here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "_draft_slots.h"

#ifndef GROUP
#define GROUP 8
#endif

#if defined(__GNUC__)
#define LIKELY(c) __builtin_expect(!!(c), 1)
#define INLINE static inline __attribute__((always_inline))
#define NOINLINE static __attribute__((noinline))
#else
#define LIKELY(c) (c)
#define INLINE static inline
#define NOINLINE static
#endif

/* The wheel runs on any x86-64, so the extension is built for the baseline ISA; the hottest loop also
 * gets a copy compiled for AVX2 + BMI2 (VEX encodings, mulx/rorx: ~5 % of the M1 loop), chosen at run
 * time when the CPU has them (__builtin_cpu_supports).  Same operations, same rounding (no FMA: the
 * build's -ffp-contract=off holds for every copy). */
#if defined(__x86_64__) && defined(__GNUC__)
#define X86_CLONES 1
#define AVX2_BMI2 __attribute__((target("avx2,bmi2")))
#else
#define X86_CLONES 0
#endif

/* NumPy's PCG64 (PCG XSL RR 128/64) and Generator.random's double: (next64 >> 11) * 2^-53.
 * A state is four uint64: [state high, state low, increment high, increment low]. */
#if defined(__SIZEOF_INT128__)
#define HAVE_PCG64 1
typedef unsigned __int128 pcg128;
#define PCG_MULT (((pcg128)0x2360ED051FC65DA4ULL << 64) | 0x4385DF649FCCF645ULL)

INLINE double pcg_uniform(pcg128 *state, pcg128 inc)
{
    pcg128 s = *state * PCG_MULT + inc;
    *state = s;
    uint64_t v = (uint64_t)(s >> 64) ^ (uint64_t)s;
    unsigned r = (unsigned)(s >> 122);
    v = (v >> r) | (v << ((64 - r) & 63));
    return (double)(int64_t)(v >> 11) * (1.0 / 9007199254740992.0);
}

static inline pcg128 pcg_join(uint64_t hi, uint64_t lo) { return ((pcg128)hi << 64) | lo; }
#else
#define HAVE_PCG64 0
#endif

INLINE int64_t bisect_right(const double *cdf, int64_t n, double target)
{
    /* First index i with cdf[i] > target (n if none): the answer stays in [i, i + n]; each round
     * keeps the half that holds it, by a mask rather than a branch (the compilers keep it so):
     * for tables in cache, a mispredicted round costs more than the probe. */
    int64_t i = 0;
    while (n > 1) {
        int64_t half = n >> 1;
        i += half & -(int64_t)(cdf[i + half - 1] <= target);
        n -= half;
    }
    return i + (n == 1 && cdf[i] <= target);
}

INLINE int64_t bisect_right_far(const double *cdf, int64_t n, double target)
{
    /* The same index, with a branch per round (the compilers emit one for this select): for tables
     * far in memory (compact tables at large V), a predicted branch lets the CPU issue the next
     * rounds' loads before this one's returns, which measured faster there (and slower in cache). */
    const double *base = cdf;
    while (n > 1) {
        int64_t half = n >> 1;
        base = (base[half - 1] <= target) ? base + half : base;
        n -= half;
    }
    return (int64_t)(base - cdf) + (n == 1 && base[0] <= target);
}

/* bisect_right(cdf, u * total) for u in [0, 1), started from a guide table:
 * guide[k] = bisect_right(cdf, (k / G) * total) for k = 0..G (G a power of two).
 * With k = floor(u G), k / G <= u < (k + 1) / G holds exactly, and rounding is
 * monotone, so the answer lies in [guide[k], guide[k + 1]]: the same index as a
 * full search, in O(1) expected probes. */
INLINE int64_t guided(const double *cdf, const int32_t *guide, int64_t G, double u, double total)
{
    int64_t k = (int64_t)(u * (double)G);
    int64_t lo = guide[k];
    return lo + bisect_right(cdf + lo, (int64_t)guide[k + 1] - lo, u * total);
}

/* guided, clamped to `last` (the last token of positive weight, which a draw at u * total rounded up to
 * the total would pass): the same index.  When the bucket brackets no search (guide[k + 1] == guide[k],
 * most draws at the finer guides), its guide entry is the answer; the branch is predicted, so the
 * draw waits for the guide alone, not for a search and a clamp. */
INLINE int64_t guided_last(const double *cdf, const int32_t *guide, int64_t G, double u, double total,
                           int64_t last)
{
    const int64_t k = (int64_t)(u * (double)G);
    const int64_t lo = guide[k], n = (int64_t)guide[k + 1] - lo;
    if (LIKELY(n == 0 && lo <= last))
        return lo;
    const int64_t y = lo + bisect_right(cdf + lo, n, u * total);
    return y > last ? last : y;
}

/* The step rule, written once for every table layout (thermospec.engine.step.step_tokens):
 *   y = draft(u_draft); accept iff u_accept < ratio(y) (strict), else emit residual(u_residual).
 * A layout is a view of one context's tables and its three draws; each caller passes constant
 * functions, which the compiler inlines here (no call through a pointer is left). */
typedef struct {
    int64_t (*draft)(void *view, double u);
    double (*ratio)(void *view, int64_t y);
    int64_t (*residual)(void *view, double u);
} Layout;

INLINE int64_t step_rule(const Layout layout, void *view, double u0, double u1, double u2, int64_t *proposed,
                         int64_t *accepted)
{
    int64_t y = layout.draft(view, u0);
    *proposed = y;
    if (u1 < layout.ratio(view, y)) {
        *accepted = 1;
        return y;
    }
    *accepted = 0;
    return layout.residual(view, u2);
}

typedef struct {
    const double *tables, *totals;
    const int64_t *lasts, *slot_of;
    const int32_t *guides;
    int64_t V, G;
} Tables;

/* The lines a step in slot s of an order-N chain may read, all asked for at once (the rows of many
 * contexts are far apart in memory; the draft's search waits for its guide, the ratio and the move for
 * the draft, so fetching them now overlaps those misses): the two guide entries the step's uniforms
 * pick, the totals and lasts, the draft and ratio rows, and the state's move row. */
INLINE void prefetch_state(const Tables *tb, int64_t s, const int32_t *move_row, double u0, double u2)
{
#if defined(__GNUC__)
    const double *draft_row = tb->tables + s * 3 * tb->V;
    const int32_t *guide = tb->guides + s * 2 * (tb->G + 1);
    __builtin_prefetch(guide + (int64_t)(u0 * (double)tb->G));
    __builtin_prefetch(guide + tb->G + 1 + (int64_t)(u2 * (double)tb->G));
    __builtin_prefetch(tb->lasts + 2 * s);
    __builtin_prefetch(tb->totals + 2 * s);
    for (int64_t k = 0; k < 2 * tb->V; k += 8)
        __builtin_prefetch(draft_row + k);
    for (int64_t k = 0; k < tb->V; k += 16)
        __builtin_prefetch(move_row + k);
#else
    (void)tb; (void)s; (void)move_row; (void)u0; (void)u2;
#endif
}

/* The dense layout: one context's row of Tables. */
typedef struct {
    const double *row, *total;
    const int32_t *guide;
    const int64_t *last;
    int64_t V, G;
} DenseView;

INLINE int64_t dense_draft(void *view, double u)
{
    const DenseView *d = view;
    return guided_last(d->row, d->guide, d->G, u, d->total[0], d->last[0]);
}

INLINE double dense_ratio(void *view, int64_t y)
{
    const DenseView *d = view;
    return d->row[d->V + y];
}

INLINE int64_t dense_residual(void *view, double u)
{
    const DenseView *d = view;
    return guided_last(d->row + 2 * d->V, d->guide + d->G + 1, d->G, u, d->total[1], d->last[1]);
}

/* One step from the context in slot s with uniforms (u0, u1, u2); returns the emitted token. */
INLINE int64_t step(const Tables *tb, int64_t s, double u0, double u1, double u2, int64_t *proposed,
                    int64_t *accepted)
{
    const int64_t V = tb->V, G = tb->G;
    DenseView view = {tb->tables + s * 3 * V, tb->totals + 2 * s, tb->guides + s * 2 * (G + 1), tb->lasts + 2 * s,
                      V, G};
    const Layout dense = {dense_draft, dense_ratio, dense_residual};
    return step_rule(dense, &view, u0, u1, u2, proposed, accepted);
}

static int need(Py_buffer *b, Py_ssize_t items, Py_ssize_t itemsize, const char *name)
{
    if (b->len < items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: buffer too small (%zd bytes, need %zd)", name, b->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

/* An optional writable buffer argument: None leaves it empty (buf NULL); returns 0 on error. */
static int optional(PyObject *obj, Py_buffer *b)
{
    if (obj == Py_None)
        return 1;
    return PyObject_GetBuffer(obj, b, PyBUF_WRITABLE) == 0;
}

static int parse_tables(Py_buffer *tb, Py_buffer *tot, Py_buffer *la, Py_buffer *so, Py_buffer *gb, int64_t V,
                        int64_t G, Tables *out, Py_ssize_t *slots)
{
    *slots = tot->len / (Py_ssize_t)(2 * sizeof(double));
    if (V < 1 || G < 1 || (G & (G - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "V must be >= 1 and G a power of two");
        return 0;
    }
    if (!(need(tb, *slots * 3 * V, 8, "tables") && need(la, *slots * 2, 8, "lasts") && need(so, V, 8, "slot_of") &&
          need(gb, *slots * 2 * (G + 1), 4, "guides")))
        return 0;
    out->tables = tb->buf;
    out->totals = tot->buf;
    out->lasts = la->buf;
    out->slot_of = so->buf;
    out->guides = gb->buf;
    out->V = V;
    out->G = G;
    return 1;
}

/* What the sequential loop writes besides the step arrays. */
typedef struct {
    int64_t *last_used, *contexts, *emitted, *transitions;
    int64_t accepted;
} Counts;

/* Steps t0..n-1 of one chain from context *x; stops early at a context without a table (returns t).
 * `drawn`: the uniforms come from the PCG64 state at rng (else from u, three per step); `identity`:
 * context x's table is in slot x whenever it is loaded (slot_of only says whether it is), so the
 * next step's tables do not wait for a slot_of load, and no slot is ever evicted, so last_used is not
 * stamped (a store per step, 3-5 % of the loop); `counting`: add each step to the counts.
 * `moves` (with `moving`): the next context is moves[x * V + emitted] (a key in [0, keys); order-N
 * contexts), not the emitted token; a move out of range stops the loop and sets *bad. */
/* Always inlined: each caller passes constant flags, and every combination must be its own loop. */
INLINE int64_t chain_loop(const Tables *tables, Py_ssize_t slots, const double *restrict u,
                                 uint64_t *restrict rng, int64_t *restrict prev, int64_t *restrict proposed,
                                 int64_t *restrict emitted, uint8_t *restrict accepted, Counts *restrict c,
                                 int64_t t0, int64_t n, int64_t *x, int64_t clock, const int drawn,
                                 const int identity, const int counting, const int32_t *restrict moves,
                                 const int64_t keys, const int moving, int *bad)
{
    const Tables tb = *tables;
    const int64_t *restrict slot_of = tb.slot_of;
    int64_t *restrict last_used = c->last_used, *restrict ctx = c->contexts, *restrict emi = c->emitted;
    int64_t *restrict trans = c->transitions;
    const int64_t V = tb.V;
    int64_t cx = *x, t = t0, ok = 0;
#if HAVE_PCG64
    pcg128 state = 0, inc = 0;
    if (drawn) {
        state = pcg_join(rng[0], rng[1]);
        inc = pcg_join(rng[2], rng[3]);
    }
#else
    (void)rng;
#endif
    for (; t < n; ++t) {
        int64_t s = slot_of[cx];
        if (!LIKELY(s >= 0 && s < slots))
            break;
        if (identity)
            s = cx;
        double u0, u1, u2;
#if HAVE_PCG64
        if (drawn) {
            u0 = pcg_uniform(&state, inc);
            u1 = pcg_uniform(&state, inc);
            u2 = pcg_uniform(&state, inc);
        } else
#endif
        {
            u0 = u[3 * t];
            u1 = u[3 * t + 1];
            u2 = u[3 * t + 2];
        }
        if (moving) /* many contexts: their rows are far in memory (prefetch_state) */
            prefetch_state(&tb, s, moves + cx * V, u0, u2);
        if (!identity) /* only an evicting cache reads the stamps (each context has its own slot otherwise) */
            last_used[s] = clock + t;
        prev[t] = cx;
        int64_t a;
        int64_t nx = step(&tb, s, u0, u1, u2, proposed + t, &a);
        accepted[t] = (uint8_t)a;
        emitted[t] = nx;
        if (counting) {
            ok += a;
            ctx[cx] += 1;
            emi[nx] += 1;
            if (trans)
                trans[cx * V + nx] += 1;
        }
        if (moving) {
            int64_t key = moves[cx * V + nx];
            if (!LIKELY(key >= 0 && key < keys)) {
                *bad = 1;
                ++t;
                break;
            }
            cx = key;
        } else
            cx = nx;
    }
#if HAVE_PCG64
    if (drawn) {
        rng[0] = (uint64_t)(state >> 64);
        rng[1] = (uint64_t)state;
    }
#endif
    c->accepted += ok;
    *x = cx;
    return t;
}

/* Whether every context 0..keys-1 is loaded in its own slot (slot_of[x] == x). */
static int all_in_place(const int64_t *slot_of, int64_t keys)
{
    int64_t x = 0;
    while (x < keys && slot_of[x] == x)
        ++x;
    return x == keys;
}

/* How the plain loop counts: the emitted tokens (the contexts follow from them); the emitted tokens and
 * the (context, emitted) pairs; or the pairs alone (both others follow from them). */
enum { COUNT_EMITTED, COUNT_BOTH, COUNT_PAIRS };

#if HAVE_PCG64
/* n steps of one chain from context *x, its uniforms drawn from *state (advanced), nothing recorded: returns
 * the accepted drafts; by `how`, each step adds to emi[y] and/or trans[x * V + y]. */
INLINE int64_t plain_steps(const Tables *tb, pcg128 *state, const pcg128 inc, int64_t *x, int64_t n,
                           int64_t *restrict emi, int64_t *restrict trans, const int how)
{
    const int64_t V = tb->V;
    pcg128 s = *state;
    int64_t cx = *x, ok = 0;
    for (int64_t t = 0; t < n; ++t) {
        const double u0 = pcg_uniform(&s, inc), u1 = pcg_uniform(&s, inc), u2 = pcg_uniform(&s, inc);
        int64_t y, a;
        const int64_t nx = step(tb, cx, u0, u1, u2, &y, &a);
        ok += a;
        if (how != COUNT_PAIRS)
            emi[nx] += 1;
        if (how != COUNT_EMITTED)
            trans[cx * V + nx] += 1;
        cx = nx;
    }
    *state = s;
    *x = cx;
    return ok;
}
#endif

/* Steps 0..n-1 of one chain from context *x when only the counts are kept (run --telemetry none): every
 * context in its own slot (all_in_place, so no look-up or stop per step), the uniforms drawn from the
 * PCG64 state rng, no step array written.  Each step adds to the accepted count and, by `how`, to
 * emitted[y] and/or transitions[x * V + y].  The counts not kept per step follow from the kept ones over
 * the call: a chain's contexts are its start and its emitted tokens but the last, and the pairs' row and
 * column sums are the contexts and the emitted tokens.  So contexts - emitted changes only at the start and
 * the end (two passes over V), and with the pairs alone the sums are taken before and after (two passes
 * over V x V, for small V only). */
INLINE void plain_body(const Tables *tables, uint64_t *restrict rng, Counts *restrict c, int64_t n, int64_t *x,
                       const int how)
{
#if HAVE_PCG64
    const Tables tb = *tables;
    const int64_t V = tb.V;
    int64_t *restrict ctx = c->contexts, *restrict emi = c->emitted, *restrict trans = c->transitions;
    const int64_t x0 = *x;
    int64_t cx = x0;
    pcg128 state = pcg_join(rng[0], rng[1]);
    const pcg128 inc = pcg_join(rng[2], rng[3]);
    if (how == COUNT_PAIRS)
        for (int64_t a = 0; a < V; ++a)
            for (int64_t b = 0; b < V; ++b) {
                ctx[a] -= trans[a * V + b];
                emi[b] -= trans[a * V + b];
            }
    else
        for (int64_t v = 0; v < V; ++v)
            ctx[v] -= emi[v];
    c->accepted += plain_steps(&tb, &state, inc, &cx, n, emi, trans, how);
    if (how == COUNT_PAIRS)
        for (int64_t a = 0; a < V; ++a)
            for (int64_t b = 0; b < V; ++b) {
                ctx[a] += trans[a * V + b];
                emi[b] += trans[a * V + b];
            }
    else {
        for (int64_t v = 0; v < V; ++v)
            ctx[v] += emi[v];
        ctx[x0] += 1;
        ctx[cx] -= 1;
    }
    rng[0] = (uint64_t)(state >> 64);
    rng[1] = (uint64_t)state;
    *x = cx;
#else
    (void)tables; (void)rng; (void)c; (void)n; (void)x; (void)how;
#endif
}

/* Chains b0..b1-1 of a batch, one after the other, n steps each, nothing recorded (run --chains B
 * --telemetry none): chain b from context xs[b] with the PCG64 state rng[4 b .. 4 b + 3] (both advanced),
 * adding its accepted drafts to acc[b] and, by `how`, its tokens to emi[b * V + y] and/or the pairs to
 * trans (shared by the caller's chains). */
INLINE void plain_batch_body(const Tables *tables, uint64_t *restrict rng, int64_t *restrict xs,
                             int64_t *restrict acc, int64_t *restrict emi, int64_t *restrict trans, int64_t b0,
                             int64_t b1, int64_t n, const int how)
{
#if HAVE_PCG64
    const Tables tb = *tables;
    for (int64_t b = b0; b < b1; ++b) {
        pcg128 state = pcg_join(rng[4 * b], rng[4 * b + 1]);
        const pcg128 inc = pcg_join(rng[4 * b + 2], rng[4 * b + 3]);
        acc[b] += plain_steps(&tb, &state, inc, xs + b, n, how == COUNT_PAIRS ? NULL : emi + b * tb.V, trans, how);
        rng[4 * b] = (uint64_t)(state >> 64);
        rng[4 * b + 1] = (uint64_t)state;
    }
#else
    (void)tables; (void)rng; (void)xs; (void)acc; (void)emi; (void)trans; (void)b0; (void)b1; (void)n; (void)how;
#endif
}

/* n steps of one order-N chain from state *x over the move table `moves` (keys x V), nothing recorded (run
 * --order N --telemetry none): every state in its own slot, the uniforms drawn from the PCG64 state rng
 * (advanced); each step adds one to the accepted count *acc when its draft is accepted and one to
 * pairs[state * V + emitted].  Returns the steps run: fewer than n when a move leads out of [0, keys)
 * (then *bad is set). */
INLINE int64_t moving_body(const Tables *tables, uint64_t *restrict rng, const int32_t *restrict moves,
                           int64_t keys, int64_t *restrict pairs, int64_t *restrict acc, int64_t n, int64_t *x,
                           int *bad)
{
    int64_t t = 0;
#if HAVE_PCG64
    const Tables tb = *tables;
    const int64_t V = tb.V;
    int64_t cx = *x, ok = 0;
    pcg128 state = pcg_join(rng[0], rng[1]);
    const pcg128 inc = pcg_join(rng[2], rng[3]);
    for (; t < n; ++t) {
        const double u0 = pcg_uniform(&state, inc), u1 = pcg_uniform(&state, inc), u2 = pcg_uniform(&state, inc);
        prefetch_state(&tb, cx, moves + cx * V, u0, u2);
        int64_t y, a;
        const int64_t nx = step(&tb, cx, u0, u1, u2, &y, &a);
        ok += a;
        pairs[cx * V + nx] += 1;
        const int64_t key = moves[cx * V + nx];
        if (!LIKELY(key >= 0 && key < keys)) {
            *bad = 1;
            ++t;
            break;
        }
        cx = key;
    }
    rng[0] = (uint64_t)(state >> 64);
    rng[1] = (uint64_t)state;
    *acc += ok;
    *x = cx;
#else
    (void)tables; (void)rng; (void)moves; (void)keys; (void)pairs; (void)acc; (void)n; (void)x; (void)bad;
#endif
    return t;
}

/* One function per ISA, out of line: the loops get the registers to themselves. */
#define PLAIN_LOOPS(suffix, attributes)                                                                   \
    NOINLINE attributes void plain_loop##suffix(const Tables *tables, uint64_t *rng, Counts *c, int64_t n,  \
                                                int64_t *x, int how)                                      \
    {                                                                                                     \
        if (how == COUNT_PAIRS)                                                                           \
            plain_body(tables, rng, c, n, x, COUNT_PAIRS);                                                \
        else if (how == COUNT_BOTH)                                                                       \
            plain_body(tables, rng, c, n, x, COUNT_BOTH);                                                 \
        else                                                                                              \
            plain_body(tables, rng, c, n, x, COUNT_EMITTED);                                              \
    }                                                                                                     \
    NOINLINE attributes void plain_batch##suffix(const Tables *tables, uint64_t *rng, int64_t *xs, int64_t *acc, \
                                                 int64_t *emi, int64_t *trans, int64_t b0, int64_t b1,        \
                                                 int64_t n, int how)                                          \
    {                                                                                                     \
        if (how == COUNT_PAIRS)                                                                           \
            plain_batch_body(tables, rng, xs, acc, emi, trans, b0, b1, n, COUNT_PAIRS);                   \
        else if (how == COUNT_BOTH)                                                                       \
            plain_batch_body(tables, rng, xs, acc, emi, trans, b0, b1, n, COUNT_BOTH);                    \
        else                                                                                              \
            plain_batch_body(tables, rng, xs, acc, emi, trans, b0, b1, n, COUNT_EMITTED);                 \
    }                                                                                                     \
    NOINLINE attributes int64_t plain_moving##suffix(const Tables *tables, uint64_t *rng, const int32_t *moves, \
                                                     int64_t keys, int64_t *pairs, int64_t *acc, int64_t n,  \
                                                     int64_t *x, int *bad)                                   \
    {                                                                                                     \
        return moving_body(tables, rng, moves, keys, pairs, acc, n, x, bad);                              \
    }
PLAIN_LOOPS(, )
#if X86_CLONES
PLAIN_LOOPS(_avx2, AVX2_BMI2)
#endif
#undef PLAIN_LOOPS

static int baseline_only = 0; /* set by isa("baseline"): the tests run both copies */

static int has_avx2_bmi2(void)
{
#if X86_CLONES
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
    }
    return known && !baseline_only;
#else
    return 0;
#endif
}

/* isa([choice]) -> str: the instruction set the plain loop runs on ("avx2,bmi2" or "baseline"); choice
 * "baseline" keeps it on the baseline copy, "auto" (the default) lets the CPU choose. */
static PyObject *isa(PyObject *self, PyObject *args)
{
    const char *choice = NULL;
    if (!PyArg_ParseTuple(args, "|s", &choice))
        return NULL;
    if (choice != NULL) {
        if (strcmp(choice, "baseline") != 0 && strcmp(choice, "auto") != 0) {
            PyErr_SetString(PyExc_ValueError, "isa: 'baseline' or 'auto'");
            return NULL;
        }
        baseline_only = strcmp(choice, "baseline") == 0;
    }
    return PyUnicode_FromString(has_avx2_bmi2() ? "avx2,bmi2" : "baseline");
}

/* The plain loop for n steps (see plain_body); the contexts' pairs alone are counted when the two passes
 * over V x V cost less than a quarter of a count per step. */
static void plain_chain(const Tables *tables, uint64_t *rng, Counts *c, int64_t n, int64_t *x)
{
    const int64_t V = tables->V;
    const int how = !c->transitions ? COUNT_EMITTED : (4 * V * V <= n ? COUNT_PAIRS : COUNT_BOTH);
#if X86_CLONES
    if (has_avx2_bmi2()) {
        plain_loop_avx2(tables, rng, c, n, x, how);
        return;
    }
#endif
    plain_loop(tables, rng, c, n, x, how);
}

/* plain_batch_body on the copy the CPU runs best (the batch's `emi` per chain, or NULL; `trans` or NULL). */
static void plain_batch_chains(const Tables *tables, uint64_t *rng, int64_t *xs, int64_t *acc, int64_t *emi,
                               int64_t *trans, int64_t b0, int64_t b1, int64_t n)
{
    const int how = !trans ? COUNT_EMITTED : (emi ? COUNT_BOTH : COUNT_PAIRS);
#if X86_CLONES
    if (has_avx2_bmi2()) {
        plain_batch_avx2(tables, rng, xs, acc, emi, trans, b0, b1, n, how);
        return;
    }
#endif
    plain_batch(tables, rng, xs, acc, emi, trans, b0, b1, n, how);
}

/* moving_body on the copy the CPU runs best. */
static int64_t plain_moving_chain(const Tables *tables, uint64_t *rng, const int32_t *moves, int64_t keys,
                                  int64_t *pairs, int64_t *acc, int64_t n, int64_t *x, int *bad)
{
#if X86_CLONES
    if (has_avx2_bmi2())
        return plain_moving_avx2(tables, rng, moves, keys, pairs, acc, n, x, bad);
#endif
    return plain_moving(tables, rng, moves, keys, pairs, acc, n, x, bad);
}

/* chain(tables, totals, lasts, slot_of, guides, last_used, u, prev, proposed, emitted, accepted,
 *       V, G, start, n, x, clock [, rng, counts, identity, moves, record]) -> (t, x)
 * Runs steps start..n-1 of a chunk; stops early (t < n) at a context without a table.
 * rng (uint64[4], a PCG64 state, advanced in place) or None: the uniforms are drawn from it and
 * u may be empty; else u holds three per step.  counts: None, or (accepted (int64[1]), contexts (V),
 * emitted (V), transitions (V x V, or None)), distinct int64 arrays each step is added to (none of
 * them an output: the loop's pointers are restrict).  identity: every loaded context x is in slot x.
 * moves: None, or an int32 move table (keys x V): the next context is moves[x * V + emitted].
 * record (default True): False writes no step array (prev .. accepted may then be empty) and needs rng,
 * counts, no move table and every context in its own slot; then the plain loop runs (plain_chain). */
static PyObject *chain(PyObject *self, PyObject *args)
{
    Py_buffer tb, tot, la, so, gb, lu, ub, pb, yb, eb, ab;
    Py_buffer rb = {0}, acb = {0}, cb = {0}, emb = {0}, trb = {0};
    Py_ssize_t V, G, start, n, x, clock;
    Py_buffer mb = {0};
    PyObject *rng = Py_None, *counts = Py_None, *moves = Py_None;
    int identity = 0, record = 1;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*y*w*w*w*w*nnnnnn|OOpOp", &tb, &tot, &la, &so, &gb, &lu, &ub, &pb, &yb,
                          &eb, &ab, &V, &G, &start, &n, &x, &clock, &rng, &counts, &identity, &moves, &record))
        return NULL;
    PyObject *result = NULL;
    PyObject *ca = Py_None, *cc = Py_None, *ce = Py_None, *ct = Py_None;
    Tables tables;
    Py_ssize_t slots, keys = V;
    const int drawn = rng != Py_None, counting = counts != Py_None, moving = moves != Py_None;
    if (moving && (counting || PyObject_GetBuffer(moves, &mb, PyBUF_SIMPLE) < 0)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "chain: counts are over tokens; not with a move table");
        goto done;
    }
    if (moving) {
        keys = V > 0 ? mb.len / (Py_ssize_t)(4 * V) : 0;
        if (!need(&so, keys, 8, "slot_of"))
            goto done;
    }
    if (drawn && !HAVE_PCG64) {
        PyErr_SetString(PyExc_NotImplementedError, "chain: built without 128-bit integers (no PCG64)");
        goto done;
    }
    if (counting && !PyArg_ParseTuple(counts, "OOOO;counts: (accepted, contexts, emitted, transitions)", &ca, &cc,
                                      &ce, &ct))
        goto done;
    if (!(optional(rng, &rb) && (!counting || (optional(ca, &acb) && optional(cc, &cb) && optional(ce, &emb) &&
                                               optional(ct, &trb)))))
        goto done;
    if (!(parse_tables(&tb, &tot, &la, &so, &gb, V, G, &tables, &slots) && need(&lu, slots, 8, "last_used") &&
          (drawn ? need(&rb, 4, 8, "rng") : need(&ub, n * 3, 8, "u")) && need(&pb, record ? n : 0, 8, "prev") &&
          need(&yb, record ? n : 0, 8, "proposed") && need(&eb, record ? n : 0, 8, "emitted") &&
          need(&ab, record ? n : 0, 1, "accepted")))
        goto done;
    if (counting && !(acb.buf && cb.buf && emb.buf && need(&acb, 1, 8, "accepted count") &&
                      need(&cb, V, 8, "contexts") && need(&emb, V, 8, "emitted counts") &&
                      (!trb.buf || need(&trb, V * V, 8, "transitions")))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "chain: the accepted, context and emitted counts are required");
        goto done;
    }
    if (x < 0 || x >= keys || start < 0 || start > n || (identity && slots < keys)) {
        PyErr_SetString(PyExc_ValueError, "chain: context or start out of range");
        goto done;
    }
    if (!record && !(drawn && counting && !moving && identity && all_in_place(tables.slot_of, keys))) {
        PyErr_SetString(PyExc_ValueError, "chain: record=False needs rng, counts and every context in its own slot");
        goto done;
    }
    {
        int64_t cx = x, t;
        int bad = 0;
        Counts c = {lu.buf, cb.buf, emb.buf, trb.buf, 0};
        const double *u = ub.buf;
        uint64_t *r = rb.buf;
        int64_t *prev = pb.buf, *proposed = yb.buf, *emitted = eb.buf;
        uint8_t *accepted = ab.buf;
        const int32_t *mv = mb.buf;
        Py_BEGIN_ALLOW_THREADS
        if (!record) { /* nothing but the counts: the plain loop, never stopped */
            plain_chain(&tables, r, &c, n - start, &cx);
            t = n;
        } else
#define CHAIN(d, i, k) chain_loop(&tables, slots, u, r, prev, proposed, emitted, accepted, &c, start, n, &cx, \
                                  clock, d, i, k, NULL, V, 0, &bad)
#define MOVING(d, i) chain_loop(&tables, slots, u, r, prev, proposed, emitted, accepted, &c, start, n, &cx, \
                                clock, d, i, 0, mv, keys, 1, &bad)
        if (moving)
            t = drawn ? (identity ? MOVING(1, 1) : MOVING(1, 0)) : (identity ? MOVING(0, 1) : MOVING(0, 0));
        else if (drawn)
            t = identity ? (counting ? CHAIN(1, 1, 1) : CHAIN(1, 1, 0)) : (counting ? CHAIN(1, 0, 1) : CHAIN(1, 0, 0));
        else
            t = identity ? (counting ? CHAIN(0, 1, 1) : CHAIN(0, 1, 0)) : (counting ? CHAIN(0, 0, 1) : CHAIN(0, 0, 0));
#undef CHAIN
#undef MOVING
        Py_END_ALLOW_THREADS
        if (counting)
            *(int64_t *)acb.buf += c.accepted;
        if (bad)
            PyErr_SetString(PyExc_ValueError, "chain: a move leads out of the move table's contexts");
        else
            result = Py_BuildValue("nn", (Py_ssize_t)t, (Py_ssize_t)cx);
    }
done:
    PyBuffer_Release(&tb); PyBuffer_Release(&tot); PyBuffer_Release(&la); PyBuffer_Release(&so);
    PyBuffer_Release(&gb); PyBuffer_Release(&lu); PyBuffer_Release(&ub); PyBuffer_Release(&pb);
    PyBuffer_Release(&yb); PyBuffer_Release(&eb); PyBuffer_Release(&ab);
    if (mb.obj) PyBuffer_Release(&mb);
    if (rb.obj) PyBuffer_Release(&rb);
    if (acb.obj) PyBuffer_Release(&acb);
    if (cb.obj) PyBuffer_Release(&cb);
    if (emb.obj) PyBuffer_Release(&emb);
    if (trb.obj) PyBuffer_Release(&trb);
    return result;
}

/* moving_counts(tables, totals, lasts, slot_of, guides, moves, rng, accepted, pairs, V, G, n, x) -> (t, x)
 * n steps of one order-N chain from state x on the move table moves (int32, keys x V), nothing recorded:
 * each step adds to accepted (int64[1]) and pairs (int64, keys x V, [state * V + emitted]), the
 * uniforms drawn from rng (a PCG64 state, advanced).  Every state must be loaded in its own slot. */
static PyObject *moving_counts(PyObject *self, PyObject *args)
{
    Py_buffer tb, tot, la, so, gb, mb, rb, ab, pb;
    Py_ssize_t V, G, n, x, slots;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*w*w*nnnn", &tb, &tot, &la, &so, &gb, &mb, &rb, &ab, &pb, &V, &G, &n,
                          &x))
        return NULL;
    PyObject *result = NULL;
    Tables tables;
    const Py_ssize_t keys = V > 0 ? mb.len / (Py_ssize_t)(4 * V) : 0;
    if (!HAVE_PCG64) {
        PyErr_SetString(PyExc_NotImplementedError, "moving_counts: built without 128-bit integers (no PCG64)");
        goto done;
    }
    if (!(parse_tables(&tb, &tot, &la, &so, &gb, V, G, &tables, &slots) && need(&so, keys, 8, "slot_of") &&
          need(&rb, 4, 8, "rng") && need(&ab, 1, 8, "accepted") && need(&pb, keys * V, 8, "pairs")))
        goto done;
    if (x < 0 || x >= keys || n < 0 || slots < keys || !all_in_place(tables.slot_of, keys)) {
        PyErr_SetString(PyExc_ValueError, "moving_counts: needs every state in its own slot and x in range");
        goto done;
    }
    {
        int64_t cx = x, t;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        t = plain_moving_chain(&tables, rb.buf, mb.buf, keys, pb.buf, ab.buf, n, &cx, &bad);
        Py_END_ALLOW_THREADS
        if (bad)
            PyErr_SetString(PyExc_ValueError, "moving_counts: a move leads out of the move table's states");
        else
            result = Py_BuildValue("nn", (Py_ssize_t)t, (Py_ssize_t)cx);
    }
done:
    PyBuffer_Release(&tb); PyBuffer_Release(&tot); PyBuffer_Release(&la); PyBuffer_Release(&so);
    PyBuffer_Release(&gb); PyBuffer_Release(&mb); PyBuffer_Release(&rb); PyBuffer_Release(&ab);
    PyBuffer_Release(&pb);
    return result;
}

/* Steps t = 0..n-1 of chains b0..b1-1 (a group advancing in lock step: their searches overlap
 * in the CPU), each reading and writing its own rows in order.  With `drawn`, chain b's uniforms
 * come from its PCG64 state rng[4 b .. 4 b + 3] (advanced), else from u.  With `counting`, also
 * adds each step to the chain's counts: acc[b] (accepted drafts) and emi[b * V + emitted].  The
 * contexts need no count of their own: a chain's contexts are its start token and its emitted
 * tokens but the last (the caller derives them).  Without `recording` the step arrays are not
 * written (a run without telemetry needs only the counts; the stores cost ~20 % of the kernel's
 * time).  With `trans` (V x V, shared by the group's chains), also counts each (context, emitted)
 * pair.  With `identity`, context x is in slot x.  With `moves` (`moving`), a chain's next context is
 * moves[x * V + emitted] (order-N contexts; checked in range by the caller), not the emitted token.
 * The pointers do not alias (restrict). */
/* Always inlined, as chain_loop. */
INLINE void batch_group(const Tables *tables, const double *restrict u, uint64_t *restrict rng,
                               int64_t *restrict xs, int64_t *restrict prev, int64_t *restrict proposed,
                               int64_t *restrict emitted, uint8_t *restrict accepted, int64_t *restrict acc,
                               int64_t *restrict emi, int64_t *restrict trans, Py_ssize_t b0, Py_ssize_t b1,
                               Py_ssize_t n, const int drawn, const int counting, const int recording,
                               const int identity, const int32_t *restrict moves, const int moving)
{
    const Tables tb = *tables;
    const int64_t *restrict slot_of = tb.slot_of;
    const int64_t V = tb.V;
    int64_t cx[GROUP], ok[GROUP];
    /* Each chain's PCG64 state as two words: a 128-bit array element is stored as two words and
     * reloaded as one 16-byte vector, which no store forwards to (a stall every draw). */
    uint64_t hi[GROUP], lo[GROUP];
    (void)rng;
    for (Py_ssize_t b = b0; b < b1; ++b) {
        cx[b - b0] = xs[b];
        ok[b - b0] = 0;
        if (drawn) {
            hi[b - b0] = rng[4 * b];
            lo[b - b0] = rng[4 * b + 1];
        }
    }
    for (Py_ssize_t t = 0; t < n; ++t) {
        for (Py_ssize_t b = b0; b < b1; ++b) {
            Py_ssize_t i = b * n + t;
            int64_t x = cx[b - b0], y, a;
            double u0, u1, u2;
#if HAVE_PCG64
            if (drawn) {
                pcg128 state = pcg_join(hi[b - b0], lo[b - b0]);
                const pcg128 inc = pcg_join(rng[4 * b + 2], rng[4 * b + 3]);
                u0 = pcg_uniform(&state, inc);
                u1 = pcg_uniform(&state, inc);
                u2 = pcg_uniform(&state, inc);
                hi[b - b0] = (uint64_t)(state >> 64);
                lo[b - b0] = (uint64_t)state;
            } else
#endif
            {
                u0 = u[3 * i];
                u1 = u[3 * i + 1];
                u2 = u[3 * i + 2];
            }
            int64_t nx = step(&tb, identity ? x : slot_of[x], u0, u1, u2, &y, &a);
            if (recording) {
                prev[i] = x;
                proposed[i] = y;
                emitted[i] = nx;
                accepted[i] = (uint8_t)a;
            }
            cx[b - b0] = moving ? (int64_t)moves[x * V + nx] : nx;
            if (counting) {
                ok[b - b0] += a;
                if (emi)
                    emi[b * V + nx] += 1;
            }
            if (trans)
                trans[x * V + nx] += 1;
        }
    }
    for (Py_ssize_t b = b0; b < b1; ++b) {
        xs[b] = cx[b - b0];
        if (counting)
            acc[b] += ok[b - b0];
        if (drawn) {
            rng[4 * b] = hi[b - b0];
            rng[4 * b + 1] = lo[b - b0];
        }
    }
}

/* batch(tables, totals, lasts, slot_of, guides, u, x, prev, proposed, emitted, accepted, V, G, B, n
 *       [, accepted_counts, emitted_counts, record, transitions, rng])
 * B chains in lock step for n steps; every context must have a table (checked).
 * u is (B, n, 3); x (B,) is read and updated; outputs are (B, n).  The optional counts,
 * int64 arrays of shape (B,) and (B, V) (both, or None for each), are incremented by each
 * chain's accepted drafts and emitted tokens of these n steps.  (Its contexts of the n steps are
 * the emitted tokens, plus x before, minus x after.)  With record = False (counts required) the
 * outputs are not written and may be empty.  `transitions` (int64, V x V, or None) gets each
 * step's (context, emitted token) pair added; one such array per calling thread.  `rng` (uint64,
 * (B, 4), each chain's PCG64 state, advanced in place) or None: the uniforms are drawn from it
 * and u may be empty.  With record = False, rng and every context x in slot x (run --chains B
 * --telemetry none), the chains run one after the other in the plain loop (plain_batch_chains). */
static PyObject *batch(PyObject *self, PyObject *args)
{
    Py_buffer tb, tot, la, so, gb, ub, xb, pb, yb, eb, ab;
    Py_buffer cab = {0}, ceb = {0}, trb = {0}, rb = {0}, mb = {0};
    PyObject *ca = Py_None, *ce = Py_None, *tr = Py_None, *rng = Py_None, *moves = Py_None;
    Py_ssize_t V, G, B, n;
    int recording = 1;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*w*w*w*w*nnnn|OOiOOO", &tb, &tot, &la, &so, &gb, &ub, &xb, &pb, &yb,
                          &eb, &ab, &V, &G, &B, &n, &ca, &ce, &recording, &tr, &rng, &moves))
        return NULL;
    PyObject *result = NULL;
    Tables tables;
    Py_ssize_t slots, keys = V;
    const int counting = ca != Py_None, drawn = rng != Py_None, moving = moves != Py_None;
    if (moving && (tr != Py_None || PyObject_GetBuffer(moves, &mb, PyBUF_SIMPLE) < 0)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "batch: transitions are over tokens; not with a move table");
        goto done;
    }
    if (moving) {
        keys = V > 0 ? mb.len / (Py_ssize_t)(4 * V) : 0;
        if (!need(&so, keys, 8, "slot_of"))
            goto done;
    }
    if ((ce != Py_None && !counting) || (counting && ce == Py_None && tr == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "batch: pass both count arrays or none (the emitted counts may be "
                                         "left out when the transitions are counted)");
        goto done;
    }
    if (!recording && !counting) {
        PyErr_SetString(PyExc_TypeError, "batch: record=False needs the count arrays");
        goto done;
    }
    if (drawn && !HAVE_PCG64) {
        PyErr_SetString(PyExc_NotImplementedError, "batch: built without 128-bit integers (no PCG64)");
        goto done;
    }
    if (counting && (PyObject_GetBuffer(ca, &cab, PyBUF_WRITABLE) < 0 ||
                     (ce != Py_None && PyObject_GetBuffer(ce, &ceb, PyBUF_WRITABLE) < 0)))
        goto done;
    if (!(optional(tr, &trb) && optional(rng, &rb)))
        goto done;
    const Py_ssize_t kept = recording ? B * n : 0;
    if (!(parse_tables(&tb, &tot, &la, &so, &gb, V, G, &tables, &slots) &&
          (drawn ? need(&rb, B * 4, 8, "rng") : need(&ub, B * n * 3, 8, "u")) &&
          need(&xb, B, 8, "x") && need(&pb, kept, 8, "prev") && need(&yb, kept, 8, "proposed") &&
          need(&eb, kept, 8, "emitted") && need(&ab, kept, 1, "accepted")))
        goto done;
    if (counting && !(need(&cab, B, 8, "accepted_counts") && (ce == Py_None || need(&ceb, B * V, 8, "emitted_counts"))))
        goto done;
    if (tr != Py_None && !need(&trb, V * V, 8, "transitions"))
        goto done;
    int identity = 1;
    {
        const int64_t *slot_of = tables.slot_of;
        const int64_t *xs = xb.buf;
        for (Py_ssize_t v = 0; v < keys; ++v) {
            if (slot_of[v] < 0 || slot_of[v] >= slots) {
                PyErr_SetString(PyExc_ValueError, "batch: every context needs a table");
                goto done;
            }
            identity &= slot_of[v] == v;
        }
        const int32_t *mv = mb.buf;
        for (Py_ssize_t k = 0; moving && k < keys * V; ++k)
            if (mv[k] < 0 || mv[k] >= keys) {
                PyErr_SetString(PyExc_ValueError, "batch: a move leads out of the move table's contexts");
                goto done;
            }
        for (Py_ssize_t b = 0; b < B; ++b)
            if (xs[b] < 0 || xs[b] >= keys) {
                PyErr_SetString(PyExc_ValueError, "batch: context out of range");
                goto done;
            }
    }
    {
        const double *u = ub.buf;
        uint64_t *r = rb.buf;
        int64_t *xs = xb.buf, *prev = pb.buf, *proposed = yb.buf, *emitted = eb.buf;
        uint8_t *accepted = ab.buf;
        int64_t *acc = cab.buf, *emi = ce != Py_None ? ceb.buf : NULL, *trans = tr != Py_None ? trb.buf : NULL;
        const int32_t *mv = mb.buf;
        Py_BEGIN_ALLOW_THREADS
#define GROUP_OF(d, k, w, i) batch_group(&tables, u, r, xs, prev, proposed, emitted, accepted, acc, emi, trans, \
                                         b0, b1, n, d, k, w, i, NULL, 0)
#define MOVING_OF(d, i) batch_group(&tables, u, r, xs, prev, proposed, emitted, accepted, acc, emi, trans, \
                                    b0, b1, n, d, counting, recording, i, mv, 1)
        if (!recording && identity && drawn && !moving) /* run --chains B --telemetry none: the plain loop */
            plain_batch_chains(&tables, r, xs, acc, emi, trans, 0, B, n);
        else
        for (Py_ssize_t b0 = 0; b0 < B; b0 += GROUP) {
            Py_ssize_t b1 = b0 + GROUP < B ? b0 + GROUP : B;
            if (moving) /* order-N contexts: one instance per (drawn, identity), the counts as asked */
                drawn ? (identity ? MOVING_OF(1, 1) : MOVING_OF(1, 0)) : (identity ? MOVING_OF(0, 1) : MOVING_OF(0, 0));
            else if (!recording && identity)
                GROUP_OF(0, 1, 0, 1);
            else if (!recording)
                drawn ? GROUP_OF(1, 1, 0, 0) : GROUP_OF(0, 1, 0, 0);
            else if (counting)
                drawn ? GROUP_OF(1, 1, 1, 0) : GROUP_OF(0, 1, 1, 0);
            else
                drawn ? GROUP_OF(1, 0, 1, 0) : GROUP_OF(0, 0, 1, 0);
        }
#undef GROUP_OF
#undef MOVING_OF
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
done:
    PyBuffer_Release(&tb); PyBuffer_Release(&tot); PyBuffer_Release(&la); PyBuffer_Release(&so);
    PyBuffer_Release(&gb); PyBuffer_Release(&ub); PyBuffer_Release(&xb); PyBuffer_Release(&pb);
    PyBuffer_Release(&yb); PyBuffer_Release(&eb); PyBuffer_Release(&ab);
    PyBuffer_Release(&cab); PyBuffer_Release(&ceb); PyBuffer_Release(&trb); PyBuffer_Release(&rb);
    PyBuffer_Release(&mb);
    return result;
}

/* A cdf's entries below its total (bisect_left(cdf, cdf[V - 1])): the last positive index. */
static int64_t last_positive(const double *cdf, int64_t V)
{
    const double total = cdf[V - 1];
    int64_t lo = 0, hi = V;
    while (lo < hi) {
        int64_t m = lo + ((hi - lo) >> 1);
        if (cdf[m] < total)
            lo = m + 1;
        else
            hi = m;
    }
    return lo;
}

/* guide[k] = bisect_right(cdf, (k / G) * total) for k = 0..G, by one merge of the sorted cdf
 * with the increasing points (thermospec.kernels.guide_table, the same double operations). */
static void guide_of(const double *cdf, int64_t V, int64_t G, double total, int32_t *guide)
{
    int64_t i = 0;
    for (int64_t k = 0; k <= G; ++k) {
        const double point = ((double)k / (double)G) * total;
        while (i < V && cdf[i] <= point)
            ++i;
        guide[k] = (int32_t)i;
    }
}

/* finish(tables, totals, lasts, guides, V, G, slot[, count])
 * Fills the totals, lasts and guides of slots slot .. slot + count - 1 (count 1 if not given) from
 * their tables (TableCache.load and load_rows, once they have written the slots' three rows): what
 * guide_table and last_positive give, without a NumPy call each. */
static PyObject *finish(PyObject *self, PyObject *args)
{
    Py_buffer tb, tot, la, gb;
    Py_ssize_t V, G, first, count = 1;
    if (!PyArg_ParseTuple(args, "y*w*w*w*nnn|n", &tb, &tot, &la, &gb, &V, &G, &first, &count))
        return NULL;
    PyObject *result = NULL;
    if (V < 1 || G < 1 || (G & (G - 1)) != 0 || G + 1 > INT32_MAX || V > INT32_MAX || first < 0 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "finish: V >= 1, G a power of two, slot >= 0 and count >= 0 needed");
        goto done;
    }
    if (!(need(&tb, (first + count) * 3 * V, 8, "tables") && need(&tot, (first + count) * 2, 8, "totals") &&
          need(&la, (first + count) * 2, 8, "lasts") && need(&gb, (first + count) * 2 * (G + 1), 4, "guides")))
        goto done;
    Py_BEGIN_ALLOW_THREADS /* only the buffers: craft_states' threads finish their blocks side by side */
    for (Py_ssize_t slot = first; slot < first + count; ++slot) {
        const double *row = (const double *)tb.buf + slot * 3 * V;
        double *totals = (double *)tot.buf + 2 * slot;
        int64_t *lasts = (int64_t *)la.buf + 2 * slot;
        int32_t *guides = (int32_t *)gb.buf + slot * 2 * (G + 1);
        for (int j = 0; j < 2; ++j) {
            const double *cdf = row + 2 * j * V; /* the draft cdf, then the residual cdf */
            totals[j] = cdf[V - 1];
            lasts[j] = last_positive(cdf, V);
            guide_of(cdf, V, G, cdf[V - 1], guides + j * (G + 1));
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&tb); PyBuffer_Release(&tot); PyBuffer_Release(&la); PyBuffer_Release(&gb);
    return result;
}

static inline char *put(char *out, const char *text, size_t n)
{
    memcpy(out, text, n);
    return out + n;
}

static inline char *put_int(char *out, int64_t v)
{
    char digits[24];
    int n = 0;
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        digits[n++] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0)
        *out++ = '-';
    while (n)
        *out++ = digits[--n];
    return out;
}

/* jsonl(start, columns, flags, keys, context_text, offsets, V, n, prefixes, nullable, flag_texts) -> str
 * A chunk's JSONL lines as the one telemetry schema lays them out (thermospec.runs.schema's
 * Layout.compiled_format gives the texts; byte for byte what its Python formatter writes): per row t,
 * prefixes[0] and start + t, then for each i prefixes[i + 1] and columns[i][t] (null where nullable[i + 1]
 * and the value is negative), then flag_texts[flags[t] != 0] whole, then the key's tail:
 * context_text[offsets[x]:offsets[x + 1]] with x = keys[t]. No field name is written here. */
#define JSONL_MAX_COLUMNS 8
static PyObject *jsonl(PyObject *self, PyObject *args)
{
    Py_buffer col[JSONL_MAX_COLUMNS], fb, kb, cb, ob;
    PyObject *columns, *prefixes, *nullable, *flag_texts;
    Py_ssize_t start, V, n, m = 0;
    if (!PyArg_ParseTuple(args, "nO!y*y*y*y*nnO!O!O!", &start, &PyTuple_Type, &columns, &fb, &kb, &cb, &ob, &V,
                          &n, &PyTuple_Type, &prefixes, &PyTuple_Type, &nullable, &PyTuple_Type, &flag_texts))
        return NULL;
    PyObject *result = NULL;
    char *buffer = NULL;
    const char *prefix[JSONL_MAX_COLUMNS + 1], *flag_text[2];
    Py_ssize_t prefix_len[JSONL_MAX_COLUMNS + 1], flag_len[2];
    int null_ok[JSONL_MAX_COLUMNS + 1];
    const int64_t *value[JSONL_MAX_COLUMNS];
    Py_ssize_t width = PyTuple_GET_SIZE(columns);
    if (width > JSONL_MAX_COLUMNS || PyTuple_GET_SIZE(prefixes) != width + 1 ||
        PyTuple_GET_SIZE(nullable) != width + 1 || PyTuple_GET_SIZE(flag_texts) != 2 || n < 0 || V < 0) {
        PyErr_SetString(PyExc_ValueError, "jsonl: a prefix and a nullable flag per field, two flag texts");
        goto done;
    }
    size_t per_row = 0;
    for (Py_ssize_t i = 0; i <= width; ++i) {
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(prefixes, i), (char **)&prefix[i], &prefix_len[i]) < 0)
            goto done;
        null_ok[i] = PyObject_IsTrue(PyTuple_GET_ITEM(nullable, i));
        if (null_ok[i] < 0)
            goto done;
        per_row += (size_t)prefix_len[i] + 21;
    }
    for (int j = 0; j < 2; ++j)
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(flag_texts, j), (char **)&flag_text[j], &flag_len[j]) < 0)
            goto done;
    per_row += (size_t)(flag_len[0] > flag_len[1] ? flag_len[0] : flag_len[1]);
    while (m < width) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(columns, m), &col[m], PyBUF_SIMPLE) < 0)
            goto done;
        value[m] = col[m].buf;
        if (!need(&col[m++], n, 8, "column"))
            goto done;
    }
    if (!(need(&fb, n, 1, "flags") && need(&kb, n, 8, "keys") && need(&ob, V + 1, 8, "offsets")))
        goto done;
    {
        const int64_t *keys = kb.buf, *offsets = ob.buf;
        const uint8_t *flags = fb.buf;
        const char *text = cb.buf;
        size_t longest = 0;
        for (Py_ssize_t v = 0; v < V; ++v) {
            if (offsets[v] < 0 || offsets[v + 1] < offsets[v] || offsets[v + 1] > cb.len) {
                PyErr_SetString(PyExc_ValueError, "jsonl: bad context offsets");
                goto done;
            }
            if ((size_t)(offsets[v + 1] - offsets[v]) > longest)
                longest = (size_t)(offsets[v + 1] - offsets[v]);
        }
        for (Py_ssize_t t = 0; t < n; ++t)
            if (keys[t] < 0 || keys[t] >= V) {
                PyErr_SetString(PyExc_ValueError, "jsonl: context out of range");
                goto done;
            }
        per_row += longest;
        buffer = PyMem_Malloc(per_row * (size_t)(n > 0 ? n : 1));
        if (buffer == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        char *out = buffer;
        for (Py_ssize_t t = 0; t < n; ++t) {
            out = put(out, prefix[0], (size_t)prefix_len[0]);
            out = put_int(out, (int64_t)(start + t));
            for (Py_ssize_t i = 0; i < width; ++i) {
                out = put(out, prefix[i + 1], (size_t)prefix_len[i + 1]);
                if (null_ok[i + 1] && value[i][t] < 0)
                    out = put(out, "null", 4);
                else
                    out = put_int(out, value[i][t]);
            }
            int f = flags[t] != 0;
            out = put(out, flag_text[f], (size_t)flag_len[f]);
            int64_t x = keys[t];
            out = put(out, text + offsets[x], (size_t)(offsets[x + 1] - offsets[x]));
        }
        result = PyUnicode_DecodeASCII(buffer, out - buffer, "strict");
    }
done:
    PyMem_Free(buffer);
    for (Py_ssize_t i = 0; i < m; ++i)
        PyBuffer_Release(&col[i]);
    PyBuffer_Release(&fb); PyBuffer_Release(&kb); PyBuffer_Release(&cb); PyBuffer_Release(&ob);
    return result;
}

/*
 * The chain on compact per-context tables (thermospec.compact): compact_chain.
 *
 * Exactly the step of thermospec.engine.step.step_tokens on CompactStepTables (and hence of the dense
 * tables and of thermospec.engine.run_chain_reference), on the slots laid out by
 * thermospec.compact._SlotCache, with Km = max_k and Sm = max_s:
 *
 *   floats[slot]  = [id_cdf (Km) | explicit_cum (Km + 1) | id_ratio (Km) | ratio (Sm) | residual_cum (Sm)]
 *                   float64; id_ratio[j] = ratio at ids[j]
 *   tokens[slot]  = [ids (Km) | support (Sm)]                                                int32
 *   scalars[slot] = [eps, draft_total, residual_total]                                       float64
 *   counts[slot]  = [K, s, draft_last, residual_last]                                        int64
 *   slot_of[x]    = slot holding context x, or -1
 *
 * The draft CDF at token v is n_tail(v) * eps + explicit_cum[k(v)] (see thermospec.tsu.draft_cdf);
 * one step (step_rule on the compact layout) with uniforms (u_draft, u_accept, u_residual):
 *   y = min(first v with cdf(v) > u_draft * draft_total, draft_last)
 *   accept iff u_accept < ratio at y (0 off the support), strict
 *   else x = support[min(bisect_right(residual_cum, u_residual * residual_total), residual_last)]
 * Built without FMA contraction, so every product and sum rounds as in Python.
 */

static inline int64_t bisect_left_i32(const int32_t *a, int64_t n, int64_t target)
{
    /* First index i with a[i] >= target (n if none). */
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t m = lo + ((hi - lo) >> 1);
        if ((int64_t)a[m] < target)
            lo = m + 1;
        else
            hi = m;
    }
    return lo;
}

typedef struct {
    const double *floats, *scalars;
    const int32_t *tokens;
    const int64_t *counts, *slot_of;
    int64_t V, Km, Sm;
} Slots;

/* First token v whose draft CDF exceeds t (V if none); *J_out = number of ids below the gap searched. */
static inline int64_t first_above(const double *id_cdf, const double *cum, const int32_t *ids, int64_t K, double eps,
                                  int64_t V, double t, int64_t *J_out)
{
    int64_t J = bisect_right_far(id_cdf, K, t);
    *J_out = J;
    int64_t lo = J ? (int64_t)ids[J - 1] + 1 : 0;
    int64_t hi = J < K ? (int64_t)ids[J] : V;
    if (eps > 0 && lo < hi) {
        double base = cum[J];
        int64_t shift = 1 - J; /* tail token v: cdf = (double)(v + shift) * eps + base */
        if ((double)(hi - 1 + shift) * eps + base > t) {
            int64_t a = lo, b = hi - 1;
            while (a < b) {
                int64_t m = a + ((b - a) >> 1);
                if ((double)(m + shift) * eps + base > t)
                    b = m;
                else
                    a = m + 1;
            }
            return a;
        }
    }
    return hi;
}

/* The compact layout: one context's slot, and the id the draft search stopped at (J). */
typedef struct {
    const double *f, *sc;
    const int32_t *tk, *support;
    const int64_t *ct;
    int64_t Km, Sm, K, S, V, J;
} CompactView;

INLINE int64_t compact_draft(void *view, double u)
{
    CompactView *c = view;
    int64_t y = first_above(c->f, c->f + c->Km, c->tk, c->K, c->sc[0], c->V, u * c->sc[1], &c->J);
    return y > c->ct[2] ? c->ct[2] : y;
}

INLINE double compact_ratio(void *view, int64_t y)
{
    const CompactView *c = view;
    if (c->J < c->K && (int64_t)c->tk[c->J] == y) /* the draft is the J-th id: its ratio is at hand */
        return c->f[2 * c->Km + 1 + c->J];
    int64_t i = bisect_left_i32(c->support, c->S, y);
    return (i < c->S && (int64_t)c->support[i] == y) ? c->f[3 * c->Km + 1 + i] : 0.0;
}

INLINE int64_t compact_residual(void *view, double u)
{
    const CompactView *c = view;
    int64_t r = bisect_right_far(c->f + 3 * c->Km + 1 + c->Sm, c->S, u * c->sc[2]);
    return (int64_t)c->support[r > c->ct[3] ? c->ct[3] : r];
}

INLINE int64_t compact_step(const Slots *sl, int64_t s, const double *u3, int64_t *proposed, uint8_t *accepted)
{
    const int64_t Km = sl->Km, Sm = sl->Sm;
    const int32_t *tk = sl->tokens + s * (Km + Sm);
    const int64_t *ct = sl->counts + 4 * s;
    CompactView view = {sl->floats + s * (3 * Km + 1 + 2 * Sm), sl->scalars + 3 * s, tk, tk + Km, ct,
                        Km, Sm, ct[0], ct[1], sl->V, 0};
    const Layout compact = {compact_draft, compact_ratio, compact_residual};
    int64_t a;
    int64_t x = step_rule(compact, &view, u3[0], u3[1], u3[2], proposed, &a);
    *accepted = (uint8_t)a;
    return x;
}

/* compact_chain(floats, tokens, scalars, counts, slot_of, last_used, u, prev, proposed, emitted, accepted,
 *       V, max_k, max_s, start, n, x, clock) -> (t, x)
 * Runs steps start..n-1 of a chunk; stops early (t < n) at a context without a slot. */
static PyObject *compact_chain(PyObject *self, PyObject *args)
{
    Py_buffer fb, tb, sb, cb, so, lu, ub, pb, yb, eb, ab;
    Py_ssize_t V, Km, Sm, start, n, x, clock;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*y*w*w*w*w*nnnnnnn", &fb, &tb, &sb, &cb, &so, &lu, &ub, &pb, &yb, &eb,
                          &ab, &V, &Km, &Sm, &start, &n, &x, &clock))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t slots = sb.len / (Py_ssize_t)(3 * sizeof(double));
    if (V < 1 || Km < 1 || Sm < 1) {
        PyErr_SetString(PyExc_ValueError, "V, max_k and max_s must be >= 1");
        goto done;
    }
    if (!(need(&fb, slots * (3 * Km + 1 + 2 * Sm), 8, "floats") && need(&tb, slots * (Km + Sm), 4, "tokens") &&
          need(&cb, slots * 4, 8, "counts") && need(&so, V, 8, "slot_of") && need(&lu, slots, 8, "last_used") &&
          need(&ub, n * 3, 8, "u") && need(&pb, n, 8, "prev") && need(&yb, n, 8, "proposed") &&
          need(&eb, n, 8, "emitted") && need(&ab, n, 1, "accepted")))
        goto done;
    if (x < 0 || x >= V || start < 0 || start > n) {
        PyErr_SetString(PyExc_ValueError, "compact_chain: context or start out of range");
        goto done;
    }
    {
        Slots sl = {fb.buf, sb.buf, tb.buf, cb.buf, so.buf, V, Km, Sm};
        const double *u = ub.buf;
        const int64_t *slot_of = so.buf;
        int64_t *last_used = lu.buf, *prev = pb.buf, *proposed = yb.buf, *emitted = eb.buf;
        uint8_t *accepted = ab.buf;
        int64_t cx = x, t = start;
        Py_BEGIN_ALLOW_THREADS
        for (; t < n; ++t) {
            int64_t s = slot_of[cx];
            if (s < 0 || s >= slots)
                break;
            last_used[s] = clock + t;
            prev[t] = cx;
            cx = compact_step(&sl, s, u + 3 * t, proposed + t, accepted + t);
            emitted[t] = cx;
        }
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("nn", (Py_ssize_t)t, (Py_ssize_t)cx);
    }
done:
    PyBuffer_Release(&fb); PyBuffer_Release(&tb); PyBuffer_Release(&sb); PyBuffer_Release(&cb);
    PyBuffer_Release(&so); PyBuffer_Release(&lu); PyBuffer_Release(&ub); PyBuffer_Release(&pb);
    PyBuffer_Release(&yb); PyBuffer_Release(&eb); PyBuffer_Release(&ab);
    return result;
}

/*
 * N drafts per target call (thermospec.engine.draft_tables): drafts_chain.
 *
 * Exactly the step of thermospec.engine.drafts.draft_step on a verifier's per-context tables
 * (DraftSlots and the step, _draft_slots.h), with slot_of[key] = the slot holding the tables of key,
 * or -1.  One step consumes 2N + 1 uniforms: y_i = draft(u_i) for i < N, then (v_1 .. v_N, v_res),
 * the final cdf inverted at v_res on a rejection.  The next key is the emitted token, or
 * next_keys[key * V + emitted] when a next-key table is given (order-N contexts: the same convention
 * as the chain kernel's).
 */

#define DRAFTS_MAX 64

static inline int64_t drafts_step(const DraftSlots *d, int64_t s, const double *u, int64_t *first,
                                  int64_t *index, const int selection)
{
    const int64_t V = d->V, G = d->G, N = d->N, L = d->L;
    const double *f = d->floats + s * d->FS;
    const int32_t *g = d->ints + s * d->IS;
    const double *sc = d->scalars + 2 * s;
    const int64_t *la = d->lasts + 2 * s;
    const double *ratios = f + V, *v = u + N;
    int64_t ys[DRAFTS_MAX];
    if (!selection) {
        /* A draft is searched for only when it is tested: its uniform was drawn all the same (the stream
         * layout), and the token of an untested draft is never seen (the chunk records the first). */
        for (int64_t i = 0; i < N; ++i) {
            int64_t y = guided(f, g, G, u[i], sc[0]);
            y = y > la[0] ? la[0] : y;
            if (i == 0)
                *first = y;
            if (v[i] < ratios[(i < L ? i : L - 1) * V + y]) {
                *index = i;
                return y;
            }
        }
    } else {
        for (int64_t i = 0; i < N; ++i) {
            int64_t y = guided(f, g, G, u[i], sc[0]);
            ys[i] = y > la[0] ? la[0] : y;
        }
        *first = ys[0];
        int64_t chosen = 0;
        if (d->walk) {
            const int32_t *rank = g + 2 * (G + 1), *node_at = rank + V, *up = node_at + V;
            chosen = class_choice(rank, node_at, up, f + (2 + L) * V, ys, N, v[1]);
        }
        if (v[0] < ratios[ys[chosen]]) {
            *index = chosen;
            return ys[chosen];
        }
    }
    *index = -1;
    int64_t x = guided(f + (1 + L) * V, g + G + 1, G, v[N], sc[1]);
    return x > la[1] ? la[1] : x;
}

/* Steps t0..n-1 from key *x; stops early (returns t) at a key without tables, or (sets *bad) at a next key
 * outside [0, keys). */
static inline int64_t drafts_loop(const DraftSlots *d, const int64_t *restrict slot_of, Py_ssize_t slots,
                                  int64_t keys, int64_t *restrict last_used, const double *restrict u,
                                  uint64_t *restrict rng, int64_t *restrict prev, int64_t *restrict proposed,
                                  int64_t *restrict emitted, int64_t *restrict index,
                                  const int64_t *restrict next_keys, int64_t t0, int64_t n, int64_t *x,
                                  int64_t clock, int *bad, const int drawn, const int selection)
{
    const int64_t per = 2 * d->N + 1, V = d->V;
    double uu[2 * DRAFTS_MAX + 1];
    int64_t cx = *x, t = t0;
#if HAVE_PCG64
    pcg128 state = 0, inc = 0;
    if (drawn) {
        state = pcg_join(rng[0], rng[1]);
        inc = pcg_join(rng[2], rng[3]);
    }
#else
    (void)rng;
#endif
    for (; t < n; ++t) {
        int64_t s = slot_of[cx];
        if (!LIKELY(s >= 0 && s < slots))
            break;
        const double *us = u + per * t;
#if HAVE_PCG64
        if (drawn) {
            for (int64_t j = 0; j < per; ++j)
                uu[j] = pcg_uniform(&state, inc);
            us = uu;
        }
#endif
        last_used[s] = clock + t;
        prev[t] = cx;
        int64_t e = drafts_step(d, s, us, proposed + t, index + t, selection);
        emitted[t] = e;
        int64_t nx = next_keys ? next_keys[cx * V + e] : e;
        if (!LIKELY(nx >= 0 && nx < keys)) {
            *bad = 1;
            ++t;
            break;
        }
        cx = nx;
    }
#if HAVE_PCG64
    if (drawn) {
        rng[0] = (uint64_t)(state >> 64);
        rng[1] = (uint64_t)state;
    }
#endif
    *x = cx;
    return t;
}

/* drafts_chain(floats, ints, scalars, lasts, slot_of, last_used, u, prev, proposed, emitted, index,
 *              V, G, N, L, selection, start, n, x, clock [, rng, next_keys]) -> (t, x)
 * Runs steps start..n-1 of a chunk of one chain; stops early (t < n) at a key without tables.
 * u holds 2N + 1 uniforms per step, or rng (uint64[4], a PCG64 state advanced in place) draws them
 * (u may then be empty).  next_keys: None (the next key is the emitted token; then slot_of has V
 * entries at least) or int64 (keys x V).  Keys are slot_of's entries. */
static PyObject *drafts_chain(PyObject *self, PyObject *args)
{
    Py_buffer fb, ib, sb, lb, so, lu, ub, pb, yb, eb, xb;
    Py_buffer rb = {0}, nb = {0};
    Py_ssize_t V, G, N, L, start, n, x, clock;
    int selection;
    PyObject *rng = Py_None, *next = Py_None;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*y*w*w*w*w*nnnnpnnnn|OO", &fb, &ib, &sb, &lb, &so, &lu, &ub, &pb, &yb,
                          &eb, &xb, &V, &G, &N, &L, &selection, &start, &n, &x, &clock, &rng, &next))
        return NULL;
    PyObject *result = NULL;
    const int drawn = rng != Py_None;
    if (drawn && !HAVE_PCG64) {
        PyErr_SetString(PyExc_NotImplementedError, "drafts_chain: built without 128-bit integers (no PCG64)");
        goto done;
    }
    if (!(optional(rng, &rb) && (next == Py_None || PyObject_GetBuffer(next, &nb, 0) == 0)))
        goto done;
    if (V < 1 || G < 1 || (G & (G - 1)) != 0 || N < 1 || N > DRAFTS_MAX || L < 1 || L > N) {
        PyErr_SetString(PyExc_ValueError, "drafts_chain: V >= 1, G a power of two, 1 <= L <= N <= 64 needed");
        goto done;
    }
    {
        const int64_t walk = selection && N > 1 ? V + 1 : 0;
        const int64_t FS = (2 + L) * V + walk, IS = 2 * (G + 1) + (walk ? 2 * V + walk : 0);
        const Py_ssize_t slots = sb.len / (Py_ssize_t)(2 * sizeof(double));
        const int64_t keys = so.len / (Py_ssize_t)sizeof(int64_t);
        if (!(need(&fb, slots * FS, 8, "floats") && need(&ib, slots * IS, 4, "ints") &&
              need(&lb, slots * 2, 8, "lasts") && need(&lu, slots, 8, "last_used") &&
              (drawn ? need(&rb, 4, 8, "rng") : need(&ub, n * (2 * N + 1), 8, "u")) && need(&pb, n, 8, "prev") &&
              need(&yb, n, 8, "proposed") && need(&eb, n, 8, "emitted") && need(&xb, n, 8, "index") &&
              (next == Py_None ? need(&so, V, 8, "slot_of") : need(&nb, keys * V, 8, "next_keys"))))
            goto done;
        if (x < 0 || x >= keys || start < 0 || start > n) {
            PyErr_SetString(PyExc_ValueError, "drafts_chain: key or start out of range");
            goto done;
        }
        DraftSlots d = {fb.buf, sb.buf, ib.buf, lb.buf, V, G, N, L, walk != 0, FS, IS};
        int64_t cx = x, t;
        int bad = 0;
        const int64_t *slot_of = so.buf, *next_keys = next == Py_None ? NULL : nb.buf;
        int64_t *last_used = lu.buf, *prev = pb.buf, *proposed = yb.buf, *emitted = eb.buf, *index = xb.buf;
        const double *u = ub.buf;
        uint64_t *r = rb.buf;
        Py_BEGIN_ALLOW_THREADS
#define DRAFTS(dr, se) drafts_loop(&d, slot_of, slots, keys, last_used, u, r, prev, proposed, emitted, index, \
                                   next_keys, start, n, &cx, clock, &bad, dr, se)
        if (drawn)
            t = selection ? DRAFTS(1, 1) : DRAFTS(1, 0);
        else
            t = selection ? DRAFTS(0, 1) : DRAFTS(0, 0);
#undef DRAFTS
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "drafts_chain: a next key outside the keys");
            goto done;
        }
        result = Py_BuildValue("nn", (Py_ssize_t)t, (Py_ssize_t)cx);
    }
done:
    PyBuffer_Release(&fb); PyBuffer_Release(&ib); PyBuffer_Release(&sb); PyBuffer_Release(&lb);
    PyBuffer_Release(&so); PyBuffer_Release(&lu); PyBuffer_Release(&ub); PyBuffer_Release(&pb);
    PyBuffer_Release(&yb); PyBuffer_Release(&eb); PyBuffer_Release(&xb);
    if (rb.obj) PyBuffer_Release(&rb);
    if (nb.obj) PyBuffer_Release(&nb);
    return result;
}

/* ---- Order-N states packed one record a state (run --order N --telemetry none, thermospec.engine.packed_states).
 *
 * A counted order-N step in state s reads its draft's total, last token and guide, the draft cdf around the
 * draw, ratio[y], the move after the emitted token and that pair's count: in TableCache's arrays these are
 * six lines of six arrays (the rows of 64k states are far apart, so each is a miss).  Here a state is one
 * record, 64-byte aligned, of R = record_layout(V, G).size bytes:
 *
 *   [0, head)            draft total (double), last positive token (int32), guide (G + 1 uint8: V < 256),
 *                        then, 8-aligned, a bit per token: the pairs counted since the last flush
 *   [head, head + 24 V)  per token: draft cdf (double), ratio (double), next state (int32), count (uint32)
 *   then, 8-aligned      residual total (double), last (int32), guide (G + 1 uint8)
 *   then, 8-aligned      residual cdf (V doubles)
 *
 * so an accepted draft (most steps) reads the head line and the lines of a few entries, all prefetched at the
 * step's start.  The same doubles are compared in the same order as `step` on TableCache's arrays (the cdf
 * entries are strided, not changed), so the tokens are the same.  The counts are uint32: the caller adds them
 * to its int64 pairs (state_flush) before any could pass 2^32 - 1; the head's bits of the tokens counted let
 * state_codes and state_flush read only the entries met (a few lines a state, not all of them). */
typedef struct {
    int64_t V, G, mask, head, residual, residual_cdf, size;
} RecordLayout;

static RecordLayout record_layout(int64_t V, int64_t G)
{
    RecordLayout l;
    l.V = V;
    l.G = G;
    l.mask = (12 + G + 1 + 7) / 8 * 8; /* bit y: the pair (state, y) was counted since the last flush */
    l.head = (l.mask + 8 * ((V + 63) / 64) + 63) / 64 * 64;
    l.residual = (l.head + 24 * V + 7) / 8 * 8;
    l.residual_cdf = (l.residual + 12 + G + 1 + 7) / 8 * 8;
    l.size = (l.residual_cdf + 8 * V + 63) / 64 * 64;
    return l;
}

/* The index of the lowest set bit of a non-zero word. */
INLINE int64_t lowest_bit(uint64_t bits)
{
#if defined(__GNUC__)
    return __builtin_ctzll(bits);
#else
    int64_t i = 0;
    while (!(bits & 1)) {
        bits >>= 1;
        ++i;
    }
    return i;
#endif
}

/* bisect_right over n strided cdf entries (`stride` doubles apart): the same comparisons as bisect_right. */
INLINE int64_t bisect_right_strided(const double *cdf, int64_t n, double target, int64_t stride)
{
    int64_t i = 0;
    while (n > 1) {
        int64_t half = n >> 1;
        i += half & -(int64_t)(cdf[(i + half - 1) * stride] <= target);
        n -= half;
    }
    return i + (n == 1 && cdf[i * stride] <= target);
}

/* guided_last on a record's cdf (strided) and uint8 guide, total and last at `head`. */
INLINE int64_t record_draw(const char *head, const double *cdf, int64_t stride, int64_t G, double u)
{
    const double total = *(const double *)head;
    const int64_t last = *(const int32_t *)(head + 8);
    const uint8_t *guide = (const uint8_t *)(head + 12);
    const int64_t k = (int64_t)(u * (double)G);
    const int64_t lo = guide[k], n = (int64_t)guide[k + 1] - lo;
    if (LIKELY(n == 0 && lo <= last))
        return lo;
    const int64_t y = lo + bisect_right_strided(cdf + lo * stride, n, u * total, stride);
    return y > last ? last : y;
}

/* n steps from state *x over `records` (`keys` states), counting into the records; returns the steps run
 * (fewer when a move leads out of [0, keys): *bad set). */
INLINE int64_t record_body(char *restrict records, const RecordLayout l, uint64_t *restrict rng, int64_t keys,
                           int64_t *restrict acc, int64_t n, int64_t *x, int *bad)
{
    int64_t t = 0;
#if HAVE_PCG64
    int64_t cx = *x, ok = 0;
    pcg128 state = pcg_join(rng[0], rng[1]);
    const pcg128 inc = pcg_join(rng[2], rng[3]);
    const int64_t hot = l.head + 24 * l.V; /* the lines an accepted draft may read */
    for (; t < n; ++t) {
        const double u0 = pcg_uniform(&state, inc), u1 = pcg_uniform(&state, inc), u2 = pcg_uniform(&state, inc);
        char *rec = records + cx * l.size;
#if defined(__GNUC__)
        for (int64_t k = 0; k < hot; k += 64)
            __builtin_prefetch(rec + k);
#endif
        double *entries = (double *)(rec + l.head);
        const int64_t y = record_draw(rec, entries, 3, l.G, u0);
        int64_t nx = y;
        if (u1 < entries[3 * y + 1])
            ++ok;
        else
            nx = record_draw(rec + l.residual, (const double *)(rec + l.residual_cdf), 1, l.G, u2);
        int32_t *tail = (int32_t *)(entries + 3 * nx + 2);
        ((uint32_t *)tail)[1] += 1;
        ((uint64_t *)(rec + l.mask))[nx >> 6] |= (uint64_t)1 << (nx & 63); /* the head line: in cache */
        const int64_t key = tail[0];
        if (!LIKELY(key >= 0 && key < keys)) {
            *bad = 1;
            ++t;
            break;
        }
        cx = key;
    }
    rng[0] = (uint64_t)(state >> 64);
    rng[1] = (uint64_t)state;
    *acc += ok;
    *x = cx;
#else
    (void)records; (void)l; (void)rng; (void)keys; (void)acc; (void)n; (void)x; (void)bad;
#endif
    return t;
}

NOINLINE int64_t record_loop(char *records, const RecordLayout l, uint64_t *rng, int64_t keys, int64_t *acc,
                             int64_t n, int64_t *x, int *bad)
{
    return record_body(records, l, rng, keys, acc, n, x, bad);
}
#if X86_CLONES
NOINLINE AVX2_BMI2 int64_t record_loop_avx2(char *records, const RecordLayout l, uint64_t *rng, int64_t keys,
                                            int64_t *acc, int64_t n, int64_t *x, int *bad)
{
    return record_body(records, l, rng, keys, acc, n, x, bad);
}
#endif

/* Checks of a records buffer of `keys` states (V, G); returns 0 with an exception set. */
static int records_of(Py_buffer *rb, Py_ssize_t V, Py_ssize_t G, Py_ssize_t keys, RecordLayout *l, const char *name)
{
    if (V < 1 || V > 255 || G < 1 || (G & (G - 1)) != 0 || G > 255 || keys < 0) {
        PyErr_Format(PyExc_ValueError, "%s: 1 <= V <= 255 and G a power of two below 256 needed", name);
        return 0;
    }
    *l = record_layout(V, G);
    if (((uintptr_t)rb->buf & 63) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: the records must be 64-byte aligned", name);
        return 0;
    }
    return need(rb, keys * l->size, 1, "records");
}

/* state_pack(records, draft_cdf, ratio, residual_cdf, moves, V, G, first, count)
 * Writes the records of states first .. first + count - 1 from their rows (count x V doubles each) and the
 * move table (int32, states x V): the totals, lasts and guides `finish` gives, the counts zero. */
static PyObject *state_pack(PyObject *self, PyObject *args)
{
    Py_buffer rb, db, qb, sb, mb;
    Py_ssize_t V, G, first, count;
    if (!PyArg_ParseTuple(args, "w*y*y*y*y*nnnn", &rb, &db, &qb, &sb, &mb, &V, &G, &first, &count))
        return NULL;
    PyObject *result = NULL;
    RecordLayout l;
    if (first < 0 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "state_pack: first >= 0 and count >= 0 needed");
        goto done;
    }
    if (!(records_of(&rb, V, G, first + count, &l, "state_pack") && need(&db, count * V, 8, "draft_cdf") &&
          need(&qb, count * V, 8, "ratio") && need(&sb, count * V, 8, "residual_cdf") &&
          need(&mb, (first + count) * V, 4, "moves")))
        goto done;
    Py_BEGIN_ALLOW_THREADS /* only the buffers: craft_states' threads craft their blocks meanwhile */
    int32_t guide[256 + 1];
    for (Py_ssize_t i = 0; i < count; ++i) {
        const int64_t s = first + i;
        char *rec = (char *)rb.buf + s * l.size;
        const double *rows[2] = {(const double *)db.buf + i * V, (const double *)sb.buf + i * V};
        const double *ratio = (const double *)qb.buf + i * V;
        const int32_t *moves = (const int32_t *)mb.buf + s * V;
        memset(rec, 0, (size_t)l.size);
        for (int j = 0; j < 2; ++j) {
            char *head = rec + (j == 0 ? 0 : l.residual);
            const double *cdf = rows[j];
            *(double *)head = cdf[V - 1];
            *(int32_t *)(head + 8) = (int32_t)last_positive(cdf, V);
            guide_of(cdf, V, G, cdf[V - 1], guide);
            for (int64_t k = 0; k <= G; ++k)
                ((uint8_t *)(head + 12))[k] = (uint8_t)guide[k];
        }
        double *entries = (double *)(rec + l.head);
        for (int64_t y = 0; y < V; ++y) {
            entries[3 * y] = rows[0][y];
            entries[3 * y + 1] = ratio[y];
            ((int32_t *)(entries + 3 * y + 2))[0] = moves[y];
        }
        memcpy(rec + l.residual_cdf, rows[1], (size_t)V * sizeof(double));
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&rb); PyBuffer_Release(&db); PyBuffer_Release(&qb); PyBuffer_Release(&sb);
    PyBuffer_Release(&mb);
    return result;
}

/* state_counts(records, rng, accepted, V, G, keys, n, x) -> (t, x)
 * n steps of one order-N chain from state x over the records of `keys` states (every state packed by
 * state_pack), nothing recorded: each step adds to accepted (int64[1]) and its (state, emitted) count in the
 * records (n <= 2^32 - 1 minus the steps counted since the last state_flush), the uniforms drawn from rng (a
 * PCG64 state, advanced): the steps of moving_counts. */
static PyObject *state_counts(PyObject *self, PyObject *args)
{
    Py_buffer rb, gb, ab;
    Py_ssize_t V, G, keys, n, x;
    if (!PyArg_ParseTuple(args, "w*w*w*nnnnn", &rb, &gb, &ab, &V, &G, &keys, &n, &x))
        return NULL;
    PyObject *result = NULL;
    RecordLayout l;
    if (!HAVE_PCG64) {
        PyErr_SetString(PyExc_NotImplementedError, "state_counts: built without 128-bit integers (no PCG64)");
        goto done;
    }
    if (!(records_of(&rb, V, G, keys, &l, "state_counts") && need(&gb, 4, 8, "rng") && need(&ab, 1, 8, "accepted")))
        goto done;
    if (x < 0 || x >= keys || n < 0 || n > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "state_counts: x in range and 0 <= n < 2^32 needed");
        goto done;
    }
    {
        int64_t cx = x, t;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
#if X86_CLONES
        if (has_avx2_bmi2())
            t = record_loop_avx2(rb.buf, l, gb.buf, keys, ab.buf, n, &cx, &bad);
        else
#endif
            t = record_loop(rb.buf, l, gb.buf, keys, ab.buf, n, &cx, &bad);
        Py_END_ALLOW_THREADS
        if (bad)
            PyErr_SetString(PyExc_ValueError, "state_counts: a move leads out of the move table's states");
        else
            result = Py_BuildValue("nn", (Py_ssize_t)t, (Py_ssize_t)cx);
    }
done:
    PyBuffer_Release(&rb); PyBuffer_Release(&gb); PyBuffer_Release(&ab);
    return result;
}

/* state_flush(records, pairs, V, G, keys): adds every record's counts to pairs (int64, keys x V,
 * [state * V + emitted]) and zeroes them. */
static PyObject *state_flush(PyObject *self, PyObject *args)
{
    Py_buffer rb, pb;
    Py_ssize_t V, G, keys;
    if (!PyArg_ParseTuple(args, "w*w*nnn", &rb, &pb, &V, &G, &keys))
        return NULL;
    PyObject *result = NULL;
    RecordLayout l;
    if (!(records_of(&rb, V, G, keys, &l, "state_flush") && need(&pb, keys * V, 8, "pairs")))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < keys; ++s) {
        char *rec = (char *)rb.buf + s * l.size;
        double *entries = (double *)(rec + l.head);
        uint64_t *mask = (uint64_t *)(rec + l.mask);
        int64_t *pairs = (int64_t *)pb.buf + s * V;
        for (int64_t w = 0; w < (V + 63) / 64; ++w) {
            for (uint64_t bits = mask[w]; bits; bits &= bits - 1) {
                const int64_t y = 64 * w + lowest_bit(bits);
                uint32_t *count = (uint32_t *)(entries + 3 * y + 2) + 1;
                pairs[y] += *count;
                *count = 0;
            }
            mask[w] = 0;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&rb); PyBuffer_Release(&pb);
    return result;
}

/* state_codes(records, codes, counts, V, G, keys) -> m
 * Writes the code state * V + emitted and the count of every pair the records counted, by increasing code, into
 * codes and counts (int64, room for every pair counted), zeroes the records' counts and returns how many: the
 * non-zero entries of a flushed pairs table, without the table. */
static PyObject *state_codes(PyObject *self, PyObject *args)
{
    Py_buffer rb, cb, nb;
    Py_ssize_t V, G, keys;
    if (!PyArg_ParseTuple(args, "w*w*w*nnn", &rb, &cb, &nb, &V, &G, &keys))
        return NULL;
    PyObject *result = NULL;
    RecordLayout l;
    if (!records_of(&rb, V, G, keys, &l, "state_codes"))
        goto done;
    {
        const Py_ssize_t room = cb.len / 8 < nb.len / 8 ? cb.len / 8 : nb.len / 8;
        Py_ssize_t m = 0;
        int full = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t s = 0; s < keys && !full; ++s) {
            char *rec = (char *)rb.buf + s * l.size;
            double *entries = (double *)(rec + l.head);
            uint64_t *mask = (uint64_t *)(rec + l.mask);
            for (int64_t w = 0; w < (V + 63) / 64 && !full; ++w) {
                for (uint64_t bits = mask[w]; bits; bits &= bits - 1) { /* the tokens met, increasing */
                    const int64_t y = 64 * w + lowest_bit(bits);
                    uint32_t *count = (uint32_t *)(entries + 3 * y + 2) + 1;
                    if (m == room) {
                        full = 1;
                        break;
                    }
                    ((int64_t *)cb.buf)[m] = s * V + y;
                    ((int64_t *)nb.buf)[m++] = *count;
                    *count = 0;
                }
                if (!full)
                    mask[w] = 0;
            }
        }
        Py_END_ALLOW_THREADS
        if (full)
            PyErr_SetString(PyExc_ValueError, "state_codes: more pairs counted than codes has room for");
        else
            result = PyLong_FromSsize_t(m);
    }
done:
    PyBuffer_Release(&rb); PyBuffer_Release(&cb); PyBuffer_Release(&nb);
    return result;
}

static PyMethodDef methods[] = {
    {"chain", chain, METH_VARARGS, "Run one chain over a chunk of uniforms; stop at a context without a table."},
    {"isa", isa, METH_VARARGS, "The instruction set of the plain loop ('avx2,bmi2' or 'baseline'); set with 'baseline'/'auto'."},
    {"batch", batch, METH_VARARGS, "Run B chains in lock step; every context must have a table."},
    {"moving_counts", moving_counts, METH_VARARGS, "Run one order-N chain on a move table, counting its (state, emitted) pairs only."},
    {"finish", finish, METH_VARARGS, "Fill consecutive table slots' totals, lasts and guides from their three rows."},
    {"state_pack", state_pack, METH_VARARGS, "Pack consecutive order-N states' tables and moves into their records."},
    {"state_counts", state_counts, METH_VARARGS, "Run one order-N chain on packed state records, counting in them."},
    {"state_flush", state_flush, METH_VARARGS, "Add the packed state records' counts to int64 pairs and zero them."},
    {"state_codes", state_codes, METH_VARARGS, "The packed state records' counted pairs as increasing codes and counts."},
    {"jsonl", jsonl, METH_VARARGS, "Format a chunk of steps as JSONL lines laid out by the telemetry schema's texts."},
    {"compact_chain", compact_chain, METH_VARARGS, "Run one chain on compact tables; stop at a context without a slot."},
    {"drafts_chain", drafts_chain, METH_VARARGS, "Run one chain with N drafts per step on a verifier's tables."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Compiled inner loops of the speculative bigram chain.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "PCG64", HAVE_PCG64) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
