"""ADMM mechanics on a problem with a known answer; SR-STE gradients; masks that survive a state_dict."""

import pytest
import torch

from sw.admm import ADMM, ADMMSettings
from sw.masking import MaskedWeight, apply_masks, bake_masks, masked_weights, sr_ste
from core.pattern import PatternConfig, PatternPool
from sw.projections import NM, Pattern, Quantize, Unstructured


def orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def run_toy_admm(projection, seed=0, iterations=40, inner_steps=25, proximal=0.0):
    """min ½‖A W − B‖² s.t. W ∈ S with A orthogonal: the optimum is Π_S(Aᵀ B) (the loss is ½‖W − AᵀB‖² + c).
    ``proximal`` > 0: the penalty leaves the loss and ``admm.step()`` applies it as a proximal step."""
    g = torch.Generator().manual_seed(seed)
    a = orthogonal(8, seed)
    target = torch.randn(8, 8, generator=g, dtype=torch.float64)
    b = a @ target
    w = torch.nn.Parameter(torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.1)
    admm = ADMM({"w": (w, projection)}, ADMMSettings(rho=1.0, update_every=inner_steps, pool_rebuild_every=0, proximal=proximal))
    optimizer = torch.optim.SGD([w], lr=0.2)
    for _ in range(iterations * inner_steps):
        optimizer.zero_grad()
        loss = 0.5 * (a @ w - b).pow(2).sum() + (admm.penalty() if admm.settings.penalty_in_loss else 0.0)
        loss.backward()
        optimizer.step()
        admm.step()
    return admm, w, target


@pytest.mark.parametrize("proximal", [0.0, 0.2])
def test_admm_toy_reaches_the_projected_optimum(proximal):
    """With the penalty in the loss, and as a proximal step after each SGD step (η = the SGD rate)."""
    for projection in (Unstructured(0.5), NM(n=2, m=4)):
        admm, w, target = run_toy_admm(projection, proximal=proximal)
        optimum = projection(target)
        assert torch.equal(projection(admm.Z["w"]).mask, optimum.mask)
        # ADMM with inexact SGD inner solves converges geometrically, never bit-exactly: the support is
        # checked exactly above, the kept values to the convergence reached in 40 updates.
        torch.testing.assert_close(admm.Z["w"], optimum.value, rtol=0, atol=1e-6)
        assert admm.residuals()["w"] < 1e-6


def test_admm_toy_with_a_pattern_pool():
    pool = PatternPool(PatternConfig(2, 2, 3), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool))
    projection = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool)
    admm, _, target = run_toy_admm(projection, seed=3)
    fixed_pool = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool)
    assert torch.equal(admm.Z["w"] != 0, fixed_pool(target).value != 0)
    # iterative solver: values to the convergence reached (see above), the support exactly
    torch.testing.assert_close(admm.Z["w"], fixed_pool(target).value, rtol=0, atol=1e-6)


def test_penalty_is_half_rho_squared_frobenius_with_its_gradient():
    w = torch.nn.Parameter(torch.randn(6, 8, dtype=torch.float64))
    admm = ADMM({"w": (w, Unstructured(0.5))}, ADMMSettings(rho=0.3))
    admm.U["w"] = torch.randn(6, 8, dtype=torch.float64)
    penalty = admm.penalty()
    diff = w.detach() - admm.Z["w"] + admm.U["w"]
    assert torch.equal(penalty, 0.5 * 0.3 * diff.pow(2).sum())  # same operations, same order: exact
    penalty.backward()
    # autograd forms 0.15·(2·diff) where ρ·diff is written here: equal up to one rounding of the constant
    torch.testing.assert_close(w.grad, 0.3 * diff, rtol=1e-15, atol=0)


