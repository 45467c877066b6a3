"""No NaN/Inf on degenerate batches (duplicates, one label, one pair, bf16), and state_dict round trips."""

from __future__ import annotations

import io

import pytest
import torch

from matcher.losses import LOSSES, DDTASLoss, DGCRLLoss, SDGMLoss, get_loss
from matcher.training.miners import SmartMiner

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

NAMES = sorted(LOSSES)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def make(name: str, progress: float) -> torch.nn.Module:
    loss = get_loss(name)
    loss.set_progress(progress)  # 0.0: warm-up, guards off; 0.5: modulation and false-negative guards on
    return loss


def check_finite(loss: torch.nn.Module, desc: torch.Tensor, labels: torch.Tensor, steps: int = 3) -> None:
    for _ in range(steps):  # several calls: running statistics must stay finite too
        x = desc.detach().clone().requires_grad_(True)
        value = loss(x, labels)
        assert value.ndim == 0
        assert torch.isfinite(value), f"loss {value}"
        value.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        stats = loss.statistics()
        bad = {k: v for k, v in stats.items() if v != v and k not in ("rho", "r")}  # NaN = not yet measured
        assert not bad, bad
        assert all(abs(v) != float("inf") for v in stats.values())


@pytest.mark.parametrize("progress", [0.0, 0.5])
@pytest.mark.parametrize("name", NAMES)
def test_duplicate_descriptors(name: str, progress: float) -> None:
    """Every row identical (4 identities × 2 views), and two identities sharing a descriptor."""
    labels = torch.arange(4).repeat_interleave(2)
    check_finite(make(name, progress), unit(1).repeat(8, 1), labels)
    partial = unit(8)
    partial[2:4] = partial[0]  # identity 1's views equal identity 0's first view
    check_finite(make(name, progress), partial, labels)


@pytest.mark.parametrize("progress", [0.0, 0.5])
@pytest.mark.parametrize("name", NAMES)
def test_all_rows_share_a_label(name: str, progress: float) -> None:
    loss = make(name, progress)
    desc = unit(6)
    labels = torch.zeros(6, dtype=torch.long)
    check_finite(loss, desc, labels)
    x = desc.clone().requires_grad_(True)
    value = loss(x, labels)
    value.backward()
    # No negative exists: nothing to learn from, the loss must not invent a gradient.
    assert float(value) == 0.0 and float(x.grad.abs().max()) == 0.0


