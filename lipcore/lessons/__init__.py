"""What the lessons (``notebooks/lessons/``) compute and draw: one module per lesson.

Each ``draw_*`` function draws one lesson's figure onto the axes it is given, for the control
values it is given, and returns what it shows (numbers a test can check: a control that changes
nothing drawn is a bug). The lessons only call these, through :func:`small_multiples` (a static
figure at a few settings, which the executed copy and the HTML book show) and :func:`explore`
(ipywidgets controls above the same figure, redrawn on every change). No algorithm lives here
either: training, bounds, certificates and attacks are lipcore's own.

Importing this package runs torch in one thread (``torch.set_num_threads(1)``): the lessons' nets
are tiny, so a second thread gains nothing, and where another process holds a core (a laptop
running anything else) torch's threads wait on each other and a two-second training takes
thirty. ``torch.set_num_threads(n)`` after the import undoes it.
"""
import torch

from .balls import METHODS_2D, draw_certified_balls, nearest_other_class, trained_2d_net
from .clip_algorithm import (clip_fit, discrepancy_run, draw_clip, draw_clip_fit,
                             draw_discrepancy)
from .constrained import L_DES, draw_constrained, enforced_net, rescaled_net, trade_off
from .coupling import COUPLING_MAX, coupled_bound, draw_counterexample, least_L, true_constant
from .ladder import bound_ladder, draw_bound_ladder
from .lmi import draw_lmi_feasibility, least_certified_L
from .loop import depth_sweep, draw_loop_transformation, loop_net, ratio_curves, sweep_all
from .margins import CRM_STRENGTHS, EPS_2D, crm_2d_net, draw_margins, margin_view
from .mnist import METHODS_MNIST, mnist_subset, small_mnist_net
from .noise import BETAS, SIGMAS, SIGMAS_TRAIN, draw_noise, noise_curves
from .own_net import every_bound
from .steepest import (STEPS, attack_sweep, draw_attacks_against_eps, draw_steepest_2d,
                       steepest_step)
from .show import explore, small_multiples
from .weak_attack import (EPS_GRID, draw_accuracy_against_eps, draw_weak_attack, image_status,
                          weak_attack_sweep)

torch.set_num_threads(1)

__all__ = ["BETAS", "COUPLING_MAX", "CRM_STRENGTHS", "EPS_2D", "EPS_GRID", "L_DES", "METHODS_2D",
           "METHODS_MNIST", "SIGMAS", "SIGMAS_TRAIN", "STEPS", "attack_sweep", "bound_ladder",
           "clip_fit", "coupled_bound", "crm_2d_net", "depth_sweep", "discrepancy_run",
           "draw_accuracy_against_eps", "draw_attacks_against_eps", "draw_bound_ladder",
           "draw_certified_balls", "draw_clip", "draw_clip_fit", "draw_constrained",
           "draw_counterexample", "draw_discrepancy", "draw_lmi_feasibility",
           "draw_loop_transformation", "draw_margins", "draw_noise", "draw_steepest_2d",
           "draw_weak_attack", "enforced_net", "every_bound", "explore", "image_status", "least_L",
           "least_certified_L", "loop_net", "margin_view", "mnist_subset", "nearest_other_class",
           "noise_curves", "ratio_curves", "rescaled_net", "small_mnist_net", "small_multiples",
           "steepest_step", "sweep_all", "trade_off", "trained_2d_net", "true_constant",
           "weak_attack_sweep"]
