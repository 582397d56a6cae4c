/*
 * Compiled stepper on compact per-context tables (thermospec._compact).
 *
 * Exactly the step of thermospec.compact._python_steps (and hence of the dense
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
 * one step with uniforms (u_draft, u_accept, u_residual):
 *   y = min(first v with cdf(v) > u_draft * draft_total, draft_last)
 *   accept iff u_accept < ratio at y (0 off the support), strict
 *   else x = support[min(bisect_right(residual_cum, u_residual * residual_total), residual_last)]
 * Built without FMA contraction, so every product and sum rounds as in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static inline int64_t bisect_right(const double *a, int64_t n, double target)
{
    /* First index i with a[i] > target (n if none). */
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t m = lo + ((hi - lo) >> 1);
        if (a[m] <= target)
            lo = m + 1;
        else
            hi = m;
    }
    return lo;
}

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
    int64_t J = bisect_right(id_cdf, K, t);
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

static inline int64_t step(const Slots *sl, int64_t s, const double *u3, int64_t *proposed, uint8_t *accepted)
{
    const int64_t Km = sl->Km, Sm = sl->Sm;
    const double *f = sl->floats + s * (3 * Km + 1 + 2 * Sm);
    const int32_t *tk = sl->tokens + s * (Km + Sm);
    const double *sc = sl->scalars + 3 * s;
    const int64_t *ct = sl->counts + 4 * s;
    const int64_t K = ct[0], S = ct[1];
    const int32_t *support = tk + Km;
    int64_t J;
    int64_t y = first_above(f, f + Km, tk, K, sc[0], sl->V, u3[0] * sc[1], &J);
    if (y > ct[2])
        y = ct[2];
    *proposed = y;
    double ratio;
    if (J < K && (int64_t)tk[J] == y) { /* the draft is the J-th id: its ratio is at hand */
        ratio = f[2 * Km + 1 + J];
    } else {
        int64_t i = bisect_left_i32(support, S, y);
        ratio = (i < S && (int64_t)support[i] == y) ? f[3 * Km + 1 + i] : 0.0;
    }
    if (u3[1] < ratio) {
        *accepted = 1;
        return y;
    }
    *accepted = 0;
    int64_t r = bisect_right(f + 3 * Km + 1 + Sm, S, u3[2] * sc[2]);
    if (r > ct[3])
        r = ct[3];
    return (int64_t)support[r];
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

/* chain(floats, tokens, scalars, counts, slot_of, last_used, u, prev, proposed, emitted, accepted,
 *       V, max_k, max_s, start, n, x, clock) -> (t, x)
 * Runs steps start..n-1 of a chunk; stops early (t < n) at a context without a slot. */
static PyObject *chain(PyObject *self, PyObject *args)
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
        PyErr_SetString(PyExc_ValueError, "chain: context or start out of range");
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
            cx = step(&sl, s, u + 3 * t, proposed + t, accepted + t);
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

static PyMethodDef methods[] = {
    {"chain", chain, METH_VARARGS, "Run one chain on compact tables; stop at a context without a slot."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_compact",
                                    "Compiled stepper of the chain on compact per-context tables.", -1, methods};

PyMODINIT_FUNC PyInit__compact(void) { return PyModule_Create(&module); }
