"""Robustness evaluation: random noise, the paper-specific PGD of Bungert et al. (eq. (13)), and
robust accuracy under strong attacks from a maintained library (ART).

Certified accuracy, the other side of the same question, lives in :mod:`lipcore.certify`."""
from .ensemble import (ATTACKS, AUTOATTACK, DEFAULT_ATTACKS, RobustAccuracy, as_tensors, clip_to_threat_model,
                       nearest_adversarial, robust_accuracy)
from .noise import NOISES, noise_accuracy_curve
from .pgd import pgd_accuracy, pgd_l2, project_l2_ball, scale_to_sphere
from .sweep import SWEEP_ATTACKS, breaking_radii

__all__ = ["ATTACKS", "AUTOATTACK", "DEFAULT_ATTACKS", "NOISES", "RobustAccuracy", "SWEEP_ATTACKS", "as_tensors",
           "breaking_radii", "clip_to_threat_model", "nearest_adversarial", "noise_accuracy_curve",
           "pgd_accuracy", "pgd_l2", "project_l2_ball", "robust_accuracy", "scale_to_sphere"]
