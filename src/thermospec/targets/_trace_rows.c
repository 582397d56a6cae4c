/* Trace rows at compiled speed: the passes over V of a float16 row's softmax, top-K and metrics.
 *
 * Every function computes the same IEEE operations on the same operands, in the same order,
 * as the NumPy code of thermospec.targets.trace_rows that it replaces, so the bytes are the
 * same: exp and log are never called here (the caller passes their values, computed by NumPy,
 * per distinct float16 code), and every sum is NumPy's pairwise summation of a contiguous
 * float64 array (numpy/_core/src/umath/loops_utils.h.src: blocks of 8 accumulators up to 128
 * items, halves rounded to a multiple of 8 above).  Buffers come in through the buffer protocol;
 * the GIL is released during each pass, so positions craft in parallel on threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static int check(Py_buffer *b, Py_ssize_t itemsize, const char *name)
{
    if (b->len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte items", name, b->len,
                     itemsize);
        return -1;
    }
    return 0;
}

/* code_counts(codes: uint16[V], counts: int64[65536] (written)): how many entries hold each code. */
static PyObject *code_counts(PyObject *self, PyObject *args)
{
    Py_buffer cb, nb;
    if (!PyArg_ParseTuple(args, "y*w*", &cb, &nb)) {
        return NULL;
    }
    if (check(&cb, 2, "codes") || nb.len != CODES * 8) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "counts: need 65536 int64");
        }
        PyBuffer_Release(&cb);
        PyBuffer_Release(&nb);
        return NULL;
    }
    const uint16_t *codes = cb.buf;
    int64_t *counts = nb.buf;
    Py_ssize_t V = cb.len / 2;
    Py_BEGIN_ALLOW_THREADS
    memset(counts, 0, CODES * sizeof *counts);
    for (Py_ssize_t i = 0; i < V; i++) {
        counts[codes[i]]++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&cb);
    PyBuffer_Release(&nb);
    Py_RETURN_NONE;
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
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) {
            r[j] = table[codes[j]];
        }
        for (i = 8; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; j++) {
                r[j] += table[codes[i + j]];
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

/* softmax16(codes: uint16[V], e_by_code: float64[65536], counts: int64[65536], p_by_code: float64[65536]
 * (written where counts > 0), p: float64[V] (written)): S = sum of e_i = e_by_code[codes[i]] (pairwise, in
 * order), p_by_code[c] = e_by_code[c] / S, p_i = p_by_code[codes[i]]: NumPy's ``e / e.sum()``. */
static PyObject *softmax16(PyObject *self, PyObject *args)
{
    Py_buffer cb, eb, nb, qb, pb;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &cb, &eb, &nb, &qb, &pb)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (check(&cb, 2, "codes") || eb.len != CODES * 8 || nb.len != CODES * 8 || qb.len != CODES * 8
        || pb.len != (cb.len / 2) * 8) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "softmax16: need tables of 65536 items and p of V float64");
        }
        goto done;
    }
    const uint16_t *codes = cb.buf;
    const double *e_by_code = eb.buf;
    const int64_t *counts = nb.buf;
    double *p_by_code = qb.buf, *p = pb.buf;
    Py_ssize_t V = cb.len / 2;
    double total;
    Py_BEGIN_ALLOW_THREADS
    total = pairwise_gather(codes, e_by_code, V);
    for (Py_ssize_t c = 0; c < CODES; c++) {
        if (counts[c]) {
            p_by_code[c] = e_by_code[c] / total;
        }
    }
    for (Py_ssize_t i = 0; i < V; i++) {
        p[i] = p_by_code[codes[i]];
    }
    Py_END_ALLOW_THREADS
    result = PyFloat_FromDouble(total);
done:
    PyBuffer_Release(&cb);
    PyBuffer_Release(&eb);
    PyBuffer_Release(&nb);
    PyBuffer_Release(&qb);
    PyBuffer_Release(&pb);
    return result;
}

/* select_codes(codes: uint16[V], chosen: uint8[65536], out: int64[V] (written)) -> n: the increasing i whose
 * code is chosen. */
static PyObject *select_codes(PyObject *self, PyObject *args)
{
    Py_buffer cb, mb, ob;
    if (!PyArg_ParseTuple(args, "y*y*w*", &cb, &mb, &ob)) {
        return NULL;
    }
    if (check(&cb, 2, "codes") || mb.len != CODES || ob.len != (cb.len / 2) * 8) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "select_codes: need chosen of 65536 uint8 and out of V int64");
        }
        PyBuffer_Release(&cb);
        PyBuffer_Release(&mb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    const uint16_t *codes = cb.buf;
    const uint8_t *chosen = mb.buf;
    int64_t *out = ob.buf;
    Py_ssize_t V = cb.len / 2, n = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < V; i++) {
        if (chosen[codes[i]]) {
            out[n++] = i;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&cb);
    PyBuffer_Release(&mb);
    PyBuffer_Release(&ob);
    return PyLong_FromSsize_t(n);
}

/* What the metrics read at token i, in increasing i (the ids' cursor only moves forward). */
struct against {
    const double *p, *logp, *q_ids, *log_q_ids;
    const uint16_t *codes;
    const int64_t *ids;
    Py_ssize_t K, next;
    double eps, log_eps;
    int infinite;
};

static double overlap_at(struct against *a, Py_ssize_t i)
{
    double q = a->eps;
    if (a->next < a->K && a->ids[a->next] == i) {
        q = a->q_ids[a->next++];
    }
    return a->p[i] < q ? a->p[i] : q;
}

