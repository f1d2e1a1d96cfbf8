"""Solo CascadeNet reconstruction (Table 2, "CascadeNet"): 6 cascades of 5 conv layers with 64 filters.

  python main.py --config=configs/cascade.py:x8 --workdir=/tmp/segrecon/cascade_x8
Presets: x4, x8; switch `runlocal` for a CPU smoke run (e.g. `:x8,runlocal`).
"""

import ml_collections

from configs import default


def get_config(arg=None):
  config, switches = default.build({}, arg, allow_stabilization=False)
  config.model = ml_collections.ConfigDict({
      'name': 'cascade',
      'num_cascades': 6,
      'num_layers': 5,
      'features': 16 if 'runlocal' in switches else 64,
  })
  config.seg_loss_weight = 0.0  # Solo reconstruction: l1 + l2 only.
  return config
