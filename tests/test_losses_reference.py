"""Each loss against a slow, plain-loop reference of the same formula: values and gradients, float64, random inputs.

The references below are written independently of the vectorised modules: Python loops over pairs, anchors and
candidates with scalar tensor operations, so autograd gives the formula's own gradient.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matcher.losses import DDTASLoss, DGCRLLoss, HardNetLoss, SDGMLoss, SmartMiningLoss
from matcher.losses.base import hardest_negatives, pair_indices
from matcher.losses.ddtas import at_asms_tolerances
from matcher.training.miners import SmartMiner, build_neighbour_index, controller_update
from matcher.training.otg import OnlineThresholdGenerator
from matcher.training.sampler import PKSampler



pytestmark = pytest.mark.usefixtures("one_torch_thread")


TOL = dict(rtol=1e-9, atol=1e-11)
APPROX = dict(rel=1e-9, abs=1e-11)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


# ---------------------------------------------------------------------------------------------------- inputs
def random_batch(seed: int, dim: int = 6, spread: float = 0.6, k_views: tuple[int, ...] = (2, 2, 3, 2, 4, 2, 3)):
    """Unit descriptors (float64, requires grad) with P identities of mixed view counts, in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for ident, k in enumerate(k_views):
        centre = torch.randn(dim, generator=g, dtype=torch.float64)
        centre = centre / centre.norm()
        for _ in range(k):
            rows.append(centre + spread * torch.randn(dim, generator=g, dtype=torch.float64) / math.sqrt(dim))
            labels.append(ident * 7 + 3)  # non-contiguous label values
    x = torch.stack(rows)
    perm = torch.randperm(len(rows), generator=g)
    x = torch.nn.functional.normalize(x[perm], dim=1)
    return x.clone().requires_grad_(True), torch.tensor(labels)[perm]


def dot(x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return (x[i] * x[j]).sum()


def ref_pairs(labels: torch.Tensor) -> list[tuple[int, int]]:
    occ: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        occ.setdefault(y, []).append(i)
    pairs = []
    for idx in occ.values():
        for r in range(0, len(idx) - 1, 2):
            pairs.append((idx[r], idx[r + 1]))
    return sorted(pairs)


def tmax(values: list[torch.Tensor]) -> torch.Tensor:
    best = values[0]
    for v in values[1:]:
        if float(v) > float(best):
            best = v
    return best


def ref_hardest_all(x, labels, pairs, t):
    """SDGM §1.3: groups = pairs (+ unpaired rows); a group is masked as a whole when its max reaches t."""
    lab = labels.tolist()
    paired = {i for p in pairs for i in p}
    groups = list(pairs) + [(i, i) for i in range(len(lab)) if i not in paired]
    out = []
    for a, p in pairs:
        cands = []
        for g in groups:
            if lab[g[0]] == lab[a]:
                continue
            v = tmax([dot(x, m, a) for m in g] + [dot(x, m, p) for m in g])
            if float(v) < t:
                cands.append(v)
        out.append(tmax(cands) if cands else None)
    return out


def ref_hardest_cross(x, labels, pairs, t, swap=True):
    """HardNet: a_j·p_i and (with swap) p_j·a_i over other-label pairs, each guarded on its own."""
    lab = labels.tolist()
    out = []
    for a, p in pairs:
        cands = []
        for ai, pi in pairs:
            if lab[ai] == lab[a]:
                continue
            for v in [dot(x, a, pi)] + ([dot(x, p, ai)] if swap else []):
                if float(v) < t:
                    cands.append(v)
        out.append(tmax(cands) if cands else None)
    return out


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


# --------------------------------------------------------------------------------------------------- shared
@pytest.mark.parametrize("seed", range(4))
def test_pair_indices_and_hardest_negatives_match_loops(seed: int) -> None:
    x, labels = random_batch(seed)
    idx_a, idx_p = pair_indices(labels)
    assert list(zip(idx_a.tolist(), idx_p.tolist())) == ref_pairs(labels)
    sim = x @ x.t()
    pairs = ref_pairs(labels)
    for sides, t in [("all", 2.0), ("all", 0.7), ("cross", 0.8), ("anchor", 0.9)]:
        s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, sides, t)
        if sides == "all":
            ref = ref_hardest_all(x, labels, pairs, t)
        else:
            ref = ref_hardest_cross(x, labels, pairs, t, swap=sides == "cross")
        assert valid.tolist() == [r is not None for r in ref]
        for j, r in enumerate(ref):
            if r is not None:
                assert float(s_n[j]) == pytest.approx(float(r), abs=1e-12)


