"""Experiment pipelines behind the notebooks: settings per profile, cached training, tables."""
