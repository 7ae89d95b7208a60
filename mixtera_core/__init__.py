"""Mixtera: a data plane for foundation-model training."""
