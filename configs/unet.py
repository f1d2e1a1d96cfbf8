"""Solo U-Net reconstruction (Table 1, "UNet").

  python main.py --config=configs/unet.py:x8 --workdir=/tmp/segrecon/unet_x8
Presets: x4, x8; switch `runlocal` for a CPU smoke run (e.g. `:x8,runlocal`).
"""

import ml_collections

from configs import default


def get_config(arg=None):
  config, switches = default.build({}, arg, allow_stabilization=False)
  config.model = ml_collections.ConfigDict({
      'name': 'unet',
      'features': default.unet_features(switches),
      'norm': 'batch',  # BatchNorm after every 3x3 convolution (the paper is silent; models/unet.py).
      'residual': True,  # recon = x + unet(x).
      # Standardize the zero-filled input per example and channel and un-standardize the output (fastMRI's
      # NormUnet): without it the U-Net's initial correction is several times the images' scale and the
      # cpu_study UNet stays near the zero-filled input (docs/results.md).
      'normalize': True,
  })
  config.seg_loss_weight = 0.0  # Solo reconstruction: l1 + l2 only.
  return config
