"""Held-out measurements: likelihood (ELBO, AR perplexity), infilling, samples."""
