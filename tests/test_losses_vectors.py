"""The hand-computed test vectors of shared/docs/methods.md §6 (T-S1..T-S4, T-D1..T-D3, T-G1, T-G2, T-U1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matcher.losses import SDGMLoss
from matcher.losses.base import hardest_negatives, pair_indices
from matcher.losses.ddtas import DDTASLoss, asms_select, at_asms_tolerances, otg_normalise, soft_contrastive_anchor
from matcher.losses.dgcrl import DGCRLLoss, centralized_ranking_hinge, gram_schmidt
from matcher.losses.sdgm import auto_focus_weight, probabilistic_margin
from matcher.training.metrics import fpr95


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def u(t: float) -> list[float]:
    return [math.cos(t), math.sin(t)]


# ------------------------------------------------------------------------------------------------- T-S1
def test_ts1_probabilistic_margin() -> None:
    m = probabilistic_margin(-0.34305, 0.21845, 0.6)
    assert m == pytest.approx(-0.287706, abs=1e-6)
    assert probabilistic_margin(0.0, 1.0, 0.6) == pytest.approx(0.253347, abs=1e-6)  # Φ⁻¹(0.6)
    loss = _sdgm_with_ts2_state()
    for delta, kept in [(-0.30, 0.0), (-0.10, 1.0)]:
        _, _, w_c = loss.weights(torch.tensor([1.0]), torch.tensor([1.0 - delta]))
        assert float(w_c) == kept
    # boundary: δ exactly at the margin is kept (≥)
    theta_p = torch.tensor([1.0], dtype=torch.float64)
    theta_n = theta_p - loss.margin()
    assert float(loss.weights(theta_p, theta_n)[2]) == 1.0


# ------------------------------------------------------------------------------------------------- T-S2
def _sdgm_with_ts2_state() -> SDGMLoss:
    loss = SDGMLoss(alpha=0.9, p_m=0.6)
    state = dict(
        mu_p=0.82684, sigma_p=0.20178, mu_n=1.16990, sigma_n=0.08137,
        mu_delta=-0.34305, sigma_delta=0.21845, power_p=278.99863, power_n=293.42047,
    )
    for name, value in state.items():
        getattr(loss, name).fill_(value)
    loss.initialised.fill_(True)
    loss.set_progress(0.5)  # after warm-up
    loss.eval()  # keep the running statistics fixed
    return loss


TS2_ROWS = [
    # θ_p, θ_n, w^c, w^s_p, w^s_n, ∂L/∂s_p, ∂L/∂s_n, L-term
    (1.0, 1.1, 1, 0.971909, 0.993347, -3.7259e-3, 3.7987e-3, -5.8874e-4),
    (1.4, 1.0, 1, 0.731857, 0.961332, -2.3957e-3, 3.8935e-3, 2.8881e-5),
    (0.82684, 1.16990, 0, 1.0, 1.0, 0.0, 0.0, 0.0),
    (0.5, 1.5, 0, 0.903472, 0.861685, 0.0, 0.0, 0.0),
]


def test_ts2_auto_focus_widths_and_weights() -> None:
    assert math.pi / 6 + 0.20178 == pytest.approx(0.725378, abs=1e-6)
    assert math.pi / 6 + 0.08137 == pytest.approx(0.604969, abs=1e-6)
    for tp, tn, _, wsp, wsn, *_ in TS2_ROWS:
        assert float(auto_focus_weight(torch.tensor(tp, dtype=torch.float64), 0.82684, 0.20178)) == pytest.approx(wsp, abs=1e-6)
        assert float(auto_focus_weight(torch.tensor(tn, dtype=torch.float64), 1.16990, 0.08137)) == pytest.approx(wsn, abs=1e-6)
    assert 0.9 * 0.731857 == pytest.approx(0.658671, abs=1e-6)


@pytest.mark.parametrize("row", TS2_ROWS, ids=[f"row{i}" for i in range(4)])
def test_ts2_loss_term_and_gradient_factors(row) -> None:
    """One pair (a, p) at angle θ_p plus a lone negative x at angle θ_n from a, through the full SDGMLoss."""
    tp, tn, wc, _, _, g_sp, g_sn, term = row
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    p = torch.tensor([math.cos(tp), math.sin(tp), 0.0], dtype=torch.float64)
    x = torch.tensor([math.cos(tn), 0.0, math.sin(tn)], dtype=torch.float64)  # x·a = cos θ_n, x·p < x·a
    desc = torch.stack([a, p, x]).requires_grad_(True)
    loss = _sdgm_with_ts2_state()
    value = loss(desc, torch.tensor([0, 0, 1]))
    assert float(value) == pytest.approx(term, rel=1e-3, abs=1e-9)
    assert loss.statistics()["kept_fraction"] == wc
    value.backward()
    # L depends on p only through s_p = a·p and on x only through s_n = x·a, so the gradients are s-factors times a.
    assert float(desc.grad[1] @ a) == pytest.approx(g_sp, rel=1e-3, abs=1e-9)
    assert float(desc.grad[2] @ a) == pytest.approx(g_sn, rel=1e-3, abs=1e-9)


# ------------------------------------------------------------------------------------------------- T-S3
def _ts3_batch() -> tuple[torch.Tensor, torch.Tensor]:
    anchors = [u(0.0), u(1.0), u(0.45)]
    positives = [u(0.3), u(1.2), u(0.5)]
    desc = torch.tensor([v for pair in zip(anchors, positives) for v in pair], dtype=torch.float64)
    return desc, torch.tensor([0, 0, 1, 1, 2, 2])


def test_ts3_negative_mining_without_and_with_guard() -> None:
    desc, labels = _ts3_batch()
    idx_a, idx_p = pair_indices(labels)
    sim = desc @ desc.t()
    s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, "all", 1 - 1e-5)
    assert valid.all()
    np.testing.assert_allclose(np.arccos(s_n.numpy()), [0.15, 0.50, 0.15], atol=1e-7)
    assert float(s_n[0]) == pytest.approx(0.98877, abs=1e-5)
    s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, "all", math.cos(0.6))
    assert valid.tolist() == [True, True, False]
    np.testing.assert_allclose(np.arccos(s_n[:2].numpy()), [0.70, 0.70], atol=1e-7)


def test_ts3_sdgm_drops_the_pair_without_admissible_negative_instead_of_nan() -> None:
    desc, labels = _ts3_batch()
    desc.requires_grad_(True)
    loss = SDGMLoss()
    loss.set_progress(0.5)  # guard on (τ ≥ 0.125)
    value = loss(desc, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(desc.grad).all()
    st = loss.statistics()
    assert st["pairs"] == 2 and st["dropped_pairs"] == 1
    assert st["fn_threshold"] == pytest.approx(0.825336, abs=1e-6)


# ------------------------------------------------------------------------------------------------- T-S4
def test_ts4_ema_and_power_warmup() -> None:
    lam = 0.999
    assert lam * 0.8 + (1 - lam) * 0.7 == pytest.approx(0.7999)
    # Through the module: a batch of 1024 pairs during warm-up has Σw = 1024; feed the EMA directly.
    loss = SDGMLoss()
    power = loss.power_p
    power.fill_(10000.0)
    for _ in range(1000):
        loss._ema(power, 1024.0)
    assert float(power) == pytest.approx(4324.43, abs=0.01)
    for _ in range(19000):
        loss._ema(power, 1024.0)
    assert float(power) == pytest.approx(1024.00002, abs=1e-5)


def test_ts4_first_step_of_module_power_starts_at_10000() -> None:
    g = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=1)
    loss = SDGMLoss()
    loss(desc, torch.arange(4).repeat_interleave(2))  # warm-up: w = 1 for 4 pairs
    assert float(loss.power_p) == pytest.approx(0.999 * 10000 + 0.001 * 4)
    assert float(loss.mu_delta) == -1.0  # the released code's initial μ_δ


# ------------------------------------------------------------------------------------------------- T-D1
@pytest.mark.parametrize(
    "r, gp, gn",
    [(0.8, 0.1, 0.01), (1.5, 0.140879, 0.005912), (3.0, 0.147629, 0.005237), (10.0, 0.149998, 0.005000)],
)
def test_td1_at_asms_tolerances(r: float, gp: float, gn: float) -> None:
    assert at_asms_tolerances(r, 0.1) == pytest.approx((gp, gn), abs=1e-6)


# ------------------------------------------------------------------------------------------------- T-D2
def test_td2_asms_and_soft_contrastive_for_one_anchor() -> None:
    pos = torch.tensor([0.9, 0.6, 0.5], dtype=torch.float64, requires_grad=True)
    neg = torch.tensor([0.65, 0.55, 0.30, 0.20], dtype=torch.float64, requires_grad=True)
    for gp, gn in [(0.1, 0.01), at_asms_tolerances(3.0, 0.1)]:
        kp, kn = asms_select(pos.detach(), neg.detach(), gp, gn)
        assert kp.tolist() == [False, True, True] and kn.tolist() == [True, True, False, False]
    kp, kn = asms_select(pos.detach(), neg.detach(), 0.1, 0.01)
    loss = soft_contrastive_anchor(pos[kp], neg[kn], lam=0.7, alpha=40.0, beta=2.0)
    l_pos = (2.0 / 2.0) * torch.nn.functional.softplus(-2.0 * (pos[kp] - 0.7)).mean()
    assert float(l_pos) == pytest.approx(0.855577, abs=1e-6)
    assert float(loss) - float(l_pos) == pytest.approx(0.003235, abs=1e-6)
    assert float(loss) == pytest.approx(0.858812, abs=1e-6)
    loss.backward()
    np.testing.assert_allclose(pos.grad.numpy(), [0.0, -0.549834, -0.598688], atol=1e-6)
    np.testing.assert_allclose(neg.grad.numpy(), [0.119203, 0.002473, 0.0, 0.0], atol=1e-6)


def test_td2_through_the_module() -> None:
    """The same anchor inside DDTASLoss: similarities realised by 2-D unit vectors; the anchor's L_i / B."""
    sims = {"p": [0.9, 0.6, 0.5], "n": [0.65, 0.55, 0.30, 0.20]}
    rows = [u(0.0)] + [u(math.acos(s)) for s in sims["p"]] + [u(-math.acos(s)) for s in sims["n"]]
    desc = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 3, 4])
    loss = DDTASLoss(m=0.1, lam=0.7, alpha=40.0, beta=2.0, adaptive=False, fn_angle=None)
    value = loss(desc, labels)
    # Other anchors contribute too; isolate anchor 0 with the loss's own machinery on its row.
    sim = desc @ desc.t()
    kp, kn, _ = loss.mine(sim.detach(), labels)
    assert kp[0].nonzero().reshape(-1).tolist() == [2, 3]
    assert kn[0].nonzero().reshape(-1).tolist() == [4, 5]
    row0 = soft_contrastive_anchor(sim[0, kp[0]], sim[0, kn[0]], 0.7, 40.0, 2.0)
    assert float(row0) == pytest.approx(0.858812, abs=1e-6)
    assert torch.isfinite(value)


