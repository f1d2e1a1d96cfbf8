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
      'features': (16, 32, 64, 128) if 'runlocal' in switches else (32, 64, 128, 256),
      'norm': 'batch',
      'residual': True,
      'normalize': False,
  })
  config.seg_loss_weight = 0.0  # Solo reconstruction: l1 + l2 only.
  return config