# -------------------------------------------------------------------------------------------------- HardNet
def ref_hardnet(x, labels, margin=1.0, eps=1e-6, swap=True, dup=0.008):
    pairs = ref_pairs(labels)
    negs = ref_hardest_cross(x, labels, pairs, 1.0 - 0.5 * dup**2, swap)
    terms = []
    for (a, p), sn in zip(pairs, negs):
        if sn is None:
            continue
        dp = torch.sqrt(2 - 2 * dot(x, a, p) + eps)
        dn = torch.sqrt(2 - 2 * sn + eps)
        terms.append(torch.clamp(margin + dp - dn, min=0.0))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("swap", [True, False])
def test_hardnet_matches_reference(seed: int, swap: bool) -> None:
    x, labels = random_batch(seed, spread=1.0)
    loss = HardNetLoss(margin=0.2, anchor_swap=swap)
    value = loss(x, labels)
    ref = ref_hardnet(x, labels, margin=0.2, swap=swap)
    assert float(value) == pytest.approx(float(ref), **APPROX)
    torch.testing.assert_close(grad_of(value, x), grad_of(ref_hardnet(x, labels, margin=0.2, swap=swap), x), **TOL)
    assert 0 < loss.statistics()["active_fraction"] < 1  # the hinge is neither all-on nor all-off here


# ----------------------------------------------------------------------------------------------------- SDGM
class RefSDGM:
    """Plain re-statement of the released SDGMloss.forward (methods.md §1.5), state as Python floats."""

    def __init__(self, alpha=0.9, p_m=0.6, lam=0.999, power_init=10000.0):
        self.alpha, self.p_m, self.lam = alpha, p_m, lam
        self.power_init = power_init
        self.state: dict[str, float] | None = None

    def __call__(self, x, labels, tau):
        eps = 1e-5
        t_fn = 1 - eps if tau < 0.125 else math.cos(0.6)
        pairs = ref_pairs(labels)
        negs = ref_hardest_all(x, labels, pairs, t_fn)
        tp, tn = [], []
        for (a, p), sn in zip(pairs, negs):
            if sn is None:
                continue
            tp.append(torch.arccos(torch.clamp(dot(x, a, p), -1 + eps, 1 - eps)))
            tn.append(torch.arccos(torch.clamp(sn, -1 + eps, 1 - eps)))
        n = len(tp)
        vp = [float(t) for t in tp]
        vn = [float(t) for t in tn]
        vd = [a - b for a, b in zip(vp, vn)]

        def mean(v):
            return sum(v) / len(v)

        def std(v):
            m = mean(v)
            return math.sqrt(sum((e - m) ** 2 for e in v) / (len(v) - 1))

        lam = self.lam
        if self.state is None:
            s = {"mu_p": mean(vp), "sigma_p": std(vp), "mu_n": mean(vn), "sigma_n": std(vn)}
            s.update(mu_d=-1.0, sigma_d=std(vd))
        else:
            s = dict(self.state)
            for key, v in [("mu_p", mean(vp)), ("mu_n", mean(vn)), ("mu_d", mean(vd))]:
                s[key] = lam * s[key] + (1 - lam) * v
            for key, v in [("sigma_p", std(vp)), ("sigma_n", std(vn)), ("sigma_d", std(vd))]:
                s[key] = lam * s[key] + (1 - lam) * v
        from statistics import NormalDist

        m_d = NormalDist(s["mu_d"], s["sigma_d"]).inv_cdf(self.p_m)
        wp, wn = [], []
        for j in range(n):
            if tau < 0.1:
                wc, wsp, wsn = 1.0, 1.0, 1.0
            else:
                wc = 1.0 if vd[j] >= m_d else 0.0
                wsp = math.exp(-((vp[j] - s["mu_p"]) ** 2) / 2 / (math.pi / 6 + s["sigma_p"]) ** 2)
                wsn = math.exp(-((vn[j] - s["mu_n"]) ** 2) / 2 / (math.pi / 6 + s["sigma_n"]) ** 2)
            wp.append(wsp * wc)
            wn.append(wsn * wc)
        if self.state is None:
            s["pow_p"] = lam * self.power_init + (1 - lam) * sum(wp)
            s["pow_n"] = lam * self.power_init + (1 - lam) * sum(wn)
        else:
            s["pow_p"] = lam * s["pow_p"] + (1 - lam) * sum(wp)
            s["pow_n"] = lam * s["pow_n"] + (1 - lam) * sum(wn)
        self.state = s
        loss = 0.0
        for j in range(n):
            loss = loss + self.alpha * wp[j] / s["pow_p"] * tp[j] - wn[j] / s["pow_n"] * tn[j]
        return loss


