"""Phantom preview: root-sum-of-squares images of a written file and a PNG montage with label overlays."""

import os
from typing import Sequence, Tuple

import h5py
import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from segrecon_jax.data.phantom_ismrmrd import flag_bits
from segrecon_jax.data.phantom_kspace import ifft2c


def read_rss(path: str) -> np.ndarray:
  """Root-sum-of-squares magnitude images of a phantom (or any single-average OCMR) file, in plain numpy.

  Returns:
    float32 `[num_slices, num_frames, H, W]`, H = encoded readout / 2 (oversampling removed).
  """
  with h5py.File(path, 'r') as f:
    header = xsd.CreateFromDocument(f['dataset']['xml'][0])
    rows = f['dataset']['data'][()]
  enc = header.encoding[0]
  num_kx, num_ky = enc.encodedSpace.matrixSize.x, enc.encodingLimits.kspace_encoding_step_1.maximum + 1
  num_slices, num_frames = enc.encodingLimits.slice.maximum + 1, enc.encodingLimits.phase.maximum + 1
  num_coils = header.acquisitionSystemInformation.receiverChannels
  kspace = np.zeros((num_slices, num_frames, num_coils, num_kx, num_ky), np.complex64)
  noise_bit = flag_bits(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
  for row in rows:
    if np.uint64(row['head']['flags']) & noise_bit:
      continue
    idx = row['head']['idx']
    line = row['data'].view(np.complex64).reshape(num_coils, num_kx)
    kspace[idx['slice'], idx['phase'], :, :, idx['kspace_encode_step_1']] = line
  images = ifft2c(kspace)[..., num_kx // 4:num_kx // 4 + num_kx // 2, :]
  return np.sqrt(np.sum(np.abs(images)**2, axis=2)).astype(np.float32)


def save_preview(pairs: Sequence[Tuple[str, str]], path: str, max_subjects: int = 6) -> None:
  """PNG montage: per subject, the first and last slice at end-diastole and end-systole (RSS) and label overlays.

  Images are shown transposed (readout horizontal), the usual way to look at a chest.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  pairs = list(pairs)[:max_subjects]
  colours = np.array([[0, 0, 0, 0], [1.0, 0.2, 0.2, 0.45], [0.2, 1.0, 0.2, 0.45], [0.2, 0.4, 1.0, 0.45]])
  columns = 6
  fig, axes = plt.subplots(len(pairs), columns, figsize=(3.2 * columns, 2.9 * len(pairs)), squeeze=False)
  for row, (kspace_path, label_path) in enumerate(pairs):
    rss = read_rss(kspace_path)
    with h5py.File(label_path, 'r') as f:
      masks = f['masks'][()]
      es = int(f.attrs['es_frame'])
    scale = np.percentile(rss, 99.5)
    panels = []
    for s in (0, rss.shape[0] - 1):
      panels += [(s, 0, False), (s, es, False), (s, es if s else 0, True)]
    for col, (s, frame, overlay) in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(rss[s, frame].T, cmap='gray', vmin=0, vmax=scale, interpolation='nearest')
      if overlay:
        ax.imshow(colours[masks[s, frame].T], interpolation='nearest')
      phase = 'ED' if frame == 0 else ('ES' if frame == es else f'frame {frame}')
      ax.set_title(f'{os.path.basename(kspace_path)[:7]} slice {s} {phase}{" labels" if overlay else ""}', fontsize=7)
      ax.axis('off')
  fig.suptitle('segrecon_jax phantom: RSS of the written k-space (readout horizontal); red LV pool, green LV '
               'myocardium, blue RV pool', fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)

