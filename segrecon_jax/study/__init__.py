"""The reproduction study: runs every row of the paper's Tables 1 and 2 (and the loss-weight sweep, the loss
comparison and the pseudo-attention) on any data, and writes docs/results.md from the runs.

  python -m segrecon_jax.study run --root=/tmp/segrecon/study --switch=cpu_study --tables=2,1 --seeds=0,1,2
  python -m segrecon_jax.study sweep --root=/tmp/segrecon/study --seeds=0 --weights=0,0.01,0.1,1,10
  python -m segrecon_jax.study losses --root=/tmp/segrecon/study --seeds=0,1,2
  python -m segrecon_jax.study attention --root=/tmp/segrecon/study --seeds=0
  python -m segrecon_jax.study report --root=/tmp/segrecon/study --out=docs/results.md
  python -m segrecon_jax.study run --root=/tmp/acdc --seeds=0 --config.dataset_config=nifti \\
      --config.manual_dir=/data/acdc --config.image_size=128  # any data: --config.* goes to every run

Each run is `main.py` in its own process with its own workdir (`ROOT/<experiment>_x<R>[_stab]/seed<k>`,
`ROOT/sweep/...`, `ROOT/losses/...`); finished runs (with metrics.json) are skipped and an interrupted one resumes
from its checkpoint, so a study stopped at any point continues where it stopped. Ctrl-C (or SIGTERM) is sent on to
the running runs, which write their checkpoints, and the study says how to resume once they have exited. Before
starting, the runner prints how many runs are left, their training steps and, with `--seconds_per_step`, the
expected duration.

Modules: `plan` (what runs, where, with which flags), `runner` (the processes), `results` (reading runs),
`claims` (the paper's claims and their cross-seed verdicts, on `segrecon_jax.stats`), `report` and `figures`
(docs/results.md), `cli`.
"""
