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
#include "_draft_slots.h"

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

/*
 * Token trees (thermospec.engine.trees.run_trees; layout of the uniforms in its docstring): at each
 * level the node's N children are drawn from its key's draft cdf, then the level is one N-draft
 * verifier step (thermospec.engine.drafts.draft_step) on the key's tables (DraftSlots, _draft_slots.h;
 * the guides are not read: every draw bisects the whole cdf, as inverse_cdf does); a rejecting level
 * inverts its final cdf at the block's final uniform, and the block ends.  After γ accepted levels the
 * bonus token inverts the target's cdf of the key after the last one (bonus[bonus_of[key]], its total
 * and last positive index in bonus_totals, bonus_lasts).
 */
#define TREE_MAX_DRAFTS 64

/* One verifier step at slot s on the drafts ys, the level's N verifier uniforms v and the block's final
 * uniform: the emitted token, and the accepted draft's index in *index (-1: none). */
INLINE int64_t tree_step(const DraftSlots *d, int64_t s, const int64_t *ys, const double *v, double final_u,
                         int64_t *index, int selection)
{
    const int64_t V = d->V, G = d->G, N = d->N, L = d->L;
    const double *f = d->floats + s * d->FS;
    const int32_t *g = d->ints + s * d->IS;
    const double *ratios = f + V;
    if (!selection) {
        for (int64_t i = 0; i < N; ++i)
            if (v[i] < ratios[(i < L ? i : L - 1) * V + ys[i]]) {
                *index = i;
                return ys[i];
            }
    } else {
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
    int64_t x = bisect_right(f + (1 + L) * V, V, final_u * d->scalars[2 * s + 1]);
    const int64_t last = d->lasts[2 * s + 1];
    return x > last ? last : x;
}

/*
 * trees(u, floats, ints, scalars, lasts, slot_of, last_used, bonus, bonus_totals, bonus_lasts, bonus_of,
 *       moves, seen, fresh, first_step, context, drafted, draft_keys, accepted_length, final, children,
 *       accepted_index, gamma, N, V, G, L, selection, m, i, x, emitted, steps, mode, positions, fresh_count,
 *       clock)
 *   -> (i, x, emitted, missing key or -1, 0 for its verifier tables / 1 for its bonus cdf, fresh_count)
 *
 * Runs tree blocks i .. m - 1 (row i of u: block i's uniforms) from key x, as `run` runs γ-blocks
 * (the same moves, the same early break, resumable at a key without tables).  A slot used by block i
 * gets last_used = clock + i (the cache evicts the least recently used).
 */
static PyObject *trees(PyObject *self, PyObject *args)
{
    Py_buffer ub, fb, ib, scb, lb, sb, lub, bb, btb, blb, bob, fsb, cb, db, kb, ab, zb, chb, axb;
    Py_buffer mb = {0}, seb = {0}, frb = {0};
    PyObject *mo, *seo, *fro;
    Py_ssize_t gamma, N, V, G, L, selection, m, i, x, emitted, steps, mode, positions, fresh_count, clock;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*y*y*y*y*OOOw*w*w*w*w*w*w*w*nnnnnnnnnnnnnnn", &ub, &fb, &ib, &scb,
                          &lb, &sb, &lub, &bb, &btb, &blb, &bob, &mo, &seo, &fro, &fsb, &cb, &db, &kb, &ab, &zb,
                          &chb, &axb, &gamma, &N, &V, &G, &L, &selection, &m, &i, &x, &emitted, &steps, &mode,
                          &positions, &fresh_count, &clock))
        return NULL;
    PyObject *result = NULL;
    int64_t *keys = NULL;
    if (mode == MOVE_TABLE) {
        if (PyObject_GetBuffer(mo, &mb, PyBUF_SIMPLE) < 0 || PyObject_GetBuffer(seo, &seb, PyBUF_WRITABLE) < 0 ||
            PyObject_GetBuffer(fro, &frb, PyBUF_WRITABLE) < 0)
            goto done;
    }
    const Py_ssize_t walk = (selection && N > 1) ? V + 1 : 0;
    const Py_ssize_t FS = (2 + L) * V + walk, IS = 2 * (G + 1) + (walk ? 2 * V + walk : 0);
    const Py_ssize_t nkeys = sb.len / 8, slots = scb.len / 16, bonus_slots = btb.len / 8;
    Py_ssize_t nodes = 0, level_width = 1;
    for (Py_ssize_t d = 0; d < gamma && gamma <= 64 && N <= TREE_MAX_DRAFTS; d++) {
        level_width *= N;
        nodes += level_width;
        if (nodes > (Py_ssize_t)1 << 20)
            break;
    }
    const Py_ssize_t width = nodes + gamma * N + 1;
    if (gamma < 1 || gamma > 64 || N < 1 || N > TREE_MAX_DRAFTS || V < 1 || L < 1 || L > N || m < 0 || i < 0 ||
        i > m || mode < 0 || mode > 2 || nkeys < 1 || (mode == MOVE_TOKEN && nkeys < V) || nodes > (1 << 20) ||
        (mode == MOVE_POSITION && (positions < 1 || positions > nkeys)) || x < 0 || x >= nkeys) {
        PyErr_SetString(PyExc_ValueError, "trees: bad gamma, N, V, L, m, i, key or mode");
        goto done;
    }
    if (!(need(&ub, m * width, 8, "u") && need(&fb, slots * FS, 8, "floats") && need(&ib, slots * IS, 4, "ints") &&
          need(&lb, slots * 2, 8, "lasts") && need(&lub, slots, 8, "last_used") &&
          need(&bb, bonus_slots * V, 8, "bonus") && need(&blb, bonus_slots, 8, "bonus_lasts") &&
          need(&bob, nkeys, 8, "bonus_of") && need(&fsb, m, 8, "first_step") && need(&cb, m, 8, "context") &&
          need(&db, m * gamma, 8, "drafted") && need(&kb, m * gamma, 8, "draft_keys") &&
          need(&ab, m, 8, "accepted_length") && need(&zb, m, 8, "final") &&
          need(&chb, m * gamma * N, 8, "children") && need(&axb, m * gamma, 8, "accepted_index")))
        goto done;
    if (mode == MOVE_TABLE && !(need(&mb, nkeys * V, 4, "moves") && need(&seb, nkeys, 1, "seen") &&
                                need(&frb, fresh_count + (m - i) * (gamma + 1), 8, "fresh")))
        goto done;
    keys = malloc((size_t)(gamma + N) * sizeof(int64_t));
    if (keys == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *ys = keys + gamma;
    const DraftSlots d = {fb.buf, scb.buf, ib.buf, lb.buf, V, G, N, L, walk, FS, IS};
    Blocks b = {NULL, NULL, NULL, sb.buf, V, nkeys, slots, (int)mode, positions, mb.buf, seb.buf, frb.buf,
                fresh_count, frb.len / 8};
    const int64_t *slot_of = sb.buf, *bonus_of = bob.buf, *bonus_lasts = blb.buf;
    const double *bonus = bb.buf, *bonus_totals = btb.buf, *u = ub.buf;
    int64_t *last_used = lub.buf;
    int64_t *first_step = fsb.buf, *context = cb.buf, *drafted = db.buf, *draft_keys = kb.buf;
    int64_t *accepted_length = ab.buf, *final = zb.buf, *children = chb.buf, *accepted_index = axb.buf;
    int64_t missing = -1, kind = 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; i < m; i++) {
        if (emitted >= steps)
            break;
        const double *ui = u + i * width, *verify = ui + nodes;
        const double final_u = ui[width - 1];
        int64_t *path = drafted + i * gamma, *index = accepted_index + i * gamma, *kids = children + i * gamma * N;
        int64_t node = 0, key = x, level, z = -1, next = -1;
        for (level = 0; level < gamma; level++) {
            const int64_t s = slot_of[key];
            if ((uint64_t)s >= (uint64_t)slots) {
                missing = key;
                break;
            }
            last_used[s] = clock + i;
            const int64_t first = N * node + 1;
            const double *f = d.floats + s * FS;
            const double total = d.scalars[2 * s];
            const int64_t last = d.lasts[2 * s];
            for (int64_t j = 0; j < N; j++) {
                int64_t y = bisect_right(f, V, ui[first + j - 1] * total);
                ys[j] = y > last ? last : y;
                kids[level * N + j] = ys[j];
            }
            keys[level] = key;
            int64_t accepted;
            const int64_t e = tree_step(&d, s, ys, verify + level * N, final_u, &accepted, (int)selection);
            if (accepted < 0) {  /* the level's residual token ends the block */
                path[level] = ys[0];
                index[level] = -1;
                z = e;
                next = advance(&b, key, e);
                break;
            }
            path[level] = e;
            index[level] = accepted;
            node = first + accepted;
            key = advance(&b, key, e);
            if (key < 0) {
                bad = 1;
                break;
            }
        }
        if (missing != -1 || bad)
            break;
        if (level == gamma) {  /* every level accepted: the bonus token from the row of the key after the path */
            const int64_t s = bonus_of[key];
            if ((uint64_t)s >= (uint64_t)bonus_slots) {
                missing = key;
                kind = 1;
                break;
            }
            int64_t y = bisect_right(bonus + s * V, V, final_u * bonus_totals[s]);
            z = y > bonus_lasts[s] ? bonus_lasts[s] : y;
            next = advance(&b, key, z);
        }
        if (next < 0) {
            bad = 1;
            break;
        }
        for (int64_t k = level + (level < gamma); k < gamma; k++) {  /* below the rejecting level */
            path[k] = path[level < gamma ? level : gamma - 1];
            keys[k] = keys[level < gamma ? level : gamma - 1];
            index[k] = -1;
            for (int64_t j = 0; j < N; j++)
                kids[k * N + j] = -1;
        }
        for (int64_t k = 0; k < gamma; k++)
            draft_keys[i * gamma + k] = keys[k];
        first_step[i] = emitted;
        context[i] = x;
        accepted_length[i] = level;
        final[i] = z;
        emitted += level + 1;
        x = next;
    }
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "trees: a move left the table");
        goto done;
    }
    result = Py_BuildValue("nnnLnn", i, x, emitted, (long long)missing, (Py_ssize_t)kind, (Py_ssize_t)b.fresh_count);
done:
    free(keys);
    PyBuffer_Release(&ub);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&scb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&lub);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&btb);
    PyBuffer_Release(&blb);
    PyBuffer_Release(&bob);
    PyBuffer_Release(&fsb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&db);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&zb);
    PyBuffer_Release(&chb);
    PyBuffer_Release(&axb);
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
    {"trees", trees, METH_VARARGS, "Run a chunk's token-tree blocks; stop at a key without tables (resumable)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blocks", "Compiled γ-token speculative blocks.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__blocks(void) { return PyModule_Create(&module); }
