"""ADMM for constrained training: ``min f(W) s.t. W_i ∈ S_i`` by alternating SGD and projections.

Per constrained weight ``W_i`` the state is ``Z_i`` (a point of ``S_i``), the scaled dual ``U_i`` and the
penalty ``ρ_i``. Training minimizes ``f(W) + Σ_i ρ_i/2 · ‖W_i − Z_i + U_i‖²_F`` (the *squared* Frobenius
norm: its gradient is ``ρ_i (W_i − Z_i + U_i)``); every ``update_every`` optimizer steps (or, with ``updates``
set, ``updates`` times evenly over the phase, so that ρ ramps as far on a small task as on a large one)::

    Z_i ← Π_{S_i}(W_i + U_i)
    U_i ← U_i + W_i − Z_i
    ρ_i ← min(ρ_i · rho_growth, rho_max);  U_i ← U_i · ρ_old / ρ_new

``U`` is the *scaled* dual (the multiplier divided by ρ), so when ρ grows it is rescaled to keep the
multiplier itself unchanged (Boyd et al., "Distributed optimization … ADMM", §3.4.1). Without that the
dual pull grows with ρ on top of its own accumulation and the supports oscillate.

With ``proximal`` = η > 0 the penalty leaves the loss: the optimizer sees the task loss alone, and after
every optimizer step each target takes the exact proximal step of ``η·ρ/2 · ‖W − Z + U‖²``::

    W ← (W + ηρ (Z − U)) / (1 + ηρ)

which moves W a fraction ηρ/(1 + ηρ) of the way to ``Z − U``. Adam-type optimizers move every weight by
about one learning rate per step whatever the size of its gradient, so through the loss the penalty can
only pull the pruned weights to zero at a high learning rate; the decoupled step (as AdamW decouples
weight decay) pulls in proportion to the distance at any learning rate, and leaves the optimizer's
moments to the task gradient.

A projection with a weighted norm (a pattern projection with ``weighting: "activation"``, whose
``metric`` gives a per-input-column factor ``s``) makes ADMM run in that norm: the penalty is
``ρ/2 · ‖(W − Z + U) · diag(s)‖²`` and the proximal step's pull ``ηρ s_b²`` per column, so ``Z ← Π(W + U)``
is again the exact minimizer of the Z-subproblem.

``Z`` starts at ``Π(W)`` and ``U`` at zero. A pattern projection without a pool builds one from ``W``
at the start; then its pool is rebuilt from ``W + U`` every ``pool_rebuild_every`` Z-updates (0: keep
it, e.g. a pool the user gave), so the pool follows the weights while ADMM reshapes them. The pool is
frozen from hard pruning on.

Multi-process training (DDP through Accelerate or torchrun): every process holds a full ``Z``/``U`` for
every target and applies the same deterministic update to the same replicated ``W``, so the copies
stay identical without communication. Save the state from one process (``state_dict``) and load it
into all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.pattern import PatternPool
from sw.projections import Pattern, Projection


@dataclass
class ADMMSettings:
    rho: float = 0.01
    rho_growth: float = 1.0  # 1.0 keeps ρ constant
    rho_max: float = 1.0
    update_every: int = 100  # optimizer steps between Z/U updates
    pool_rebuild_every: int = 1  # Z-updates between pool rebuilds (0: never after the first)
    updates: int = 0  # > 0: this many Z/U updates, every ⌊phase steps / updates⌋ steps (update_every unused)
    proximal: float = 0.0  # η > 0: the penalty leaves the loss; a proximal step of η·penalty after each optimizer step

    def __post_init__(self):
        if self.update_every < 1:
            raise ValueError(f"admm.update_every must be ≥ 1, got {self.update_every}")
        if self.updates < 0:
            raise ValueError(f"admm.updates must be ≥ 0, got {self.updates}")
        if not self.proximal >= 0:
            raise ValueError(f"admm.proximal must be ≥ 0, got {self.proximal}")

    @property
    def penalty_in_loss(self) -> bool:
        """Whether the training loss carries the penalty (otherwise :meth:`ADMM.step` applies it)."""
        return self.proximal == 0


class ADMM:
    """ADMM state for named weights: ``ADMM({name: (parameter, projection)}, settings)``.

    Use ``loss = task_loss + admm.penalty()`` each step (unless ``settings.penalty_in_loss`` is false) and
    call ``admm.step()`` after each optimizer step (it takes the proximal step when the settings give one,
    and updates ``Z``/``U`` every ``update_every`` calls; call ``plan(steps)`` first when the settings give
    ``updates`` per phase). ``residuals()`` gives ``‖W − Z‖ / ‖W‖``
    per weight, the convergence measure to log.
    """

    def __init__(self, targets: dict[str, tuple[torch.nn.Parameter, Projection]], settings: ADMMSettings = ADMMSettings()):
        if not targets:
            raise ValueError("ADMM needs at least one target weight")
        self.settings = settings
        self.params = {name: param for name, (param, _) in targets.items()}
        self.projections = {name: projection for name, (_, projection) in targets.items()}
        self.rho = {name: settings.rho for name in targets}
        self.U = {name: torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for name, p in self.params.items()}
        self.Z = {name: self._project(name, p.detach(), rebuild=False) for name, p in self.params.items()}
        self.steps = 0
        self.updates = 0
        self.every = settings.update_every  # steps between updates (``plan`` sets it from ``updates``)

    def plan(self, phase_steps: int) -> int:
        """Spread ``settings.updates`` Z/U updates evenly over a phase of ``phase_steps`` optimizer steps
        (a no-op when ``updates`` is 0). Returns the steps between updates."""
        if self.settings.updates:
            if phase_steps < self.settings.updates:
                raise ValueError(f"admm.updates = {self.settings.updates} Z/U updates do not fit in an ADMM phase of "
                                 f"{phase_steps} steps")
            self.every = phase_steps // self.settings.updates
        return self.every

    def _project(self, name: str, point: torch.Tensor, rebuild: bool) -> torch.Tensor:
        projection = self.projections[name]
        if isinstance(projection, Pattern) and (rebuild or projection.pool is None):
            projection.rebuild_pool(point)
        return projection(point).value.to(point.dtype)

    def _metric(self, name: str) -> torch.Tensor | None:
        """The per-column factor of the target's projection norm (None: plain Frobenius)."""
        metric = getattr(self.projections[name], "metric", None)
        return None if metric is None else metric(self.params[name])

    def penalty(self) -> torch.Tensor:
        """``Σ ρ/2 · ‖(W − Z + U) · diag(s)‖²_F`` (``s`` = 1 unless the projection weighs columns;
        differentiable in ``W``)."""
        terms = []
        for n, p in self.params.items():
            diff, s = p - self.Z[n] + self.U[n], self._metric(n)
            terms.append(0.5 * self.rho[n] * (diff if s is None else diff * s).pow(2).sum())
        return torch.stack(terms).sum()

    @torch.no_grad()
    def update(self) -> None:
        """One Z/U update (and ρ growth) now."""
        s = self.settings
        self.updates += 1
        rebuild = s.pool_rebuild_every > 0 and self.updates % s.pool_rebuild_every == 0
        for name, param in self.params.items():
            w = param.detach()
            self.Z[name] = self._project(name, w + self.U[name], rebuild)
            self.U[name] += w - self.Z[name]
            rho = min(self.rho[name] * s.rho_growth, s.rho_max)
            self.U[name] *= self.rho[name] / rho
            self.rho[name] = rho

    @torch.no_grad()
    def proximal_step(self) -> None:
        """``W ← (W + ηρ (Z − U)) / (1 + ηρ)`` on every target, η = ``settings.proximal`` (ηρ·s_b² per column
        when the projection weighs columns)."""
        eta = self.settings.proximal
        for name, param in self.params.items():
            s = self._metric(name)
            pull = eta * self.rho[name] if s is None else eta * self.rho[name] * s.pow(2)
            param.copy_((param + pull * (self.Z[name] - self.U[name])) / (1.0 + pull))

    def step(self) -> bool:
        """Count one optimizer step: take the proximal step when the settings give one, then run
        :meth:`update` when due. Returns whether the update ran."""
        if not self.settings.penalty_in_loss:
            self.proximal_step()
        self.steps += 1
        if self.steps % self.every == 0 and not (self.settings.updates and self.updates >= self.settings.updates):
            self.update()
            return True
        return False

    @torch.no_grad()
    def residuals(self) -> dict[str, float]:
        """``‖W − Z‖_F / ‖W‖_F`` per weight: how far each weight still is from its constraint set."""
        out = {}
        for name, p in self.params.items():
            norm = float(p.norm())
            out[name] = float((p - self.Z[name]).norm()) / norm if norm > 0 else 0.0
        return out

    def state_dict(self) -> dict:
        return {
            "Z": {n: z.clone() for n, z in self.Z.items()},
            "U": {n: u.clone() for n, u in self.U.items()},
            "rho": dict(self.rho),
            "steps": self.steps,
            "updates": self.updates,
            "pools": {n: p.pool.masks.clone() for n, p in self.projections.items() if isinstance(p, Pattern) and p.pool is not None},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.params) - set(state["Z"])
        if missing:
            raise ValueError(f"ADMM state lacks targets: {sorted(missing)}")
        for name in self.params:
            if state["Z"][name].shape != self.params[name].shape:
                raise ValueError(f"ADMM state for {name} has shape {tuple(state['Z'][name].shape)}, weight is {tuple(self.params[name].shape)}")
            self.Z[name] = state["Z"][name].clone()
            self.U[name] = state["U"][name].clone()
            self.rho[name] = state["rho"][name]
        for name, masks in state.get("pools", {}).items():
            projection = self.projections[name]
            projection.pool = PatternPool(projection.config, masks.clone())
        self.steps, self.updates = state["steps"], state["updates"]
