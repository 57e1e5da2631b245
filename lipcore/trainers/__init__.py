"""Trainers: standard (nominal, L2, step schedules), ADMM with LipSDP (Pauli et al.), CLIP
(Bungert et al., in ``trainers.clip``) and the Lipschitz loss (Usama & Chang)."""
from .admm import ADMMConfig, ADMMResult, LipschitzStep, admm_train
from .lipschitz_loss import LipschitzLossConfig, train_lipschitz_loss
from .standard import TrainConfig, evaluate, train

__all__ = ["ADMMConfig", "ADMMResult", "LipschitzLossConfig", "LipschitzStep", "TrainConfig",
           "admm_train", "evaluate", "train", "train_lipschitz_loss"]
