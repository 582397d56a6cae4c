/*
 * The C limit of `make bench` (benchmarks/limit.py): the chain as the plainest fast loop a C programmer
 * would write, compiled with -O3 -march=native.  Written from the specification, not from thermospec's
 * kernel: it builds its own tables from the model and shares no code or layout with the package.
 * Benchmark code, not part of the package.
 *
 *   limit MODEL CHAINS STEPS THREADS OUT [dump]
 *
 * MODEL: int64 V, then float64 p[V][V] (the target's row of each context), q[V][V] (F(psi) of each
 *   context's payload) and cdf[V][V] (the cumulative F(psi) the TSU inverts to draw).
 * CHAINS: int64 B, then per chain int64 x0 and uint64 state_hi, state_lo, inc_hi, inc_lo: the chain's
 *   PCG64 generator (NumPy's, the contract's) after its start token; a uniform is (next64 >> 11) * 2^-53,
 *   three per step.
 * Each step from context x: draft y = the first token whose cdf exceeds u0 * total (capped at the last
 * token of positive mass); accept iff u1 < p(y) / q(y); else draw from the residual max(p - q, 0)
 * (p itself where that is all 0) with u2; count (x, emitted).  Both draws start from a guide table
 * (G = 2V rounded up to a power of two buckets: bucket k brackets every target of u in [k/G, (k+1)/G))
 * and finish with a branch-free bisection of the bracket.  B chains are split over THREADS threads,
 * each running its chains one after another.  OUT gets int64 accepted, int64 counts[V][V] and, with
 * `dump`, int64 emitted[B][STEPS].  Prints the stepping loop's wall and CPU seconds.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef unsigned __int128 u128;

static int64_t V, G, B, STEPS;
static double *draft_cdf, *ratio, *residual_cdf, *draft_total, *residual_total;
static int64_t *draft_last, *residual_last;
static int32_t *draft_guide, *residual_guide;
static int64_t *x0;
static u128 *state, *inc;
static int64_t *emitted;

static const u128 MULT = ((u128)0x2360ED051FC65DA4ULL << 64) | 0x4385DF649FCCF645ULL;

static inline double uniform(u128 *s, u128 c)
{
    *s = *s * MULT + c;
    uint64_t x = (uint64_t)(*s >> 64) ^ (uint64_t)*s;
    unsigned r = (unsigned)(*s >> 122);
    x = (x >> r) | (x << ((64 - r) & 63));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

/* Index of the first entry of cdf[0..n) above t (bisect_right). */
static int64_t bisect_right(const double *cdf, int64_t n, double t)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (cdf[mid] <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* One context's guide, its total and its last token of positive mass. */
static void prepare(const double *cdf, int32_t *guide, double *total, int64_t *last)
{
    *total = cdf[V - 1];
    int64_t i = 0;
    while (cdf[i] < *total)
        ++i;
    *last = i;
    for (int64_t k = 0; k <= G; ++k)
        guide[k] = (int32_t)bisect_right(cdf, V, ((double)k / (double)G) * *total);
}

static inline int64_t draw(const double *cdf, const int32_t *guide, double u, double total, int64_t last)
{
    const int64_t k = (int64_t)(u * (double)G);
    const double t = u * total;
    int64_t i = guide[k], n = guide[k + 1] - i;
    while (n > 0) {
        const int64_t half = (n + 1) >> 1;
        i += half & -(int64_t)(cdf[i + half - 1] <= t);
        n -= half;
    }
    return i < last ? i : last;
}

typedef struct {
    int64_t b0, b1, accepted;
    int64_t *counts;
} Work;

static void *work(void *arg)
{
    Work *w = arg;
    const int64_t nV = V, nG = G, steps = STEPS;
    int64_t *restrict counts = w->counts, acc = 0;
    for (int64_t b = w->b0; b < w->b1; ++b) {
        u128 s = state[b];
        const u128 c = inc[b];
        int64_t x = x0[b];
        int64_t *out = emitted ? emitted + b * steps : NULL;
        for (int64_t t = 0; t < steps; ++t) {
            const double u0 = uniform(&s, c), u1 = uniform(&s, c), u2 = uniform(&s, c);
            const int64_t y = draw(draft_cdf + x * nV, draft_guide + x * (nG + 1), u0, draft_total[x], draft_last[x]);
            int64_t next = y;
            if (u1 < ratio[x * nV + y])
                ++acc;
            else
                next = draw(residual_cdf + x * nV, residual_guide + x * (nG + 1), u2, residual_total[x],
                            residual_last[x]);
            ++counts[x * nV + next];
            if (out)
                out[t] = next;
            x = next;
        }
    }
    w->accepted = acc;
    return NULL;
}

static void *load(FILE *f, size_t size, size_t count)
{
    void *p = malloc(size * count);
    if (p == NULL || fread(p, size, count, f) != count) {
        fprintf(stderr, "limit: short input\n");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: limit MODEL CHAINS STEPS THREADS OUT [dump]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL || fread(&V, 8, 1, f) != 1) {
        fprintf(stderr, "limit: cannot read %s\n", argv[1]);
        return 1;
    }
    const size_t VV = (size_t)(V * V);
    double *p = load(f, 8, VV), *q = load(f, 8, VV);
    draft_cdf = load(f, 8, VV);
    fclose(f);
    for (G = 1; G < 2 * V; G *= 2)
        ;
    ratio = malloc(8 * VV);
    residual_cdf = malloc(8 * VV);
    draft_guide = malloc(4 * (size_t)(V * (G + 1)));
    residual_guide = malloc(4 * (size_t)(V * (G + 1)));
    draft_total = malloc(8 * (size_t)V);
    residual_total = malloc(8 * (size_t)V);
    draft_last = malloc(8 * (size_t)V);
    residual_last = malloc(8 * (size_t)V);
    for (int64_t x = 0; x < V; ++x) {
        const double *px = p + x * V, *qx = q + x * V;
        double *rx = residual_cdf + x * V, sum = 0.0;
        for (int64_t v = 0; v < V; ++v) {
            ratio[x * V + v] = qx[v] > 0 ? px[v] / qx[v] : 0.0;
            sum += px[v] - (qx[v] < px[v] ? qx[v] : px[v]);
            rx[v] = sum;
        }
        if (!(sum > 0)) { /* p and q agree to rounding: draw from p */
            sum = 0.0;
            for (int64_t v = 0; v < V; ++v) {
                sum += px[v];
                rx[v] = sum;
            }
        }
        prepare(draft_cdf + x * V, draft_guide + x * (G + 1), &draft_total[x], &draft_last[x]);
        prepare(rx, residual_guide + x * (G + 1), &residual_total[x], &residual_last[x]);
    }
    free(p);
    free(q);
    f = fopen(argv[2], "rb");
    if (f == NULL || fread(&B, 8, 1, f) != 1) {
        fprintf(stderr, "limit: cannot read %s\n", argv[2]);
        return 1;
    }
    uint64_t *raw = load(f, 8, (size_t)(5 * B));
    fclose(f);
    x0 = malloc(8 * (size_t)B);
    state = malloc(sizeof(u128) * (size_t)B);
    inc = malloc(sizeof(u128) * (size_t)B);
    for (int64_t b = 0; b < B; ++b) {
        x0[b] = (int64_t)raw[5 * b];
        state[b] = ((u128)raw[5 * b + 1] << 64) | raw[5 * b + 2];
        inc[b] = ((u128)raw[5 * b + 3] << 64) | raw[5 * b + 4];
    }
    STEPS = atoll(argv[3]);
    int64_t threads = atoll(argv[4]);
    if (threads < 1)
        threads = 1;
    if (threads > B)
        threads = B;
    emitted = argc > 6 && strcmp(argv[6], "dump") == 0 ? malloc(8 * (size_t)(B * STEPS)) : NULL;
    Work *works = calloc((size_t)threads, sizeof(Work));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    for (int64_t i = 0; i < threads; ++i) {
        works[i].b0 = B * i / threads;
        works[i].b1 = B * (i + 1) / threads;
        works[i].counts = calloc(VV, 8);
    }
    struct timespec start, stop, cpu_start, cpu_stop;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_start);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int64_t i = 1; i < threads; ++i)
        pthread_create(&ids[i], NULL, work, &works[i]);
    work(&works[0]);
    for (int64_t i = 1; i < threads; ++i)
        pthread_join(ids[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &stop);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_stop);
    int64_t accepted = 0;
    for (int64_t i = 0; i < threads; ++i) {
        accepted += works[i].accepted;
        if (i > 0)
            for (size_t k = 0; k < VV; ++k)
                works[0].counts[k] += works[i].counts[k];
    }
    f = fopen(argv[5], "wb");
    if (f == NULL) {
        fprintf(stderr, "limit: cannot write %s\n", argv[5]);
        return 1;
    }
    fwrite(&accepted, 8, 1, f);
    fwrite(works[0].counts, 8, VV, f);
    if (emitted)
        fwrite(emitted, 8, (size_t)(B * STEPS), f);
    fclose(f);
    printf("%.9f %.9f\n", (double)(stop.tv_sec - start.tv_sec) + 1e-9 * (double)(stop.tv_nsec - start.tv_nsec),
           (double)(cpu_stop.tv_sec - cpu_start.tv_sec) + 1e-9 * (double)(cpu_stop.tv_nsec - cpu_start.tv_nsec));
    return 0;
}
