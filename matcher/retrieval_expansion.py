"""Verified-neighbour pairs: after the retrieval pairs are matched, pair each image with the verified neighbours of
its verified neighbours (the idea of COLMAP's transitive matcher and of hloc's covisibility pairs).

Why: top-K retrieval cannot find an image's partners when it has more than K of them (castle-P30 and monstree
have a median of 16 and 12 partners with >= 50 inliers per image, so even a perfect top-10 list misses a quarter
of them), and similarity of global descriptors misses partners seen from another side. Two images that both
share strong verified pairs with a third one very likely overlap too.

One round, given the inlier counts of the pairs matched so far (``verified``: pair -> inliers of its verified
model, 0 when unverified):

1. **Edges**: the matched pairs with at least ``min_inliers`` verified inliers.
2. **Candidates** of image ``i``: every ``k`` reached by an edge ``i - j`` and an edge ``j - k``, with
   ``(i, k)`` not matched yet.
3. **Rank**: the sum, over the shared neighbours ``j``, of the weaker edge of the path (``min(w_ij, w_jk)``):
   many strong paths first; ties by name. Each image proposes its best ``per_image`` candidates; the pairs are
   the union of the proposals, so one round adds at most N ``per_image`` pairs.

Cost: a round reads two attributes per matched pair (no matches data) and visits, per image, the neighbours of
its neighbours (about d^2 for d edges per image); memory holds the edges, O(matched pairs). Deterministic: the
result depends only on the names and the inlier counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

__all__ = ["verified_neighbour_pairs"]


def verified_neighbour_pairs(
    names: Sequence[str],
    verified: Mapping[tuple[str, str], int],
    per_image: int,
    min_inliers: int = 50,
) -> list[tuple[str, str]]:
    """New pairs ``(a, b)``, ``a < b``, sorted, among ``names``: each image with at most ``per_image`` verified
    neighbours of its verified neighbours that it was not matched with (see the module docstring).

    Args:
        names: the images (those of ``verified`` outside it are ignored).
        verified: every pair matched so far, ``(a, b)`` with ``a < b`` -> inliers of its verified model (0: none).
        per_image: most candidates one image proposes.
        min_inliers: verified inliers a pair needs to be an edge of the neighbour graph.
    """
    if per_image < 1:
        return []
    known = set(names)
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for (a, b), inliers in verified.items():
        if inliers >= min_inliers and a in known and b in known:
            edges[a][b] = edges[b][a] = int(inliers)
    new: set[tuple[str, str]] = set()
    for i in sorted(edges):
        score: dict[str, int] = defaultdict(int)
        for j, w_ij in edges[i].items():
            for k, w_jk in edges[j].items():
                if k != i and (min(i, k), max(i, k)) not in verified:
                    score[k] += min(w_ij, w_jk)
        for k in sorted(score, key=lambda k: (-score[k], k))[:per_image]:
            new.add((min(i, k), max(i, k)))
    return sorted(new)
