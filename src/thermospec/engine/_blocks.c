/*
 * Compiled γ-token speculative blocks (thermospec.engine._blocks): the loop of
 * thermospec.engine.blocks.run_blocks over one chunk of uniforms, block for block the
 * same tokens (run_blocks_reference is the specification).
 *
 * Per-key tables, laid out by thermospec.engine.block_kernel.BlockTables:
 *
 *   tables[slot] = [draft_cdf (V) | ratio (V) | residual_cdf (V) | bonus_cdf (V)]   float64
 *   totals[slot] = [last entry of the draft, residual and bonus cdfs]                float64
 *   lasts[slot]  = [their last positive indices]                                      int64
 *   slot_of[key] = slot holding the key's tables, or -1                               int64
 *
 * A draw is sampling.inverse_cdf (engine.step.draw_token) on one uniform:
 *   y = min(bisect_right(cdf, u * total), last)
 * and draft y in slot s is accepted iff u_accept < ratio[y] (strict), as engine.step.correct_token.
 * The products and comparisons are the same IEEE double operations as the Python path (built
 * without FMA contraction), so both emit the same tokens.
 *
 * The key after a token (drafted or emitted) is the source's move (engine.keys):
 *   MOVE_TOKEN     the token (the bigram chain);
 *   MOVE_POSITION  key + 1 mod positions (a trace, teacher-forced);
 *   MOVE_TABLE     moves[key * V + token] (an order-N target's states, targets.context_moves).
 * With a move table every state reached for the first time (seen[state] == 0) is appended to
 * `fresh`, in the order reached: the order in which OrderTarget.next_context interns contexts.
 *
 * The kernel is resumable: at a key without tables it returns that key; the caller loads the
 * key's tables and calls again from the same block (which starts over: a block is a function of
 * its first key, its uniforms and the tables).  No NumPy headers: arrays arrive through the
 * buffer protocol, their sizes checked here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

enum { MOVE_TOKEN = 0, MOVE_POSITION = 1, MOVE_TABLE = 2 };
enum { DRAFT = 0, RATIO = 1, RESIDUAL = 2, BONUS = 3 };

typedef struct {
    const double *tables;
    const double *totals;
    const int64_t *lasts;
    const int64_t *slot_of;
    int64_t V;
    int64_t keys;
    int64_t capacity;
    int mode;
    int64_t positions;
    const int32_t *moves;
    uint8_t *seen;
    int64_t *fresh;
    int64_t fresh_count;
    int64_t fresh_cap;
} Blocks;

/* Python's bisect.bisect_right(cdf[0:V], target): the same comparisons in the same order. */
INLINE int64_t bisect_right(const double *cdf, int64_t V, double target)
{
    int64_t lo = 0, hi = V;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (target < cdf[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* draw_token on the cdf `which` (DRAFT, RESIDUAL or BONUS) of a slot; `at` is its column in totals and lasts. */
INLINE int64_t draw(const Blocks *b, int64_t slot, int which, int at, double u)
{
    int64_t y = bisect_right(b->tables + (slot * 4 + which) * b->V, b->V, u * b->totals[slot * 3 + at]);
    int64_t last = b->lasts[slot * 3 + at];
    return y > last ? last : y;
}

/* The key after `token` in `key` (-1 for a move outside the table). */
INLINE int64_t advance(Blocks *b, int64_t key, int64_t token)
{
    if (b->mode == MOVE_TOKEN)
        return token;
    if (b->mode == MOVE_POSITION)
        return key + 1 < b->positions ? key + 1 : 0;
    int64_t next = b->moves[key * b->V + token];
    if (next < 0 || next >= b->keys)
        return -1;
    if (!b->seen[next]) {
        b->seen[next] = 1;
        b->fresh[b->fresh_count++] = next;
    }
    return next;
}

static int need(Py_buffer *buf, Py_ssize_t items, Py_ssize_t itemsize, const char *name)
{
    if (buf->len < items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: buffer too small (%zd bytes, need %zd)", name, buf->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

/*
 * run(u, tables, totals, lasts, slot_of, moves, seen, fresh,
 *     first_step, context, drafted, draft_keys, accepted_length, final,
 *     gamma, V, n, i, x, emitted, steps, mode, positions, fresh_count, fixed)
 *   -> (i, x, emitted, missing key or -1, fresh_count)
 *
 * Runs blocks i .. n - 1 of the chunk (row i of u holds block i's 2γ + 1 uniforms) from key x,
 * `emitted` tokens emitted before block i, until `steps` are emitted (the chunk's early break),
 * the chunk ends, or a key has no tables.  With `fixed`, every block starts at x (no move after
 * a block, no step bound).  moves, seen and fresh are None unless mode is MOVE_TABLE.
 */
static PyObject *run(PyObject *self, PyObject *args)
{
    Py_buffer ub, tb, tob, lb, sb, fsb, cb, db, kb, ab, zb;
    Py_buffer mb = {0}, seb = {0}, frb = {0};
    PyObject *mo, *seo, *fro;
    Py_ssize_t gamma, V, n, i, x, emitted, steps, mode, positions, fresh_count;
    int fixed;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*OOOw*w*w*w*w*w*nnnnnnnnnnp", &ub, &tb, &tob, &lb, &sb, &mo, &seo, &fro,
                          &fsb, &cb, &db, &kb, &ab, &zb, &gamma, &V, &n, &i, &x, &emitted, &steps, &mode,
                          &positions, &fresh_count, &fixed))
        return NULL;
    PyObject *result = NULL;
    int64_t *slots = NULL;
    if (mode == MOVE_TABLE) {
        if (PyObject_GetBuffer(mo, &mb, PyBUF_SIMPLE) < 0 || PyObject_GetBuffer(seo, &seb, PyBUF_WRITABLE) < 0 ||
            PyObject_GetBuffer(fro, &frb, PyBUF_WRITABLE) < 0)
            goto done;
    }
    const Py_ssize_t width = 2 * gamma + 1;
    const Py_ssize_t keys = sb.len / 8;
    const Py_ssize_t capacity = tob.len / (3 * 8);
    if ((mode == MOVE_TOKEN && keys < V) || gamma < 1 || V < 1 || n < 0 || i < 0 || i > n || mode < 0 || mode > 2 || keys < 1 ||
        (mode == MOVE_POSITION && positions < 1) || x < 0 || x >= keys) {
        PyErr_SetString(PyExc_ValueError, "blocks: bad gamma, V, n, i, key or mode");
        goto done;
    }
    if (!(need(&ub, n * width, 8, "u") && need(&tb, capacity * 4 * V, 8, "tables") &&
          need(&lb, capacity * 3, 8, "lasts") && need(&fsb, n, 8, "first_step") && need(&cb, n, 8, "context") &&
          need(&db, n * gamma, 8, "drafted") && need(&kb, n * gamma, 8, "draft_keys") &&
          need(&ab, n, 8, "accepted_length") && need(&zb, n, 8, "final")))
        goto done;
    if (mode == MOVE_TABLE && !(need(&mb, keys * V, 4, "moves") && need(&seb, keys, 1, "seen") &&
                                need(&frb, fresh_count + (n - i) * (gamma + 1), 8, "fresh")))
        goto done;
    if (mode == MOVE_POSITION && positions > keys) {
        PyErr_SetString(PyExc_ValueError, "blocks: slot_of must cover every position");
        goto done;
    }
    slots = malloc((size_t)gamma * sizeof(int64_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Blocks b = {tb.buf, tob.buf, lb.buf, sb.buf, V, keys, capacity, (int)mode, positions, mb.buf, seb.buf,
                frb.buf, fresh_count, frb.len / 8};
    const double *u = ub.buf;
    int64_t *first_step = fsb.buf, *context = cb.buf, *drafted = db.buf, *draft_keys = kb.buf;
    int64_t *accepted_length = ab.buf, *final = zb.buf;
    int64_t missing = -1;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; i < n; i++) {
        if (!fixed && emitted >= steps)
            break;
        const double *ui = u + i * width;
        int64_t *ys = drafted + i * gamma, *cs = draft_keys + i * gamma;
        int64_t c = x;
        int64_t k;
        for (k = 0; k < gamma; k++) {  /* draft y_k in key c_k, each draft the context of the next */
            int64_t s = b.slot_of[c];
            if ((uint64_t)s >= (uint64_t)b.capacity) {
                missing = c;
                break;
            }
            ys[k] = draw(&b, s, DRAFT, 0, ui[k]);
            cs[k] = c;
            slots[k] = s;
            c = advance(&b, c, ys[k]);
            if (c < 0) {
                bad = 1;
                break;
            }
        }
        if (missing != -1 || bad)
            break;
        int64_t accepted = gamma, z = -1;
        for (k = 0; k < gamma; k++) {  /* the step rule on each draft in turn: the first rejection ends the block */
            if (ui[gamma + k] < b.tables[(slots[k] * 4 + RATIO) * V + ys[k]])
                continue;
            accepted = k;
            z = draw(&b, slots[k], RESIDUAL, 1, ui[2 * gamma]);
            break;
        }
        if (accepted == gamma) {  /* the bonus token, from the row of the key after the last draft */
            int64_t s = b.slot_of[c];
            if ((uint64_t)s >= (uint64_t)b.capacity) {
                missing = c;
                break;
            }
            z = draw(&b, s, BONUS, 2, ui[2 * gamma]);
        }
        first_step[i] = emitted;
        context[i] = x;
        accepted_length[i] = accepted;
        final[i] = z;
        emitted += accepted + 1;
        if (!fixed) {
            int64_t next = advance(&b, accepted < gamma ? cs[accepted] : c, z);
            if (next < 0) {  /* the block is recorded: resume after it is impossible, so refuse the chunk */
                bad = 1;
                break;
            }
            x = next;
        }
    }
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "blocks: a move left the table");
        goto done;
    }
    result = Py_BuildValue("nnnLn", i, x, emitted, (long long)missing, (Py_ssize_t)b.fresh_count);
done:
    free(slots);
    PyBuffer_Release(&ub);
    PyBuffer_Release(&tb);
    PyBuffer_Release(&tob);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&fsb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&db);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&zb);
    if (mb.buf != NULL)
        PyBuffer_Release(&mb);
    if (seb.buf != NULL)
        PyBuffer_Release(&seb);
    if (frb.buf != NULL)
        PyBuffer_Release(&frb);
    return result;
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS, "Run a chunk's γ-token blocks; stop at a key without tables (resumable)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blocks", "Compiled γ-token speculative blocks.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__blocks(void) { return PyModule_Create(&module); }
