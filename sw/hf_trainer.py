"""Hugging Face ``Trainer`` integration: ADMM penalty in the loss, Z/U updates after optimizer steps.

    admm = ADMM(make_projections(model, find_targets(model, DEFAULT_INCLUDE, []), spec), settings)
    trainer = ADMMTrainer(model=model, args=args, train_dataset=..., admm=admm)
    trainer.train()

``ADMMTrainer`` adds ``ρ/2‖W − Z + U‖²_F`` to the loss of every training step (not to evaluation) and
installs :class:`ADMMCallback`, which counts optimizer steps (after gradient accumulation) and runs
the Z/U update when due, logging the mean ``‖W − Z‖/‖W‖`` as ``admm_residual``. Masked retraining needs
no special trainer: apply ``sw.masking.apply_masks`` to the model and use a plain ``Trainer``.

Under DDP each process keeps its own ``ADMM`` over the unwrapped model's parameters; the updates are
deterministic functions of the replicated weights, so the copies agree (see ``sw.admm``).
"""

from __future__ import annotations

from transformers import Trainer, TrainerCallback

from sw.admm import ADMM


class ADMMCallback(TrainerCallback):
    def __init__(self, admm: ADMM):
        self.admm = admm
        self.last_residual: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.admm.plan(state.max_steps)  # ``updates`` per phase, when the settings give them

    def on_step_end(self, args, state, control, **kwargs):
        if self.admm.step():
            residuals = self.admm.residuals()
            self.last_residual = sum(residuals.values()) / len(residuals)


class ADMMTrainer(Trainer):
    """``Trainer`` whose training loss carries the ADMM penalty of ``admm``."""

    def __init__(self, *args, admm: ADMM, **kwargs):
        super().__init__(*args, **kwargs)
        self.admm = admm
        self.admm_callback = ADMMCallback(admm)
        self.add_callback(self.admm_callback)

    def log(self, logs, *args, **kwargs):
        if self.admm_callback.last_residual is not None and "loss" in logs:
            logs = {**logs, "admm_residual": self.admm_callback.last_residual, "admm_rho": next(iter(self.admm.rho.values()))}
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.admm.settings.penalty_in_loss:
            loss = loss + self.admm.penalty()
        return (loss, outputs) if return_outputs else loss
