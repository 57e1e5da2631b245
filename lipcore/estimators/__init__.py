"""Lipschitz estimators: upper bounds (naive, LipSDP) and an empirical lower bound."""
from .empirical import LowerBoundResult, empirical_lower_bound
from .lipsdp import (LipSDPError, LipSDPResult, UnsoundCouplingWarning, certified_L2, chordal_nsd,
                     lipsdp, lmi_matrix, lmi_max_eig, reduce_input_layer)
from .naive import naive_bound

__all__ = ["LipSDPError", "LipSDPResult", "LowerBoundResult", "UnsoundCouplingWarning",
           "certified_L2", "chordal_nsd", "empirical_lower_bound", "lipsdp", "lmi_matrix",
           "lmi_max_eig", "naive_bound", "reduce_input_layer"]