@pytest.mark.parametrize("progress", [0.0, 0.5])
@pytest.mark.parametrize("name", NAMES)
def test_one_pair_and_tiny_batches(name: str, progress: float) -> None:
    check_finite(make(name, progress), unit(2), torch.tensor([3, 3]))  # one pair, no negative
    check_finite(make(name, progress), unit(1), torch.tensor([0]))  # one sample
    check_finite(make(name, progress), unit(3), torch.tensor([0, 0, 1]))  # one pair + one lone negative
    check_finite(make(name, progress), unit(4), torch.tensor([0, 1, 2, 3]))  # no positive at all
    check_finite(make(name, progress), unit(0), torch.zeros(0, dtype=torch.long))  # empty batch


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_and_autocast(name: str) -> None:
    labels = torch.arange(8).repeat_interleave(2)
    desc32 = unit(16, 32, seed=1)
    loss = make(name, 0.5)
    x = desc32.to(torch.bfloat16).requires_grad_(True)
    value = loss(x, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    # bf16 rows are unit only to ~3 digits; the loss must be close to the float32 value.
    ref = make(name, 0.5)(desc32.to(torch.bfloat16).float(), labels)
    assert float(value) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    # Inside an autocast region (as a bf16 forward pass of the network would be).
    net = torch.nn.Linear(32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.normalize(net(desc32), dim=1)
        value = make(name, 0.5)(out, labels)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(net.weight.grad).all()


def _run(loss: torch.nn.Module, seeds: range) -> list[float]:
    labels = torch.arange(6).repeat_interleave(2)
    out = []
    for s in seeds:
        loss.set_progress(0.05 * s)
        out.append(float(loss(unit(12, 8, seed=s), labels)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    """Train a loss's state for a few batches, save, load into a fresh instance: same future values and stats."""
    kwargs = {"sdgm": dict(momentum=0.7, power_init=None), "dgcrl": dict(num_classes=6, embedding_dim=8)}.get(name, {})
    a = get_loss(name, **kwargs)
    _run(a, range(5))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = get_loss(name, **kwargs)
    b.load_state_dict(torch.load(buf))
    stats_a = {k: v for k, v in a.statistics().items() if k in dict(b.state_dict())}
    stats_b = {k: v for k, v in b.statistics().items() if k in dict(b.state_dict())}
    assert stats_a == stats_b
    assert _run(a, range(5, 9)) == _run(b, range(5, 9))
    assert a.statistics() == pytest.approx(b.statistics(), nan_ok=True)


def test_smart_miner_state_round_trip() -> None:
    """The miner's state (ε, ρ, counters) is saved; its index is rebuilt, not saved."""
    emb, lab = unit(40, 8, seed=9), torch.arange(20).repeat_interleave(2)
    a = SmartMiner()
    a.refresh_index(emb, lab)
    a.after_step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = SmartMiner()
    b.load_state_dict(torch.load(buf))
    assert b.needs_refresh()
    a.refresh_index(emb, lab)
    b.refresh_index(emb, lab)
    assert a.statistics() == pytest.approx(b.statistics(), nan_ok=True)


def test_sdgm_state_is_in_state_dict_and_changes() -> None:
    loss = SDGMLoss(momentum=0.5, power_init=None)
    keys = set(loss.state_dict())
    assert {"mu_p", "sigma_p", "mu_n", "sigma_n", "mu_delta", "sigma_delta", "power_p", "power_n", "progress"} <= keys
    before = loss.state_dict()["mu_p"].clone()
    _run(loss, range(3))
    assert float(loss.state_dict()["mu_p"]) != float(before)


def test_ddtas_and_dgcrl_state_keys() -> None:
    assert "lam" in DDTASLoss().state_dict()
    assert "centres" in DGCRLLoss(num_classes=4, embedding_dim=8).state_dict()
    assert {"epsilon", "rho", "steps", "refreshes"} <= set(SmartMiner().state_dict())


def test_public_api_is_sorted_and_complete() -> None:
    import matcher.losses
    import matcher.training

    for module in (matcher.losses, matcher.training):
        assert list(module.__all__) == sorted(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
    assert sorted(LOSSES) == ["ddtas", "dgcrl", "hardnet", "sdgm", "smart_mining"]
    for name, cls in LOSSES.items():
        assert isinstance(get_loss(name), cls) and cls.__doc__ and len(cls.__doc__) > 500


def test_unknown_loss_name_and_bad_inputs() -> None:
    with pytest.raises(KeyError, match="hardnet"):
        get_loss("arcface")
    loss = get_loss("hardnet")
    with pytest.raises(ValueError):
        loss(unit(4), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError):
        loss(unit(4)[None], torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError):
        loss(unit(4), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_sdgm_total_steps_advances_progress_itself() -> None:
    loss = SDGMLoss(total_steps=10)
    labels = torch.arange(4).repeat_interleave(2)
    for i in range(4):
        loss(unit(8, 8, seed=i), labels)
    assert loss.statistics()["progress"] == pytest.approx(0.3)  # set from 3 finished steps before the 4th call
    loss.eval()
    loss(unit(8, 8, seed=9), labels)
    assert loss.statistics()["progress"] == pytest.approx(0.3) and loss.statistics()["steps"] == 4


def test_smart_mining_refreshes_relative_to_the_run_length() -> None:
    """A 300-step run mines 5 times by default (every 60 steps), not once on the untrained network."""
    loss = SmartMiner()
    loss.set_run_length(300)
    assert loss.refresh_every == 60
    fixed = SmartMiner(refresh_every=100)
    fixed.set_run_length(300)
    assert fixed.refresh_every == 100
