"""Writes tests/fixtures/*.npz: outputs of the PyTorch references (smp MAnet, a plain DnCn) for seeded weights.

  /work/torchvenv/bin/python benchmarks/make_golden.py   # needs benchmarks/requirements-torch.txt, not the library

The weights come from tests/golden_weights.py (NumPy only), keyed by PyTorch state-dict name; tests/golden_test.py
rebuilds the same weights for our JAX models from those names and compares its outputs with the stored ones. Only
inputs, outputs and the reference's key list are stored (tens of KB), never the weights.
"""

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn
import segmentation_models_pytorch as smp

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, 'tests'))
import golden_weights  # pylint: disable=g-import-not-at-top,wrong-import-position

# Must match tests/golden_test.py.
MANET_PRESETS = {'paper': {'encoder_depth': 4, 'decoder_channels': (256, 128, 64, 32)},
                 'smp_default': {'encoder_depth': 5, 'decoder_channels': (256, 128, 64, 32, 16)}}
HEIGHT, WIDTH = 64, 96
SEED = 0


def _load_golden(model: nn.Module, seed: int) -> list:
  """Loads golden weights into every parameter and BatchNorm statistic of `model` (strict); returns their keys."""
  state = model.state_dict()
  keys = [k for k in state if not k.endswith('num_batches_tracked')]
  values = golden_weights.golden_state({k: state[k].shape for k in keys}, seed)
  missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=False)
  assert not unexpected and all(k.endswith('num_batches_tracked') for k in missing), (missing, unexpected)
  return keys


def _key_table(model: nn.Module, keys: list) -> dict:
  state = model.state_dict()
  return {'keys': np.array(keys), 'shapes': np.array([','.join(map(str, state[k].shape)) for k in keys])}


def manet_fixture() -> dict:
  out = {'input': golden_weights.golden_input((1, 1, HEIGHT, WIDTH), SEED)}
  for preset, layout in MANET_PRESETS.items():
    model = smp.MAnet('resnet34', in_channels=1, classes=4, encoder_weights=None, **layout).eval()
    keys = _load_golden(model, SEED)
    with torch.no_grad():
      logits = model(torch.from_numpy(out['input'])).numpy()
    print(f'MAnet {preset}: {len(keys)} tensors, logits std {logits.std():.3g}, max |.| {np.abs(logits).max():.3g}')
    out[f'{preset}_logits'] = logits
    out.update({f'{preset}_{k}': v for k, v in _key_table(model, keys).items()})
  return out


def _fft2c(x: torch.Tensor) -> torch.Tensor:
  x = torch.fft.ifftshift(x, dim=(-2, -1))
  return torch.fft.fftshift(torch.fft.fft2(x, norm='ortho'), dim=(-2, -1))


def _ifft2c(k: torch.Tensor) -> torch.Tensor:
  k = torch.fft.ifftshift(k, dim=(-2, -1))
  return torch.fft.fftshift(torch.fft.ifft2(k, norm='ortho'), dim=(-2, -1))


class DnCn(nn.Module):
  """js3611's DnCn (conv_block with ReLU, residual, DataConsistencyInKspace(norm='ortho'), noise_lvl=None)."""

  def __init__(self, num_cascades=6, num_layers=5, features=64):
    super().__init__()
    self.cascades = nn.ModuleList()
    for _ in range(num_cascades):
      widths = [2] + [features] * (num_layers - 1) + [2]
      self.cascades.append(nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:])))

  def forward(self, x, kspace, mask):
    """x: [B, 2, H, W] zero-filled; kspace: complex [B, H, W]; mask: bool [B, 1, W]."""
    for convs in self.cascades:
      y = x
      for i, conv in enumerate(convs):
        y = conv(y)
        if i < len(convs) - 1:
          y = torch.relu(y)
      x = x + y
      k = _fft2c(torch.complex(x[:, 0], x[:, 1]))
      k = torch.where(mask, kspace, k)  # Hard DC: measured samples replace the predicted ones.
      image = _ifft2c(k)
      x = torch.stack([image.real, image.imag], dim=1)
    return x


def cascade_fixture() -> dict:
  rng = np.random.default_rng([SEED, 7])
  image = golden_weights.golden_input((1, HEIGHT, WIDTH), SEED) + 1j * golden_weights.golden_input(
      (1, HEIGHT, WIDTH), SEED + 1)
  mask = rng.random((1, 1, WIDTH)) < 0.25
  mask[..., WIDTH // 2 - 4:WIDTH // 2 + 4] = True
  kspace = (_fft2c(torch.from_numpy(image.astype(np.complex64))) * torch.from_numpy(mask)).to(torch.complex64)
  zero_filled = _ifft2c(kspace)
  x = torch.stack([zero_filled.real, zero_filled.imag], dim=1)
  model = DnCn().eval()
  keys = _load_golden(model, SEED)
  with torch.no_grad():
    recon = model(x, kspace, torch.from_numpy(mask)).numpy()
  print(f'DnCn: {len(keys)} tensors, recon std {recon.std():.3g}')
  return {'kspace_real': kspace.real.numpy(), 'kspace_imag': kspace.imag.numpy(), 'mask': mask,
          'zero_filled': x.numpy(), 'recon': recon, **_key_table(model, keys)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', default=os.path.join(_ROOT, 'tests', 'fixtures'))
  args = parser.parse_args()
  torch.manual_seed(SEED)
  os.makedirs(args.out_dir, exist_ok=True)
  for name, fixture in (('manet_golden', manet_fixture()), ('cascade_golden', cascade_fixture())):
    path = os.path.join(args.out_dir, f'{name}.npz')
    np.savez_compressed(path, **fixture)
    print(f'wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)')


if __name__ == '__main__':
  main()
