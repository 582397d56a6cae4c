/*
 * An N-draft verifier's per-key tables as the compiled kernels read them, and the optimal verifier's class
 * selection, written once for the two kernels that step them: the N-draft chain (_kernels.c, drafts_step)
 * and the token trees (_blocks.c, tree_step).  The tables are laid out per slot by
 * thermospec.engine.draft_tables.DraftTableCache, with W = V + 1 when the step selects by classes (optimal,
 * N > 1) and 0 otherwise:
 *
 *   floats[slot]  = [draft_cdf (V) | ratios (L x V) | final_cdf (V) | removal (W)]                  float64
 *   ints[slot]    = [draft guide (G + 1) | final guide (G + 1) | rank (V) | node_at (V) | up (W)]  int32
 *   scalars[slot] = [draft total, final total]                                                       float64
 *   lasts[slot]   = [last positive index of each cdf]                                                int64
 *
 * The step on drafts y_1 .. y_N and verifier uniforms v_1 .. v_N:
 *   sequential (recursive, spectr): the first i with v_i < ratios[min(i, L - 1)][y_i] is accepted;
 *   selection (optimal): i = the first draft of the smallest class start at omega = v_2 (0 at N = 1),
 *     accepted iff v_1 < ratios[0][y_i] (class_choice below);
 *   else the final cdf is inverted at the step's last uniform.
 *
 * class_choice (thermospec.core.verifiers.VerifierTables): class_start(r, w) = max{k <= r : removal[k] > w}
 * does not decrease with r, so the first draft of least rank is in the highest class present; an earlier
 * draft (of a larger rank) is in that class too iff its class starts at or below that least rank: its walk
 * up the class tree stops as soon as it passes below it.  It returns the index of the first of the N drafts
 * ys in that class, at omega (the step's second verifier uniform).
 */
#ifndef THERMOSPEC_DRAFT_SLOTS_H
#define THERMOSPEC_DRAFT_SLOTS_H

#include <stdint.h>

typedef struct {
    const double *floats, *scalars;
    const int32_t *ints;
    const int64_t *lasts;
    int64_t V, G, N, L, walk, FS, IS;
} DraftSlots;

static inline int64_t class_choice(const int32_t *rank, const int32_t *node_at, const int32_t *up,
                                   const double *removal, const int64_t *ys, int64_t N, double omega)
{
    int64_t least = rank[ys[0]], chosen = 0;
    for (int64_t i = 1; i < N; ++i)
        if (rank[ys[i]] < least) {
            least = rank[ys[i]];
            chosen = i;
        }
    for (int64_t i = 0; i < chosen; ++i) {
        int64_t k = node_at[rank[ys[i]]];
        while (k > least && !(removal[k] > omega))
            k = up[k];
        if (k <= least)
            return i;
    }
    return chosen;
}

#endif
