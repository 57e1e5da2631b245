"""Trainers: standard (nominal, L2) and ADMM with LipSDP (Pauli et al.)."""
from .admm import ADMMConfig, ADMMResult, LipschitzStep, admm_train
from .standard import TrainConfig, evaluate, train

__all__ = ["ADMMConfig", "ADMMResult", "LipschitzStep", "TrainConfig", "admm_train", "evaluate",
           "train"]
