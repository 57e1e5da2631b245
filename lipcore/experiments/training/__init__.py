"""What each paper notebook's nets are and how they are trained (cached): settings, data splits
and ``fit`` functions, one module per notebook, apart from the evaluation in
:mod:`lipcore.experiments`. A trained net's cache key covers the code that the module asking for
the key imports (:mod:`lipcore.cache`), so keeping the attacks and certificates out of these
modules lets an evaluation change re-evaluate kept nets instead of retraining them."""
