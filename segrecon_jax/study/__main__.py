"""`python -m segrecon_jax.study ...`: see `segrecon_jax.study.cli`."""

from segrecon_jax.study import cli

if __name__ == '__main__':
  cli.main()
