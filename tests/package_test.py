"""The package as pip installs it: research imports and the training system work from any directory."""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_flags():
  """Build with this environment's setuptools where it builds wheels (70.1 on, as requirements.txt pins; no network);
  an environment made before that pin gets pip's isolated build of pyproject.toml's build requirement."""
  version = tuple(int(part) for part in importlib.metadata.version('setuptools').split('.')[:2])
  if version >= (70, 1) or importlib.util.find_spec('wheel') is not None:
    return ['--no-build-isolation', '--no-index']
  return []


@pytest.mark.slow
def test_pip_install_gives_working_imports_from_another_directory(tmp_path):
  # A copy of what pip packages, so that the build never writes into the repository (build/, *.egg-info).
  source = tmp_path / 'source'
  source.mkdir()
  shutil.copy(os.path.join(ROOT, 'pyproject.toml'), source)
  for package in ('segrecon_jax', 'tfds_ocmr'):
    shutil.copytree(os.path.join(ROOT, package), source / package, ignore=shutil.ignore_patterns('__pycache__'))
  target = tmp_path / 'site'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', *_build_flags(), '--target',
                  str(target), str(source)], check=True, capture_output=True)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  code = ('import jax.numpy as jnp\n'
          'from segrecon_jax import losses, metrics, models, mri\n'
          'import segrecon_jax.training.train, segrecon_jax.study.cli\n'
          'image = jnp.ones((1, 16, 16), jnp.complex64)\n'
          'assert jnp.allclose(mri.ifft2c(mri.fft2c(image)), image, atol=1e-5)\n'
          'assert models.segments("cascade_manet") and not models.segments("cascade")\n'
          'print(mri.__file__)\n'
          'print(segrecon_jax.training.train.__file__)\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = str(target)
  result = subprocess.run([sys.executable, '-c', code], cwd=elsewhere, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  paths = result.stdout.split()
  assert len(paths) == 2 and all(path.startswith(str(target)) for path in paths), result.stdout
  # The native kernels' sources travel with the package (models/native.py compiles them on first use).
  assert (target / 'segrecon_jax' / 'models' / 'csrc' / 'conv_forward.cc').exists()
