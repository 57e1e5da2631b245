"""Robustness evaluation: random noise, the paper-specific PGD of Bungert et al. (eq. (13)), and
robust accuracy under strong attacks from maintained libraries (AutoAttack's reference
implementation, packaged as pyautoattack, and ART for DeepFool and Carlini-Wagner).

Certified accuracy, the other side of the same question, lives in :mod:`lipcore.certify`.

Names are loaded from their submodule on first use (lazy_loader), so importing one
submodule does not run the others: a trained net's cache key (lipcore.deps) then covers
only the code its training imports.
"""
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "ensemble": ["ATTACKS", "AUTOATTACK", "DEFAULT_ATTACKS", "RobustAccuracy", "as_tensors",
            "clip_to_threat_model", "nearest_adversarial", "robust_accuracy"],
    "noise": ["NOISES", "noise_accuracy_curve"],
    "pgd": ["pgd_accuracy", "pgd_l2", "project_l2_ball", "scale_to_sphere"],
    "sweep": ["SWEEP_ATTACKS", "breaking_radii"],
})