@pytest.mark.parametrize("seed", range(3))
def test_sdgm_matches_reference_over_a_run(seed: int) -> None:
    """A run of 6 batches through warm-up, guard and modulation: loss, gradients and running state match."""
    loss = SDGMLoss(momentum=0.8, power_init=50.0)
    ref = RefSDGM(lam=0.8, power_init=50.0)
    margins_active = 0
    for step, tau in enumerate([0.0, 0.05, 0.11, 0.2, 0.5, 0.9]):
        x, labels = random_batch(100 * seed + step, dim=5, spread=0.9)
        loss.set_progress(tau)
        value = loss(x, labels)
        expected = ref(x, labels, tau)
        assert float(value) == pytest.approx(float(expected), **APPROX)
        torch.testing.assert_close(grad_of(value, x), grad_of(expected, x), **TOL)
        st = loss.statistics()
        for mine, theirs in [
            ("mu_p", "mu_p"), ("sigma_p", "sigma_p"), ("mu_n", "mu_n"), ("sigma_n", "sigma_n"),
            ("mu_delta", "mu_d"), ("sigma_delta", "sigma_d"), ("power_p", "pow_p"), ("power_n", "pow_n"),
        ]:
            assert st[mine] == pytest.approx(ref.state[theirs], rel=1e-9), mine
        if tau >= 0.1:
            margins_active += int(st["kept_fraction"] < 1.0)
    assert margins_active > 0  # the probabilistic margin did cut some triplets


# ------------------------------------------------------------------------------------------- Smart Mining
def ref_smart_mining(x, labels, m=0.5, wg=1.0, lg=1.0, t=0.5):
    pairs = ref_pairs(labels)
    negs = ref_hardest_all(x, labels, pairs, 1 - 1e-5)
    dp, dn = [], []
    for (a, p), sn in zip(pairs, negs):
        if sn is None:
            continue
        dp.append(2 - 2 * dot(x, a, p))
        dn.append(2 - 2 * sn)
    n = len(dp)
    trip = sum(torch.clamp(m + dp[j] - dn[j], min=0) for j in range(n)) / n
    mp, mn = sum(dp) / n, sum(dn) / n
    var_p = sum((d - mp) ** 2 for d in dp) / n
    var_n = sum((d - mn) ** 2 for d in dn) / n
    return trip + wg * (var_p + var_n + lg * torch.clamp(mp - mn + t, min=0))