def test_proximal_step_is_the_closed_form_prox_of_the_penalty():
    """``W ← (W + ηρ(Z − U)) / (1 + ηρ)``, the minimizer of ηρ/2‖V − Z + U‖² + ½‖V − W‖², once per step."""
    w = torch.nn.Parameter(torch.randn(6, 8, dtype=torch.float64))
    admm = ADMM({"w": (w, Unstructured(0.5))}, ADMMSettings(rho=0.3, update_every=100, proximal=0.05))
    assert not admm.settings.penalty_in_loss and ADMMSettings().penalty_in_loss
    admm.U["w"] = torch.randn(6, 8, dtype=torch.float64)
    before = w.detach().clone()
    assert not admm.step()
    pull = 0.05 * 0.3
    assert torch.equal(w.detach(), (before + pull * (admm.Z["w"] - admm.U["w"])) / (1.0 + pull))
    # it is the prox: the gradient of the prox objective vanishes at the new point (float64 rounding)
    gradient = pull * (w.detach() - admm.Z["w"] + admm.U["w"]) + (w.detach() - before)
    assert float(gradient.abs().max()) < 1e-15
    plain = ADMM({"w": (torch.nn.Parameter(before.clone()), Unstructured(0.5))}, ADMMSettings(rho=0.3, update_every=100))
    plain.step()
    assert torch.equal(plain.params["w"].detach(), before)  # without ``proximal`` the step leaves W alone
    with pytest.raises(ValueError, match="admm.proximal must be ≥ 0"):
        ADMMSettings(proximal=-0.1)
    with pytest.raises(ValueError, match="admm.proximal must be ≥ 0"):
        ADMMSettings(proximal=float("nan"))


def test_activation_weighted_targets_run_admm_in_their_norm():
    """A pattern projection with column scales s: penalty ρ/2‖(W − Z + U)·diag(s)‖², proximal pull ηρ·s_b²."""
    g = torch.Generator().manual_seed(4)
    w = torch.nn.Parameter(torch.randn(8, 8, generator=g, dtype=torch.float64))
    projection = Pattern(4, 8, 4, weighting="activation")
    projection.set_column_scale(torch.rand(8, generator=g, dtype=torch.float64) + 0.5)
    s = projection.column_scale
    admm = ADMM({"w": (w, projection)}, ADMMSettings(rho=0.3, update_every=100, proximal=0.05))
    assert torch.equal(admm.Z["w"], projection(w.detach()).value)  # Z starts at the weighted projection
    admm.U["w"] = torch.randn(8, 8, generator=g, dtype=torch.float64)
    diff = w.detach() - admm.Z["w"] + admm.U["w"]
    assert torch.equal(admm.penalty(), 0.5 * 0.3 * (diff * s).pow(2).sum())
    before = w.detach().clone()
    admm.step()
    pull = 0.05 * 0.3 * s.pow(2)
    assert torch.equal(w.detach(), (before + pull * (admm.Z["w"] - admm.U["w"])) / (1.0 + pull))


def test_update_is_z_projection_and_dual_ascent_with_rho_schedule():
    w = torch.nn.Parameter(torch.randn(4, 8, dtype=torch.float64))
    projection = NM(n=1, m=4)
    admm = ADMM({"w": (w, projection)}, ADMMSettings(rho=0.1, rho_growth=2.0, rho_max=0.3, update_every=2))
    u0 = torch.randn(4, 8, dtype=torch.float64)
    admm.U["w"] = u0.clone()
    assert not admm.step()
    assert admm.step()  # second step: update
    z = projection(w.detach() + u0).value
    assert torch.equal(admm.Z["w"], z)
    # ρ 0.1 → 0.2: the scaled dual is rescaled by ρ_old/ρ_new so the multiplier ρ·U is unchanged
    assert admm.rho["w"] == 0.2
    assert torch.equal(admm.U["w"], (u0 + (w.detach() - z)) * (0.1 / 0.2))
    u1 = admm.U["w"].clone()
    admm.update()
    assert admm.rho["w"] == 0.3  # capped
    z = projection(w.detach() + u1).value
    assert torch.equal(admm.Z["w"], z)
    assert torch.equal(admm.U["w"], (u1 + (w.detach() - z)) * (0.2 / 0.3))


