"""vqathinker-jax: VQAThinker (reasoning video quality assessment, GRPO) in JAX."""

__version__ = "0.1.0"