# ------------------------------------------------------------------------------------------------- T-D3
def test_td3_otg_weight_normalisation() -> None:
    w = otg_normalise(torch.tensor([-0.2, 0.1, -0.5, 0.0]))
    np.testing.assert_allclose(w.numpy(), [0.4, 0.0, 1.0, 0.0], atol=1e-7)
    np.testing.assert_array_equal(otg_normalise(torch.tensor([0.3, 0.0, 0.1])).numpy(), [1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------- T-G1
def test_tg1_centralized_ranking_hinge() -> None:
    z = torch.tensor([1.0, 0.0], dtype=torch.float64)
    c_y = torch.tensor(u(0.5), dtype=torch.float64)
    assert float(((z - c_y) ** 2).sum()) == pytest.approx(0.244835, abs=1e-6)
    others = torch.tensor([u(math.pi / 2), u(-0.6)], dtype=torch.float64)
    h = centralized_ranking_hinge(z, c_y, others, margin=0.5)
    np.testing.assert_allclose(h.numpy(), [0.0, 0.395506], atol=1e-6)


def test_tg1_through_the_module_with_global_centres() -> None:
    """Global centres [u(0.5), u(π/2), u(−0.6)] (not orthogonalised: decorrelation='none'), s = 1, m = 0.5."""
    loss = DGCRLLoss(scale=1.0, margin=0.5, num_classes=3, embedding_dim=2, decorrelation="none").double()
    with torch.no_grad():
        loss.centres.copy_(torch.tensor([u(0.5), u(math.pi / 2), u(-0.6)], dtype=torch.float64))
    value = loss(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0]))
    assert float(value) == pytest.approx((0.0 + 0.395506) / 2, abs=1e-6)  # mean over the K − 1 = 2 other centres


# ------------------------------------------------------------------------------------------------- T-G2
def test_tg2_gram_schmidt() -> None:
    c = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    c[1] /= math.sqrt(2)
    np.testing.assert_allclose(gram_schmidt(c).numpy(), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    s = 2.5
    assert (s * gram_schmidt(c)).norm(dim=1).tolist() == pytest.approx([s, s])


# ------------------------------------------------------------------------------------------------- T-U1
def test_tu1_fpr95() -> None:
    assert fpr95(np.array([1, 0, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5])) == pytest.approx(0.5)