@pytest.mark.parametrize("phase_steps", [17, 40, 230, 536])
def test_updates_per_phase_spread_evenly_whatever_the_phase_length(phase_steps):
    """``updates`` Z/U updates land every ⌊steps/updates⌋ steps, so ρ ramps to the same value on any task."""
    w = torch.nn.Parameter(torch.randn(4, 8, dtype=torch.float64))
    admm = ADMM({"w": (w, NM(n=1, m=4))}, ADMMSettings(rho=0.01, rho_growth=1.31, rho_max=1.0, update_every=30, updates=17))
    every = admm.plan(phase_steps)
    ran = [step + 1 for step in range(phase_steps) if admm.step()]
    assert every == phase_steps // 17 and ran == [every * (i + 1) for i in range(17)]
    assert admm.rho["w"] == pytest.approx(min(0.01 * 1.31 ** 17, 1.0))


def test_updates_that_do_not_fit_the_phase_are_refused():
    w = torch.nn.Parameter(torch.randn(4, 8))
    admm = ADMM({"w": (w, NM(n=1, m=4))}, ADMMSettings(updates=17))
    with pytest.raises(ValueError, match="admm.updates = 17 Z/U updates do not fit in an ADMM phase of 16 steps"):
        admm.plan(16)
    with pytest.raises(ValueError, match="admm.updates must be ≥ 0"):
        ADMMSettings(updates=-1)
    assert ADMM({"w": (w, NM(n=1, m=4))}, ADMMSettings(update_every=30)).plan(1000) == 30  # no updates: update_every


def test_admm_state_round_trip_keeps_pattern_pool():
    w = torch.nn.Parameter(torch.randn(8, 8))
    admm = ADMM({"w": (w, Pattern(4, 8, 4))})
    admm.update()
    state = admm.state_dict()
    other = ADMM({"w": (torch.nn.Parameter(torch.randn(8, 8)), Pattern(4, 8, 4))})
    other.load_state_dict(state)
    assert torch.equal(other.Z["w"], admm.Z["w"]) and torch.equal(other.U["w"], admm.U["w"])
    assert torch.equal(other.projections["w"].pool.masks, admm.projections["w"].pool.masks)


def test_sr_ste_forward_masks_and_backward_is_straight_through_plus_decay():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g, requires_grad=True)
    mask = torch.rand(5, 7, generator=g) > 0.5
    upstream = torch.randn(5, 7, generator=g)
    out = sr_ste(w, mask, 0.01)
    assert torch.equal(out, w.detach() * mask)
    (out * upstream).sum().backward()
    assert torch.equal(w.grad, upstream + 0.01 * (~mask) * w.detach())


def test_fake_quantized_masked_weight_is_the_quantization_projection():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 8, generator=g, requires_grad=True)
    mask = torch.rand(6, 8, generator=g) > 0.5
    param = MaskedWeight(mask, decay=0.0, bits=4)
    out = param(w)
    assert torch.equal(out, Quantize(4)(w.detach() * mask).value)
    upstream = torch.randn(6, 8, generator=g)
    (out * upstream).sum().backward()
    # straight through: autograd multiplies by the row scale (rounding backward) then divides by it
    scale = Quantize(4).scales(w.detach() * mask)[:, None]
    assert torch.equal(w.grad, (upstream * scale) / scale)


def test_masks_survive_state_dict_and_continued_training():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    mask = NM(n=2, m=4)(model[0].weight).mask
    apply_masks(model, {"0.weight": mask})
    state = model.state_dict()

    again = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    apply_masks(again, {"0.weight": torch.ones(8, 8, dtype=torch.bool)})
    again.load_state_dict(state)
    assert torch.equal(masked_weights(again)["0.weight"].mask, mask)

    optimizer = torch.optim.SGD(again.parameters(), lr=0.01)
    for _ in range(5):
        optimizer.zero_grad()
        again(torch.randn(16, 8)).pow(2).sum().backward()
        optimizer.step()
    assert not bool(again[0].weight[~mask].any())
    bake_masks(again)
    assert not masked_weights(again) and not bool(again[0].weight[~mask].any())
