/*
 * The optimal verifier's class selection (thermospec.core.verifiers.VerifierTables), written once for the two
 * kernels that step it: the N-draft chain (_kernels.c, drafts_step) and the token trees (_blocks.c, tree_step).
 *
 * class_start(r, w) = max{k <= r : removal[k] > w} does not decrease with r, so the first draft of least rank
 * is in the highest class present; an earlier draft (of a larger rank) is in that class too iff its class
 * starts at or below that least rank: its walk up the class tree stops as soon as it passes below it.
 * Returns the index of the first of the N drafts ys in that class, at omega (the step's second uniform).
 */
#ifndef THERMOSPEC_CLASS_CHOICE_H
#define THERMOSPEC_CLASS_CHOICE_H

#include <stdint.h>

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
