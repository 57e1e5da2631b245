"""Lipschitz estimators: upper bounds (naive, compositional, LipSDP) and an empirical lower bound."""
from .compositional import CompositionalResult, compositional_bound
from .empirical import LowerBoundResult, empirical_lower_bound
from .lipsdp import (LipSDPError, LipSDPResult, UnsoundCouplingWarning, certified_L2, chordal_nsd,
                     lipsdp, lmi_matrix, lmi_max_eig, reduce_input_layer)
from .liplt import LipLTResult, liplt, naive_pairwise
from .naive import naive_bound

__all__ = ["CompositionalResult", "LipLTResult", "LipSDPError", "LipSDPResult", "LowerBoundResult",
           "UnsoundCouplingWarning", "certified_L2", "chordal_nsd", "compositional_bound",
           "empirical_lower_bound", "liplt", "lipsdp", "lmi_matrix", "lmi_max_eig", "naive_bound",
           "naive_pairwise", "reduce_input_layer"]