@pytest.mark.parametrize("seed", range(3))
def test_smart_mining_loss_matches_reference(seed: int) -> None:
    x, labels = random_batch(seed, dim=5, spread=1.0)
    loss = SmartMiningLoss(margin=0.4, global_weight=0.7, global_lambda=2.0, global_margin=0.3)
    value = loss(x, labels)
    ref = ref_smart_mining(x, labels, 0.4, 0.7, 2.0, 0.3)
    assert float(value) == pytest.approx(float(ref), **APPROX)
    torch.testing.assert_close(grad_of(value, x), grad_of(ref_smart_mining(x, labels, 0.4, 0.7, 2.0, 0.3), x), **TOL)


def test_neighbour_index_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(60, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 20, (60,), generator=g)
    idx = build_neighbour_index(emb, labels, k=5, block_elements=7 * 60)  # several blocks
    e = emb.numpy()
    lab = labels.numpy()
    for i in range(60):
        others = [(float(e[i] @ e[j]), j) for j in range(60) if lab[j] != lab[i]]
        others.sort(key=lambda t: -t[0])
        assert idx.neighbours[i].tolist() == [j for _, j in others[:5]]
        np.testing.assert_allclose(idx.neighbour_sim[i], [s for s, _ in others[:5]], rtol=1e-6)
        same = [(float(e[i] @ e[j]), j) for j in range(60) if lab[j] == lab[i] and j != i]
        if same:
            s, j = min(same)
            assert idx.positive[i] == j and idx.positive_sim[i] == pytest.approx(s, abs=1e-6)
        else:
            assert idx.positive[i] == -1


def test_smart_mining_rho_and_controller_match_loops() -> None:
    g = torch.Generator().manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(80, 3, generator=g), dim=1)
    labels = torch.arange(40).repeat_interleave(2)
    loss = SmartMiner(margin=0.3, k=6, epsilon_init=0.25, gain=0.2, rho_target=0.5)
    info = loss.refresh_index(emb, labels)
    idx = loss.index
    assert idx is not None
    adm = inf = 0
    for i in range(80):
        d2p = 2 - 2 * float(idx.positive_sim[i])
        for s in idx.neighbour_sim[i]:
            d2n = 2 - 2 * float(s)
            if d2n < d2p + 0.3 + 0.25:
                adm += 1
                inf += d2n < d2p + 0.3
    rho = inf / adm if adm else 1.0
    assert info["rho"] == pytest.approx(rho)
    assert info["epsilon"] == pytest.approx(min(max(0.25 + 0.2 * (rho - 0.5), 0.0), 1.0))
    assert controller_update(0.25, rho, 0.5, 0.2, 1.0) == pytest.approx(info["epsilon"])


