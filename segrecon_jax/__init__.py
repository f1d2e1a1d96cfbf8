"""segrecon_jax: segmentation-aware MRI reconstruction in JAX/Flax."""