static double gap_at(struct against *a, Py_ssize_t i)
{
    double q = a->eps, log_q = a->log_eps;
    if (a->next < a->K && a->ids[a->next] == i) {
        q = a->q_ids[a->next];
        log_q = a->log_q_ids[a->next++];
    }
    if (q <= 0) {
        a->infinite = 1;
        return 0.0;
    }
    return a->p[i] * (a->logp[a->codes[i]] - log_q);
}

/* NumPy's pairwise sum of at(a, i), i in [lo, lo + n), visiting i in increasing order (operands sequenced). */
#define PAIRWISE_OF(NAME, AT)                                                                       \
    static double NAME(struct against *a, Py_ssize_t lo, Py_ssize_t n)                             \
    {                                                                                               \
        if (n < 8) {                                                                                \
            double res = -0.0;                                                                      \
            for (Py_ssize_t i = 0; i < n; i++) {                                                    \
                res += AT(a, lo + i);                                                               \
            }                                                                                       \
            return res;                                                                             \
        }                                                                                           \
        if (n <= 128) {                                                                             \
            double r[8];                                                                            \
            Py_ssize_t i;                                                                           \
            for (int j = 0; j < 8; j++) {                                                           \
                r[j] = AT(a, lo + j);                                                               \
            }                                                                                       \
            for (i = 8; i < n - (n % 8); i += 8) {                                                  \
                for (int j = 0; j < 8; j++) {                                                       \
                    r[j] += AT(a, lo + i + j);                                                      \
                }                                                                                   \
            }                                                                                       \
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));         \
            for (; i < n; i++) {                                                                    \
                res += AT(a, lo + i);                                                               \
            }                                                                                       \
            return res;                                                                             \
        }                                                                                           \
        Py_ssize_t n2 = n / 2;                                                                      \
        n2 -= n2 % 8;                                                                               \
        double left = NAME(a, lo, n2);                                                              \
        double right = NAME(a, lo + n2, n - n2);                                                    \
        return left + right;                                                                        \
    }

PAIRWISE_OF(overlap_sum, overlap_at)
PAIRWISE_OF(gap_sum, gap_at)

/* metrics(p, codes, logp_by_code, ids (int64, increasing), q_ids, log_q_ids, eps, log_eps, full_support,
 * work: float64[V]) -> (overlap, ce): sum(min(p, q)) and sum over p > 0 of p (log p - log q) (inf if q <= 0
 * there), q = eps off the ids, as core.metrics computes them on the dense q.  With full_support (every p > 0)
 * the gap's terms are summed as they are met; else they are first written down, in order, in work. */
static PyObject *metrics(PyObject *self, PyObject *args)
{
    Py_buffer pb, cb, lb, ib, qb, lqb, wb;
    double eps, log_eps;
    int full;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*ddpw*", &pb, &cb, &lb, &ib, &qb, &lqb, &eps, &log_eps, &full, &wb)) {
        return NULL;
    }
    Py_ssize_t V = pb.len / 8, K = ib.len / 8;
    PyObject *result = NULL;
    if (check(&pb, 8, "p") || cb.len != V * 2 || lb.len != CODES * 8 || qb.len != K * 8 || lqb.len != K * 8
        || (!full && wb.len != V * 8)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "metrics: buffers of mismatched lengths");
        }
        goto done;
    }
    struct against a = {pb.buf, lb.buf, qb.buf, lqb.buf, cb.buf, ib.buf, K, 0, eps, log_eps, 0};
    double *work = wb.buf;
    double overlap, ce;
    Py_BEGIN_ALLOW_THREADS
    overlap = overlap_sum(&a, 0, V);
    a.next = 0;
    if (full) {
        ce = gap_sum(&a, 0, V);
    } else {
        Py_ssize_t n = 0;
        for (Py_ssize_t i = 0; i < V && !a.infinite; i++) {
            double q = eps, log_q = log_eps;
            if (a.next < K && a.ids[a.next] == i) {
                q = a.q_ids[a.next];
                log_q = a.log_q_ids[a.next++];
            }
            if (a.p[i] > 0) {
                if (q <= 0) {
                    a.infinite = 1;
                } else {
                    work[n++] = a.p[i] * (a.logp[a.codes[i]] - log_q);
                }
            }
        }
        ce = a.infinite ? 0.0 : pairwise_sum(work, n);
    }
    Py_END_ALLOW_THREADS
    if (a.infinite) {
        ce = Py_HUGE_VAL;
    } else if (!(ce > 0)) {
        ce = 0.0;
    }
    result = Py_BuildValue("dd", overlap, ce);
done:
    PyBuffer_Release(&pb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&qb);
    PyBuffer_Release(&lqb);
    PyBuffer_Release(&wb);
    return result;
}

static PyMethodDef methods[] = {
    {"code_counts", code_counts, METH_VARARGS, "counts[c] = entries holding code c"},
    {"softmax16", softmax16, METH_VARARGS, "p = e_by_code[codes] / sum (NumPy's pairwise sum); returns the sum"},
    {"select_codes", select_codes, METH_VARARGS, "the increasing indices whose code is chosen"},
    {"metrics", metrics, METH_VARARGS, "(overlap, ce gap) of p against q = eps off the ids"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trace_rows", NULL, -1, methods};

PyMODINIT_FUNC PyInit__trace_rows(void)
{
    return PyModule_Create(&module);
}
