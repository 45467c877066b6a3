"""Miners: which samples a training batch holds, chosen from the whole training set under the current network.

A miner is apart from the loss (pytorch-metric-learning's split): it never computes a loss, it runs under
``no_grad``, and the trainer drives it through the :class:`~matcher.training.hooks.TrainingHook` calls. The losses
of :mod:`matcher.losses` keep one contract, ``loss(descriptors, labels) -> scalar``.

:class:`SmartMiner` is the global mining of Smart Mining (Harwood et al., ICCV 2017, as adapted in
shared/docs/methods.md §2; the loss is :class:`matcher.losses.SmartMiningLoss`): embed the whole training set, find
every sample's k nearest other-label neighbours and its farthest positive (:func:`build_neighbour_index`, exact),
and admit neighbour n of anchor a when d²(a, n) < d²(a, p) + m + ε (d² squared chordal distance, m the loss's
margin). Batches (:meth:`SmartMiner.mined_batches`) are seeded with random identities, each followed by up to
``neighbours_per_seed`` identities that own its admitted negatives (hardest first), keeping at most one entry per
identity per batch; the loss's in-batch hardest negative then sees globally hard negatives. With K = 2 views the
positive pair is the identity's farthest pair with probability q, a random pair otherwise.

**Adaptive controller** [PROPOSAL of methods.md §2, sign corrected]: after each mining pass, ρ = (admitted
triplets with a non-zero triplet loss) / (admitted triplets) (ρ = 1 if none is admitted), then
ε ← clip(ε + κ (ρ − ρ*), 0, ε_max) (:func:`controller_update`). The note writes ε + κ (ρ* − ρ), but ρ falls as ε
grows, so that law is positive feedback and runs ε to 0 or ε_max; the sign here makes ρ track ρ*.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from matcher.training.hooks import TrainingHook, TrainingRun

__all__ = ["NeighbourIndex", "SmartMiner", "build_neighbour_index", "controller_update"]


class NeighbourIndex:
    """Result of one mining pass over the whole training set (not checkpointed; rebuilt by a refresh).

    Attributes (N samples, k neighbours):
        labels: (N,) int64.
        neighbours: (N, k) int64, each sample's k nearest samples of *other* labels (by cosine), nearest first;
            −1 where fewer exist.
        neighbour_sim: (N, k) float32 their cosine similarities (−inf where missing).
        positive: (N,) int64, the sample's farthest same-label sample (−1 if it has none).
        positive_sim: (N,) float32 its similarity (nan if none).
    """

    def __init__(
        self,
        labels: np.ndarray,
        neighbours: np.ndarray,
        neighbour_sim: np.ndarray,
        positive: np.ndarray,
        positive_sim: np.ndarray,
    ) -> None:
        self.labels = labels
        self.neighbours = neighbours
        self.neighbour_sim = neighbour_sim
        self.positive = positive
        self.positive_sim = positive_sim

    def triplet_slack(self) -> np.ndarray:
        """(N, k) d²(a, n) − d²(a, p) in squared chordal distance (+inf where no neighbour or no positive)."""
        d2_n = 2.0 - 2.0 * self.neighbour_sim.astype(np.float64)
        d2_p = 2.0 - 2.0 * self.positive_sim.astype(np.float64)
        slack = d2_n - d2_p[:, None]
        return np.where(np.isfinite(slack), slack, np.inf)


@torch.no_grad()
def build_neighbour_index(
    embeddings: torch.Tensor, labels: torch.Tensor, k: int = 16, block_elements: int = 1 << 24
) -> NeighbourIndex:
    """Exact k nearest other-label neighbours and the farthest positive of every sample, by blocked matrix products.

    methods.md §2 (patch adaptation): an exact top-k over ~100k descriptors takes seconds on a CPU, so the
    approximate FANNG graph of the paper is not needed.

    Args:
        embeddings: (N, D) descriptors (normalised here).
        labels: (N,) integer labels.
        k: neighbours kept per sample.
        block_elements: rows per block are chosen so a block's similarity matrix has about this many entries.
    """
    x = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    lab = labels.detach().reshape(-1).long().to(x.device)
    n = x.shape[0]
    k_eff = max(0, min(k, n - 1))
    neighbours = np.full((n, k), -1, np.int64)
    neighbour_sim = np.full((n, k), -np.inf, np.float32)
    positive = np.full(n, -1, np.int64)
    positive_sim = np.full(n, np.nan, np.float32)
    rows = max(1, min(n, block_elements // max(n, 1)))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sim = x[start:stop] @ x.t()
        same = lab[start:stop, None] == lab[None, :]
        if k_eff > 0:
            val, idx = sim.masked_fill(same, -math.inf).topk(k_eff, dim=1)
            ok = torch.isfinite(val)
            neighbours[start:stop, :k_eff] = torch.where(ok, idx, torch.full_like(idx, -1)).cpu().numpy()
            neighbour_sim[start:stop, :k_eff] = val.cpu().numpy()
        self_mask = torch.zeros_like(same)
        self_mask[torch.arange(stop - start), torch.arange(start, stop)] = True
        pos_mask = same & ~self_mask
        pval, pidx = sim.masked_fill(~pos_mask, math.inf).min(1)
        has = pos_mask.any(1)
        positive[start:stop] = torch.where(has, pidx, torch.full_like(pidx, -1)).cpu().numpy()
        positive_sim[start:stop] = torch.where(has, pval, torch.full_like(pval, math.nan)).cpu().numpy()
    return NeighbourIndex(lab.cpu().numpy(), neighbours, neighbour_sim, positive, positive_sim)


def controller_update(
    epsilon: float, rho: float, rho_target: float = 0.5, gain: float = 0.1, epsilon_max: float = 1.0
) -> float:
    """One step of the adaptive controller: ε ← clip(ε + κ (ρ − ρ*), 0, ε_max).

    ρ, the fraction of admitted triplets with a non-zero loss, *decreases* as ε grows (a larger tolerance admits
    more negatives beyond the margin), so this sign is the stable (negative-feedback) one: too many violating
    triplets (ρ > ρ*) → relax, admit more; too few → tighten. methods.md §2 writes κ (ρ* − ρ), which would drive ε
    to a bound; see :class:`SmartMiningLoss`.
    """
    return float(min(max(epsilon + gain * (rho - rho_target), 0.0), epsilon_max))


class SmartMiner(TrainingHook):
    """Global hard-negative mining with an adaptive tolerance ε; the batch source of Smart Mining.

    Hyper-parameters (defaults; only the paper's abstract could be read, so these are methods.md §2's
    recollection [MEM] or proposals [PROPOSAL], not verified paper values):

    * ``margin`` m = 0.5: the triplet margin of the admission test (squared chordal units; give the loss's);
    * ``k`` = 16 neighbours per sample; ``neighbours_per_seed`` = 3; ``hard_positive_prob`` q = 0.5;
    * controller: ``epsilon_init`` = 0.2, ``epsilon_max`` = 1.0, ``rho_target`` ρ* = 0.5, ``gain`` κ = 0.1;
    * ``refresh_every`` = None: ``refreshes_per_run`` = 5 mining passes spread over the run, whose length the
      trainer gives with :meth:`set_run_length` (the paper mines every epoch or few epochs). An integer fixes the
      interval in steps (1000 when no run length is given).

    ε, ρ and the counters are buffers (in ``state_dict``, saved in training checkpoints); the index is not, so
    :meth:`needs_refresh` is True after a restore until the next refresh. :meth:`statistics`: ε, ρ, refresh and
    step counters and the mining counts of the last refresh.
    """

    def __init__(
        self,
        margin: float = 0.5,
        k: int = 16,
        neighbours_per_seed: int = 3,
        hard_positive_prob: float = 0.5,
        epsilon_init: float = 0.2,
        epsilon_max: float = 1.0,
        rho_target: float = 0.5,
        gain: float = 0.1,
        refresh_every: int | None = None,
        refreshes_per_run: int = 5,
    ) -> None:
        super().__init__()
        self.margin = float(margin)
        self.k = int(k)
        self.neighbours_per_seed = int(neighbours_per_seed)
        self.hard_positive_prob = float(hard_positive_prob)
        self.epsilon_max = float(epsilon_max)
        self.rho_target = float(rho_target)
        self.gain = float(gain)
        self.fixed_refresh_every = None if refresh_every is None else int(refresh_every)
        self.refreshes_per_run = int(refreshes_per_run)
        self.refresh_every = self.fixed_refresh_every or 1000
        self.register_buffer("epsilon", torch.tensor(float(epsilon_init), dtype=torch.float64))
        self.register_buffer("rho", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("steps_at_refresh", torch.zeros((), dtype=torch.int64))
        self.index: NeighbourIndex | None = None
        self._hard_ptr: np.ndarray | None = None
        self._hard_ids: np.ndarray | None = None
        self._mining: dict[str, float] = {}

    # ------------------------------------------------------------------------------------- trainer hooks
    def batches(self, run: TrainingRun) -> Iterator[np.ndarray]:
        """Mined batches of the run's training data, refreshed on schedule (see :meth:`batch_stream`)."""
        self.set_run_length(run.steps)
        return self.batch_stream(run.model, run.patches, run.labels, run.identities_per_batch,
                                 run.views_per_identity, seed=run.seed)

    def after_step(self) -> None:
        """Count the step (the refresh schedule is in steps)."""
        self.steps.add_(1)

    def set_run_length(self, steps: int) -> None:
        """Spread ``refreshes_per_run`` mining passes over a run of ``steps`` (unless ``refresh_every`` was fixed)."""
        if self.fixed_refresh_every is None:
            self.refresh_every = max(1, math.ceil(int(steps) / max(1, self.refreshes_per_run)))

    def needs_refresh(self) -> bool:
        """True if no index exists yet or ``refresh_every`` training steps passed since the last refresh."""
        return self.index is None or int(self.steps - self.steps_at_refresh) >= self.refresh_every

    def admitted(self, index: NeighbourIndex | None = None, epsilon: float | None = None) -> np.ndarray:
        """(N, k) bool: neighbour n of anchor a is admitted when d²(a, n) < d²(a, p) + m + ε."""
        index = index or self.index
        if index is None:
            raise RuntimeError("no neighbour index: call refresh_index first")
        eps = float(self.epsilon) if epsilon is None else epsilon
        return index.triplet_slack() < self.margin + eps

    def measure_rho(self, index: NeighbourIndex | None = None, epsilon: float | None = None) -> tuple[float, int, int]:
        """(ρ, admitted, informative) for the index at tolerance ε; informative = d²(a, n) < d²(a, p) + m."""
        index = index or self.index
        if index is None:
            raise RuntimeError("no neighbour index: call refresh_index first")
        adm = self.admitted(index, epsilon)
        inf = index.triplet_slack() < self.margin
        n_adm, n_inf = int(adm.sum()), int((inf & adm).sum())
        return (1.0 if n_adm == 0 else n_inf / n_adm), n_adm, n_inf

    @torch.no_grad()
    def refresh_index(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """The whole-dataset hook: rebuild the neighbour index from the current embeddings and run the controller.

        Call it with the embeddings (N, D) of the *whole* training set under the current network (e.g. via
        :meth:`refresh_from_model`) and their labels (N,). Order: build the index, measure ρ with the current ε,
        update ε, then precompute each identity's hard-negative identities under the new ε.

        Returns:
            the mining statistics (also merged into :meth:`statistics`).
        """
        index = build_neighbour_index(embeddings, labels, self.k)
        rho, n_adm, n_inf = self.measure_rho(index)
        self.rho.fill_(rho)
        self.epsilon.fill_(controller_update(float(self.epsilon), rho, self.rho_target, self.gain, self.epsilon_max))
        self.index = index
        self._build_hard_lists()
        self.refreshes.add_(1)
        self.steps_at_refresh.copy_(self.steps)
        n = max(len(index.labels), 1)
        self._mining = {
            "admitted_per_anchor": n_adm / n,
            "informative_per_anchor": n_inf / n,
            "admitted_after_update_per_anchor": float(self.admitted().sum()) / n,
        }
        return {"rho": rho, "epsilon": float(self.epsilon), **self._mining}

    @torch.no_grad()
    def refresh_from_model(
        self, model: nn.Module, patches: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
    ) -> dict[str, float]:
        """Embed ``patches`` (N, 1, 32, 32) with ``model`` in eval mode (restoring its mode), then :meth:`refresh_index`."""
        was_training = model.training
        model.eval()
        try:
            emb = torch.cat([model(patches[i : i + batch_size]).float() for i in range(0, len(patches), batch_size)])
        finally:
            model.train(was_training)
        return self.refresh_index(emb, labels)

    def _build_hard_lists(self) -> None:
        """Per identity: the identities owning its admitted negatives, hardest (smallest slack) first."""
        assert self.index is not None
        idx = self.index
        adm = self.admitted()
        slack = idx.triplet_slack()
        a_rows, cols = np.nonzero(adm)
        a_lab = idx.labels[a_rows]
        n_lab = idx.labels[idx.neighbours[a_rows, cols]]
        s = slack[a_rows, cols]
        order = np.lexsort((s, a_lab))  # by anchor label, then by slack
        a_lab, n_lab = a_lab[order], n_lab[order]
        # keep the first (hardest) occurrence of each (anchor label, negative label)
        key = np.stack([a_lab, n_lab], 1)
        _, first = np.unique(key, axis=0, return_index=True) if len(key) else (None, np.zeros(0, np.int64))
        first = np.sort(first)
        a_lab, n_lab = a_lab[first], n_lab[first]
        uniq = np.unique(idx.labels)
        self._label_values = uniq
        pos = np.searchsorted(uniq, a_lab)
        counts = np.bincount(pos, minlength=len(uniq))
        self._hard_ptr = np.concatenate([[0], np.cumsum(counts)])
        self._hard_ids = n_lab  # already grouped by anchor label in ascending order

    def hard_identities(self, label: int) -> np.ndarray:
        """Labels owning the admitted negatives of ``label``'s views, hardest first."""
        if self._hard_ptr is None or self._hard_ids is None:
            raise RuntimeError("no neighbour index: call refresh_index first")
        i = int(np.searchsorted(self._label_values, label))
        if i >= len(self._label_values) or self._label_values[i] != label:
            return np.zeros(0, np.int64)
        return self._hard_ids[self._hard_ptr[i] : self._hard_ptr[i + 1]]

    def mined_batches(
        self, identities_per_batch: int, views_per_identity: int = 2, seed: int = 0, epoch: int = 0
    ) -> list[np.ndarray]:
        """One epoch of mined P × K batches (dataset indices, identity-major) from the current index.

        Deterministic given ``seed``, ``epoch`` and the number of refreshes so far.

        Every identity with >= K views is a seed once per epoch, in a random order (seeds already placed in an
        earlier batch as somebody's hard negative are skipped); after each seed come up to
        ``neighbours_per_seed`` of its hard-negative identities not yet in the batch. An identity appears at most
        once per batch.
        """
        if self.index is None:
            raise RuntimeError("no neighbour index: call refresh_index or refresh_from_model first")
        P, K = int(identities_per_batch), int(views_per_identity)
        if P < 1 or K < 2:
            raise ValueError("need identities_per_batch >= 1 and views_per_identity >= 2")
        rng = np.random.default_rng([seed, int(self.refreshes), epoch])
        lab = self.index.labels
        order = np.argsort(lab, kind="stable")
        uniq, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
        members = {int(u): order[s : s + c] for u, s, c in zip(uniq, starts, counts) if c >= K}
        if not members:
            raise ValueError(f"no identity has {K} or more views")
        seeds = np.array(sorted(members), np.int64)[rng.permutation(len(members))]
        visited: set[int] = set()
        batches: list[np.ndarray] = []
        ptr = 0
        while ptr < len(seeds):
            batch: list[int] = []
            in_batch: set[int] = set()
            while len(batch) < P and ptr < len(seeds):
                seed_id = int(seeds[ptr])
                ptr += 1
                if seed_id in visited or seed_id in in_batch:
                    continue
                batch.append(seed_id)
                in_batch.add(seed_id)
                added = 0
                for h in self.hard_identities(seed_id):
                    if added >= self.neighbours_per_seed or len(batch) >= P:
                        break
                    h = int(h)
                    if h in in_batch or h not in members:
                        continue
                    batch.append(h)
                    in_batch.add(h)
                    added += 1
            visited.update(in_batch)
            if len(batch) < 2:
                continue
            batches.append(np.concatenate([self._views(members[i], K, rng) for i in batch]))
        return batches

    def _views(self, member_idx: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
        """K views of one identity; with probability q the farthest pair (by the index) comes first."""
        assert self.index is not None
        if rng.random() < self.hard_positive_prob:
            sims = self.index.positive_sim[member_idx]
            a = member_idx[int(np.nanargmin(sims))]
            p = int(self.index.positive[a])
            rest = member_idx[(member_idx != a) & (member_idx != p)]
            extra = rng.choice(rest, K - 2, replace=False) if K > 2 else np.zeros(0, np.int64)
            return np.concatenate([[a, p], extra]).astype(np.int64)
        return rng.choice(member_idx, K, replace=False).astype(np.int64)

    def batch_stream(
        self,
        model: nn.Module,
        patches: torch.Tensor,
        labels: torch.Tensor,
        identities_per_batch: int,
        views_per_identity: int = 2,
        seed: int = 0,
        embed_batch_size: int = 1024,
        on_refresh: Callable[[dict[str, float]], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """Endless mined batches for a trainer: refreshes the index on schedule (:meth:`needs_refresh`).

        Each refresh embeds ``patches`` with ``model`` (:meth:`refresh_from_model`) and starts a new mined epoch.
        ``on_refresh`` receives the mining statistics (for logging).
        """
        pending: list[np.ndarray] = []
        epoch = 0
        while True:
            if self.needs_refresh() or not pending:
                if self.needs_refresh():
                    info = self.refresh_from_model(model, patches, labels, embed_batch_size)
                    if on_refresh is not None:
                        on_refresh(info)
                    epoch = 0
                pending = self.mined_batches(identities_per_batch, views_per_identity, seed, epoch)[::-1]
                epoch += 1
                if not pending:
                    raise RuntimeError("mining produced no batch")
            yield pending.pop()

    def statistics(self) -> dict[str, float]:
        """ε, ρ, refresh/step counters and the mining counts of the last refresh."""
        return {
            "epsilon": float(self.epsilon),
            "rho": float(self.rho),
            "refreshes": float(self.refreshes),
            "steps": float(self.steps),
            **self._mining,
        }
