"""Backbones (Flax), their specs, weight download and conversion. No jax import at package import."""
