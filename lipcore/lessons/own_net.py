"""Lesson 7: bring your own net. Every Lipschitz bound that applies to a user's ``nn.Module``
(dense or conv), through the public API, with what each costs and why the others do not apply."""
from __future__ import annotations

import math
import time

import pandas as pd
from torch import nn

from ..certify import BOUND_METHODS, lipschitz_bound
from ..estimators import empirical_lower_bound
from ..progress import quiet


def every_bound(model: nn.Module, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """One row per estimator: the empirical lower bound (no certificate: a pair of inputs that
    proves the constant is at least this), then each sound bound of
    :func:`lipcore.certify.lipschitz_bound`, or, where it does not apply, the reason why."""
    start = time.perf_counter()
    lower = empirical_lower_bound(nn.Sequential(nn.Unflatten(1, tuple(input_shape)), model),
                                  math.prod(input_shape), n_random=32, n_ascent=2, steps=20).value
    rows = [dict(estimator="empirical lower bound", bound=lower, sound="lower bound",
                 seconds=time.perf_counter() - start, note="")]
    for method, label in BOUND_METHODS.items():
        try:
            with quiet():
                result = lipschitz_bound(model, method, input_shape=tuple(input_shape))
        except ValueError as why:
            rows.append(dict(estimator=label, bound=float("nan"), sound="does not apply",
                             seconds=0.0, note=str(why)))
            continue
        rows.append(dict(estimator=label, bound=result.value, sound="sound upper bound",
                         seconds=result.seconds, note=""))
    return pd.DataFrame(rows).set_index("estimator")
