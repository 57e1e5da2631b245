"""lipcore: models, Lipschitz estimators, trainers and robustness evaluation behind the lipcore
notebooks.

Modules: ``data`` (datasets, noise), ``models`` (architectures), ``estimators`` (naive, LipSDP,
LipLT, layer-wise conv bounds, empirical lower bounds), ``certify`` (sound bounds of a model,
certified radii), ``attacks`` (noise, the paper's PGD, strong attacks), ``trainers`` (standard,
ADMM, CLIP), ``experiments`` (one pipeline per notebook), ``counterexample`` (Pauli et al. Sec.
II-C), ``run`` (notebook parameters and outputs), ``report`` (REPORT.md), ``site`` (the HTML
book), ``cache`` (trained-model cache, chunked runs), ``progress`` (progress bars).
"""
__version__ = "0.1.0"