# ----------------------------------------------------------------------------------------------------- DGCRL
def ref_gram_schmidt(vs: list[torch.Tensor]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for v in vs:
        u = v.clone()
        for q in out:
            u = u - (u @ q) * q
        out.append(u / u.norm())
    return out


def ref_dgcrl(x, labels, scale, margin, mode, weight=1.0, table=None):
    lab = labels.tolist()
    z = [scale * x[i] / x[i].norm() for i in range(len(lab))]
    if table is None:
        classes = sorted(set(lab))
        cidx = {c: k for k, c in enumerate(classes)}
        raw = []
        for c in classes:
            members = [i for i in range(len(lab)) if lab[i] == c]
            acc = sum(z[i] for i in members) / len(members)
            raw.append(acc / acc.norm())
    else:
        classes = list(range(table.shape[0]))
        cidx = {c: c for c in classes}
        raw = [table[k] / table[k].norm() for k in classes]
    k_cls = len(classes)
    if mode == "gram_schmidt" and table is None:
        ortho = ref_gram_schmidt([r.detach() for r in raw])
        unit = [r + (o - r).detach() for r, o in zip(raw, ortho)]
    else:
        unit = raw
    penalty = 0.0
    if mode == "soft":
        terms = [torch.clamp(unit[a] @ unit[b], min=0) ** 2 for a in range(k_cls) for b in range(k_cls) if a != b]
        penalty = sum(terms) / len(terms)
    centres = [scale * u for u in unit]
    total = 0.0
    for i in range(len(lab)):
        own = cidx[lab[i]]
        d_own = ((z[i] - centres[own]) ** 2).sum()
        for k in range(k_cls):
            if k != own:
                total = total + torch.clamp(margin + d_own - ((z[i] - centres[k]) ** 2).sum(), min=0)
    return total / (len(lab) * (k_cls - 1)) + weight * penalty


@pytest.mark.parametrize("mode", ["gram_schmidt", "soft", "none"])
@pytest.mark.parametrize("seed", range(2))
def test_dgcrl_batch_centres_match_reference(mode: str, seed: int) -> None:
    x, labels = random_batch(seed, dim=8 if mode == "gram_schmidt" else 4, spread=1.2)
    loss = DGCRLLoss(scale=1.7, margin=0.9, decorrelation=mode, decorrelation_weight=0.6)
    value = loss(x, labels)
    ref = ref_dgcrl(x, labels, 1.7, 0.9, mode, 0.6)
    assert float(value) > 0
    assert float(value) == pytest.approx(float(ref), **APPROX)
    torch.testing.assert_close(grad_of(value, x), grad_of(ref_dgcrl(x, labels, 1.7, 0.9, mode, 0.6), x), **TOL)


def test_dgcrl_auto_mode_switches_on_class_count() -> None:
    x, labels = random_batch(0, dim=4, spread=1.2)  # 7 identities > 4 dimensions -> soft
    loss = DGCRLLoss(decorrelation="auto")
    loss(x, labels)
    assert loss.statistics()["mode"] == 2.0
    x8, labels8 = random_batch(0, dim=8, spread=1.2)
    loss(x8, labels8)
    assert loss.statistics()["mode"] == 2.0  # batch-local centres: soft even when K <= D
    classes, dense = torch.unique(labels8, return_inverse=True)
    table_loss = DGCRLLoss(decorrelation="auto", num_classes=len(classes), embedding_dim=8).double()
    table_loss(x8, dense)
    assert table_loss.statistics()["mode"] == 1.0  # global centres with K <= D: Gram-Schmidt
    with pytest.raises(ValueError):
        DGCRLLoss(decorrelation="gram_schmidt")(x, labels)


def test_dgcrl_global_centres_match_reference() -> None:
    x, labels = random_batch(1, dim=8, spread=1.2)
    classes = torch.unique(labels)
    dense = torch.searchsorted(classes, labels)  # labels 0..C-1
    loss = DGCRLLoss(scale=1.3, margin=0.8, num_classes=len(classes), embedding_dim=8).double()
    value = loss(x, dense)  # projects the table by Gram-Schmidt first (training mode)
    table = loss.centres.detach()
    np.testing.assert_allclose((table @ table.t()).numpy(), np.eye(len(classes)), atol=1e-12)
    ref = ref_dgcrl(x, dense, 1.3, 0.8, "gram_schmidt", table=table)
    assert float(value) == pytest.approx(float(ref), **APPROX)
    torch.testing.assert_close(grad_of(value, x), grad_of(ref_dgcrl(x, dense, 1.3, 0.8, "gram_schmidt", table=table), x), **TOL)


# ----------------------------------------------------------------------------------------------------- DDTAS
def ref_ddtas(x, labels, m=0.1, lam=0.5, alpha=40.0, beta=2.0, adaptive=True, fn_cos=None):
    lab = labels.tolist()
    b = len(lab)
    sims = [[dot(x, i, j) for j in range(b)] for i in range(b)]

    def sets(i):
        pos = [j for j in range(b) if j != i and lab[j] == lab[i] and float(sims[i][j]) < 1 - 1e-5]
        neg = [j for j in range(b) if lab[j] != lab[i] and (fn_cos is None or float(sims[i][j]) < fn_cos)]
        return pos, neg

    def mine(gp, gn):
        kept = []
        for i in range(b):
            pos, neg = sets(i)
            if not pos or not neg:
                kept.append(([], []))
                continue
            min_p = min(float(sims[i][j]) for j in pos)
            max_n = max(float(sims[i][j]) for j in neg)
            kept.append(([j for j in pos if float(sims[i][j]) < max_n + gp], [j for j in neg if float(sims[i][j]) > min_p - gn]))
        return kept

    gp, gn = m, m / 10
    if adaptive:
        first = mine(m, m)  # negatives of the first pass counted with tolerance m (methods.md §4.3, corrected)
        n_neg = sum(len(k[1]) for k in first)
        p_tot = sum(len(sets(i)[0]) for i in range(b))
        r = n_neg / p_tot
        if r > 1:
            tau = 1 / (1 + math.exp(-r)) / 2
            gp, gn = m * (1 + tau), m / 10 * (1 - tau)
    total = 0.0
    for i, (kp, kn) in enumerate(mine(gp, gn)):
        if not kp or not kn:
            continue
        lp = sum(torch.log(1 + torch.exp(-beta * (sims[i][j] - lam))) for j in kp) / len(kp)
        ln = sum(torch.log(1 + torch.exp(alpha * (sims[i][j] - lam))) for j in kn) / len(kn)
        total = total + 2 / beta * lp + 2 / alpha * ln
    return total / b


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("adaptive", [True, False])
def test_ddtas_matches_reference(seed: int, adaptive: bool) -> None:
    x, labels = random_batch(seed, dim=5, spread=0.8)
    loss = DDTASLoss(m=0.15, lam=0.4, alpha=12.0, beta=3.0, adaptive=adaptive)
    loss.set_progress(0.5)  # false-negative guard on
    value = loss(x, labels)
    args = dict(m=0.15, lam=0.4, alpha=12.0, beta=3.0, adaptive=adaptive, fn_cos=math.cos(0.6))
    ref = ref_ddtas(x, labels, **args)
    assert float(value) == pytest.approx(float(ref), **APPROX)
    torch.testing.assert_close(grad_of(value, x), grad_of(ref_ddtas(x, labels, **args), x), **TOL)
    st = loss.statistics()
    if adaptive:
        assert (st["gamma_pos"], st["gamma_neg"]) == pytest.approx(at_asms_tolerances(st["r"], 0.15))
    else:
        assert (st["gamma_pos"], st["gamma_neg"]) == pytest.approx((0.15, 0.015))


def test_ddtas_adaptive_tolerances_widen_when_negatives_dominate() -> None:
    x, labels = random_batch(0, dim=5, spread=0.8)
    loss = DDTASLoss(m=0.15, lam=0.4, alpha=12.0, beta=3.0)
    loss.set_progress(0.5)
    loss(x, labels)
    st = loss.statistics()
    assert st["r"] > 1 and st["gamma_pos"] > 0.15 and st["gamma_neg"] < 0.015


# ----------------------------------------------------------------------------------- true-gradient checks
@pytest.mark.parametrize(
    "make",
    [
        lambda: HardNetLoss(margin=0.6),
        lambda: SmartMiningLoss(),
        lambda: DGCRLLoss(decorrelation="soft", margin=0.9),
        lambda: DDTASLoss(alpha=12.0),
    ],
    ids=["hardnet", "smart_mining", "dgcrl_soft", "ddtas"],
)
def test_gradients_are_finite_difference_exact(make) -> None:
    """Losses without detached weights: autograd equals finite differences (mining fixed under tiny steps)."""
    x, labels = random_batch(7, dim=4, spread=1.0)
    loss = make()
    assert torch.autograd.gradcheck(lambda d: loss(d, labels), (x.detach().requires_grad_(),), eps=1e-7, atol=1e-6)


# ------------------------------------------------------------------------------------------------ DDTAS OTG
class TinyNet(torch.nn.Module):
    """A deterministic stand-in for the descriptor network: linear map + L2 normalisation."""

    def __init__(self, d_in: int = 6, d_out: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = torch.nn.Linear(d_in, d_out).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
            self.lin.bias.copy_(0.1 * torch.randn(d_out, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.lin(x), dim=1)


def _otg_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xt = torch.randn(12, 6, generator=g, dtype=torch.float64)
    yt = torch.arange(4).repeat_interleave(3)
    xv = torch.randn(8, 6, generator=g, dtype=torch.float64)
    yv = torch.arange(4).repeat_interleave(2)
    return xt, yt, xv, yv


def test_otg_pair_weights_equal_the_first_order_formula() -> None:
    """g_k = ∂L_val(θ − η∇Σε ℓ)/∂ε_k at ε = 0 equals −η ⟨∇L_val(θ), ∇ℓ_k(θ)⟩; weights = otg_normalise(g)."""
    from matcher.losses.ddtas import otg_normalise

    net = TinyNet()
    xt, yt, xv, yv = _otg_data()
    loss = DDTASLoss(alpha=12.0)
    otg = OnlineThresholdGenerator(loss, meta_lr=0.3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    otg.meta_step(net, xt, yt, xv, yv)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is untouched
    assert all(p.grad is None for p in net.parameters())
    assert loss._otg_cache is not None
    _, keep_pos, keep_neg, weights = loss._otg_cache
    selected = (keep_pos | keep_neg).nonzero().tolist()
    assert len(selected) > 3
    params = list(net.parameters())
    d_val = net(xv)
    s_val = d_val @ d_val.t()
    kp_v, kn_v, _ = loss.mine(s_val.detach(), yv)
    grad_val = torch.autograd.grad(loss.soft_contrastive(s_val, kp_v, kn_v, 0.5), params)
    g = []
    for i, j in selected:  # one pair at a time: ℓ_k = the loss with a one-hot weight on pair k
        d_tr = net(xt)
        s_tr = d_tr @ d_tr.t()
        onehot = torch.zeros_like(s_tr)
        onehot[i, j] = 1.0
        grad_k = torch.autograd.grad(loss.soft_contrastive(s_tr, keep_pos, keep_neg, 0.5, onehot), params)
        g.append(-0.3 * sum((a * b).sum() for a, b in zip(grad_val, grad_k)))
    expected = otg_normalise(torch.stack(g))
    got = torch.stack([weights[i, j] for i, j in selected])
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    assert float(expected.max()) == 1.0 and float(expected.min()) >= 0.0
    # The next forward on the same batch applies them: its value is the weighted formula.
    d_tr = net(xt)
    value = loss(d_tr, yt)
    s_tr = d_tr @ d_tr.t()
    assert float(value) == pytest.approx(float(loss.soft_contrastive(s_tr, keep_pos, keep_neg, 0.5, weights)), rel=1e-12)
    assert loss.statistics()["otg_weighted"] == 1.0
    loss(d_tr.detach(), yt)  # used once: the next call is unweighted again
    assert loss.statistics()["otg_weighted"] == 0.0


def test_otg_threshold_mode_steps_lambda_by_the_meta_gradient() -> None:
    net = TinyNet(seed=1)
    xt, yt, xv, yv = _otg_data(1)
    loss = DDTASLoss(alpha=12.0)
    otg = OnlineThresholdGenerator(loss, mode="threshold", meta_lr=0.5, threshold_lr=0.2)
    params = dict(net.named_parameters())

    def val_after_step(lam: float) -> float:
        d = net(xt)
        s = d @ d.t()
        kp, kn, _ = loss.mine(s.detach(), yt)
        grads = torch.autograd.grad(loss.soft_contrastive(s, kp, kn, lam), list(params.values()))
        new = {n: p - 0.5 * g for (n, p), g in zip(params.items(), grads)}
        dv = torch.func.functional_call(net, new, (xv,))
        sv = dv @ dv.t()
        kpv, knv, _ = loss.mine(sv.detach(), yv)
        return float(loss.soft_contrastive(sv, kpv, knv, 0.5))

    h = 1e-6
    fd = (val_after_step(0.5 + h) - val_after_step(0.5 - h)) / (2 * h)
    info = otg.meta_step(net, xt, yt, xv, yv)
    assert abs(fd) > 1e-6
    assert info["otg_lam_step"] == pytest.approx(-0.2 * fd, rel=1e-5)
    assert float(loss.lam) == pytest.approx(0.5 - 0.2 * fd, rel=1e-6)


def test_otg_needs_the_ddtas_loss() -> None:
    with pytest.raises(TypeError):
        OnlineThresholdGenerator(HardNetLoss())


# ----------------------------------------------------------------------------------------- Smart Mining batches
def test_mined_batches_put_globally_confusable_identities_together() -> None:
    """Identities 2c and 2c+1 are near-duplicates of each other (a hard negative for each other) and far from the
    rest: mined batches must bring each one's partner into its batch, a random P×K sampler rarely does."""
    g = torch.Generator().manual_seed(0)
    n_id, dim = 40, 32
    base = torch.nn.functional.normalize(torch.randn(n_id // 2, dim, generator=g), dim=1)
    centres = torch.repeat_interleave(base, 2, dim=0) + 0.35 * torch.randn(n_id, dim, generator=g) / math.sqrt(dim)
    labels = torch.arange(n_id).repeat_interleave(3)
    emb = torch.nn.functional.normalize(centres[labels] + 0.15 * torch.randn(len(labels), dim, generator=g) / math.sqrt(dim), dim=1)
    loss = SmartMiner(k=4, neighbours_per_seed=1, hard_positive_prob=1.0)
    loss.refresh_index(emb, labels)
    batches = loss.mined_batches(identities_per_batch=4, views_per_identity=2, seed=1)
    together = seen = 0
    covered: set[int] = set()
    for b in batches:
        lab = labels[torch.from_numpy(b)].reshape(-1, 2)
        assert (lab[:, 0] == lab[:, 1]).all()  # K consecutive views of one identity
        ids = lab[:, 0].tolist()
        assert len(set(ids)) == len(ids) <= 4  # at most once per batch
        covered.update(ids)
        for i in ids:
            seen += 1
            together += (i ^ 1) in ids
        # hard positive: the first view pair is the identity's farthest pair
        for a, p in torch.from_numpy(b).reshape(-1, 2).tolist():
            assert loss.index.positive[a] == p
    assert covered == set(range(n_id))  # every identity is visited in an epoch
    assert together / seen > 0.9
    random_batches = list(PKSampler(labels, 4, 2, seed=1))
    rnd = [labels[torch.from_numpy(b)].reshape(-1, 2)[:, 0].tolist() for b in random_batches]
    assert sum((i ^ 1) in ids for ids in rnd for i in ids) / sum(len(ids) for ids in rnd) < 0.3


def test_batch_stream_refreshes_on_schedule() -> None:
    net = TinyNet(d_in=6, d_out=4)
    g = torch.Generator().manual_seed(2)
    patches = torch.randn(60, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(20).repeat_interleave(3)
    miner, loss = SmartMiner(refresh_every=5), SmartMiningLoss()
    log: list[dict] = []
    stream = miner.batch_stream(net, patches, labels, identities_per_batch=4, seed=0, on_refresh=log.append)
    for _ in range(12):
        idx = torch.from_numpy(next(stream))
        loss(net(patches[idx]), labels[idx])
        miner.after_step()
    assert len(log) == 3 and int(miner.refreshes) == 3  # steps 0, 5, 10
    assert all({"rho", "epsilon"} <= set(entry) for entry in log)


def test_mined_epochs_differ_between_epochs_and_repeat_for_a_seed() -> None:
    g = torch.Generator().manual_seed(4)
    emb = torch.nn.functional.normalize(torch.randn(90, 8, generator=g), dim=1)
    labels = torch.arange(30).repeat_interleave(3)
    loss = SmartMiner()
    loss.refresh_index(emb, labels)
    e0 = loss.mined_batches(5, 2, seed=0, epoch=0)
    assert all((a == b).all() for a, b in zip(e0, loss.mined_batches(5, 2, seed=0, epoch=0)))
    assert not all(len(a) == len(b) and (a == b).all() for a, b in zip(e0, loss.mined_batches(5, 2, seed=0, epoch=1)))
