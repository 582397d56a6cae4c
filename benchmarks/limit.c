/*
 * The C limit of `make bench` (benchmarks/limit.py): the same chain as thermospec, as a minimal
 * C loop compiled with -O3 -march=native.  Benchmark code, not part of the package.
 *
 *   limit TABLES CHAINS STEPS THREADS OUT [dump]
 *
 * TABLES: the per-context tables thermospec builds (kernels.TableCache), in context order:
 *   int64 V, int64 G, then float64 tables[V][3][V] (draft cdf | p / q | residual cdf),
 *   float64 totals[V][2], int64 lasts[V][2], int32 guides[V][2][G + 1].
 * CHAINS: int64 B, then per chain int64 x0 and uint64 state_hi, state_lo, inc_hi, inc_lo: the
 *   chain's NumPy PCG64 generator after its start token, so the uniforms here are the ones
 *   Generator.random gives thermospec: (next64 >> 11) * 2^-53, three per step.
 * Each step: draft y by its guide bucket and a bisection, accept iff u_accept < ratio[y]
 * (strict), else the residual draw the same way; count the (context, emitted) pair.
 * B chains run on THREADS threads, each stepping GROUP chains in lock step (their searches
 * overlap in the CPU).  OUT gets int64 accepted, int64 transitions[V][V] (summed over the
 * chains) and, with `dump`, int64 emitted[B][STEPS].  Prints the stepping loop's seconds, wall
 * clock and CPU time (of all threads).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GROUP 8

typedef unsigned __int128 u128;

static int64_t V, G, B, STEPS;
static double *tables, *totals;
static int64_t *lasts, *x0;
static int32_t *guides;
static u128 *state, *inc;
static int64_t *emitted; /* B x STEPS, or NULL */

static const u128 MULT = ((u128)0x2360ED051FC65DA4ULL << 64) | 0x4385DF649FCCF645ULL;

static inline double uniform(u128 *s, u128 c)
{
    *s = *s * MULT + c;
    uint64_t x = (uint64_t)(*s >> 64) ^ (uint64_t)*s;
    unsigned r = (unsigned)(*s >> 122);
    x = (x >> r) | (x << ((64 - r) & 63));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

static inline int64_t draw(const double *cdf, const int32_t *guide, int64_t G, double u, double total, int64_t last)
{
    /* The guide's bracket [lo, hi], bisected without a branch on the data (the search that
     * measured fastest here, the one thermospec's kernel runs). */
    int64_t k = (int64_t)(u * (double)G);
    int64_t lo = guide[k], n = guide[k + 1] - lo;
    double t = u * total;
    while (n > 1) {
        int64_t half = n >> 1;
        lo += half & -(int64_t)(cdf[lo + half - 1] <= t);
        n -= half;
    }
    lo += n == 1 && cdf[lo] <= t;
    return lo > last ? last : lo;
}

typedef struct {
    int64_t b0, b1, accepted;
    int64_t *counts;
} Work;

static void *work(void *arg)
{
    Work *w = arg;
    /* Locals, not the globals: a count's store could otherwise alias them (all int64). */
    const int64_t nV = V, nG = G, steps = STEPS;
    int64_t *restrict counts = w->counts, acc = 0;
    for (int64_t g0 = w->b0; g0 < w->b1; g0 += GROUP) {
        int64_t n = w->b1 - g0 < GROUP ? w->b1 - g0 : GROUP;
        int64_t x[GROUP];
        uint64_t hi[GROUP], lo[GROUP]; /* two words: a u128 array element reloads as a vector, unforwarded */
        for (int64_t j = 0; j < n; ++j) {
            x[j] = x0[g0 + j];
            hi[j] = (uint64_t)(state[g0 + j] >> 64);
            lo[j] = (uint64_t)state[g0 + j];
        }
        for (int64_t t = 0; t < steps; ++t) {
            for (int64_t j = 0; j < n; ++j) {
                u128 s = ((u128)hi[j] << 64) | lo[j];
                const u128 c = inc[g0 + j];
                double u0 = uniform(&s, c), u1 = uniform(&s, c), u2 = uniform(&s, c);
                hi[j] = (uint64_t)(s >> 64);
                lo[j] = (uint64_t)s;
                int64_t cx = x[j];
                const double *row = tables + cx * 3 * nV;
                const int32_t *guide = guides + cx * 2 * (nG + 1);
                int64_t y = draw(row, guide, nG, u0, totals[2 * cx], lasts[2 * cx]), nx;
                if (u1 < row[nV + y]) {
                    nx = y;
                    acc += 1;
                } else {
                    nx = draw(row + 2 * nV, guide + nG + 1, nG, u2, totals[2 * cx + 1], lasts[2 * cx + 1]);
                }
                counts[cx * nV + nx] += 1;
                if (emitted)
                    emitted[(g0 + j) * steps + t] = nx;
                x[j] = nx;
            }
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
        fprintf(stderr, "usage: limit TABLES CHAINS STEPS THREADS OUT [dump]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL || fread(&V, 8, 1, f) != 1 || fread(&G, 8, 1, f) != 1) {
        fprintf(stderr, "limit: cannot read %s\n", argv[1]);
        return 1;
    }
    tables = load(f, 8, (size_t)(V * 3 * V));
    totals = load(f, 8, (size_t)(2 * V));
    lasts = load(f, 8, (size_t)(2 * V));
    guides = load(f, 4, (size_t)(V * 2 * (G + 1)));
    fclose(f);
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
        works[i].counts = calloc((size_t)(V * V), 8);
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
            for (int64_t k = 0; k < V * V; ++k)
                works[0].counts[k] += works[i].counts[k];
    }
    f = fopen(argv[5], "wb");
    if (f == NULL) {
        fprintf(stderr, "limit: cannot write %s\n", argv[5]);
        return 1;
    }
    fwrite(&accepted, 8, 1, f);
    fwrite(works[0].counts, 8, (size_t)(V * V), f);
    if (emitted)
        fwrite(emitted, 8, (size_t)(B * STEPS), f);
    fclose(f);
    printf("%.9f %.9f\n", (double)(stop.tv_sec - start.tv_sec) + 1e-9 * (double)(stop.tv_nsec - start.tv_nsec),
           (double)(cpu_stop.tv_sec - cpu_start.tv_sec) + 1e-9 * (double)(cpu_stop.tv_nsec - cpu_start.tv_nsec));
    return 0;
}
