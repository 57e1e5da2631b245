"""Lipschitz estimators: upper bounds (naive, compositional, LipSDP) and an empirical lower bound.

Names are loaded from their submodule on first use (lazy_loader), so importing one
submodule does not run the others: a trained net's cache key (lipcore.deps) then covers
only the code its training imports.
"""
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "compositional": ["CompositionalResult", "compositional_bound"],
    "empirical": ["LowerBoundResult", "empirical_lower_bound"],
    "lipsdp": ["LipSDPError", "LipSDPResult", "UnsoundCouplingWarning", "certified_L2",
            "chordal_nsd", "lipsdp", "lmi_matrix", "lmi_max_eig", "reduce_input_layer"],
    "liplt": ["LipLTResult", "liplt", "naive_pairwise"],
    "naive": ["naive_bound"],
})
