"""Trainers: standard (nominal, L2, step schedules), ADMM with LipSDP (Pauli et al.), CLIP
(Bungert et al., in ``trainers.clip``) and the Lipschitz loss (Usama & Chang).

Names are loaded from their submodule on first use (lazy_loader), so importing one
submodule does not run the others: a trained net's cache key (lipcore.deps) then covers
only the code its training imports.
"""
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "admm": ["ADMMConfig", "ADMMResult", "LipschitzStep", "admm_train"],
    "lipschitz_loss": ["LipschitzLossConfig", "train_lipschitz_loss"],
    "standard": ["TrainConfig", "evaluate", "train"],
})
