"""lipcore: models, Lipschitz estimators and trainers behind the lipcore notebooks.

Modules: ``data`` (datasets, noise), ``models`` (architectures), ``estimators`` (naive, LipSDP,
empirical lower bounds), ``counterexample`` (Pauli et al. Sec. II-C), ``run`` (notebook
parameters and outputs), ``report`` (REPORT.md), ``cache`` (trained-model cache).
"""
__version__ = "0.1.0"
