"""Offline evaluation: the recommender harness, metrics, baselines, compute studies, sweeps and end-to-end
pipeline quality. Imports models/, serving/ and data/; nothing imports it but the build (its metrics)."""
