"""Warm starts: a run's networks initialised from another run's trained ones (`config.init_from`), and the
reconstruction network of a joint model kept frozen (`config.freeze_recon`).

These build the baselines a reviewer asks for beside end-to-end training: two-stage (a trained solo
reconstruction, frozen, then a segmentation network trained on its outputs) and pretrain-then-fine-tune (a solo
reconstruction, then joint training from it).

Grafting: the source run's `params` and `batch_stats` replace this run's where their structure and shapes match,
either the whole model (the same architecture) or one top-level submodule (a solo reconstruction network becomes
a joint model's `recon_net`). Anything else is refused with both structures named.
"""

import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
import optax

from segrecon_jax.training import checkpoints

RECON_NET = 'recon_net'  # The reconstruction submodule of a joint model (models.SegRecon's field name).


class WarmStartError(ValueError):
  """`init_from` names no usable run, or its networks do not fit this model."""


def _signature(tree) -> Tuple:
  return tuple((jax.tree_util.keystr(path), tuple(np.shape(leaf)))
               for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0])


def graft(target: Dict[str, Any], source: Dict[str, Any], what: str) -> Tuple[Dict[str, Any], str]:
  """`target` with `source` written over it where it fits (module docstring).

  Args:
    target: this model's variables collection (`params` or `batch_stats`), a nested dict.
    source: the source run's collection of the same name.
    what: the source, for messages.

  Returns:
    (the grafted collection, where `source` went: '' for the whole model, else the submodule's name).
  """
  if not source:
    return target, ''
  if _signature(source) == _signature(target):
    return jax.tree_util.tree_map(np.asarray, source), ''
  for name, subtree in target.items():
    if isinstance(subtree, dict) and _signature(source) == _signature(subtree):
      grafted = dict(target)
      grafted[name] = jax.tree_util.tree_map(np.asarray, source)
      return grafted, name
  raise WarmStartError(
      f'{what}: its networks fit neither this model nor one of its submodules {sorted(target)}; it holds '
      f'{sorted(source)}. init_from takes a run of the same model, or a solo reconstruction run for a joint model '
      'with that reconstruction network')


def _source_config(config, meta: Dict[str, Any]) -> ml_collections.ConfigDict:
  """`config` with the source run's model and the fields that shape its train state (its optimizer state holds a
  frozen network's part only when it froze one)."""
  stored = meta.get('config', {})
  source = ml_collections.ConfigDict(config.to_dict())
  source.freeze_recon, source.init_from = False, ''
  for field in checkpoints.MODEL_FIELDS | {'loss_balancing', 'freeze_recon'}:
    if field in stored:
      value = stored[field]
      source[field] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return source


def load_source(config, data_info, template_of: Callable[[Any], Any]) -> Tuple[Any, Dict[str, Any]]:
  """The latest intact train state of the run `config.init_from` (on the host) and its meta.

  Args:
    config: this run's config.
    data_info: this run's data description: the source must have been trained on the same data.
    template_of: a config -> a fresh host train state of its model (`steps.initial_state`), the restore's template.

  Raises:
    WarmStartError: no checkpoint there, or one trained on other data.
  """
  workdir = os.path.abspath(os.path.expanduser(config.init_from))
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise WarmStartError(f'config.init_from={config.init_from!r}: no checkpoint in {directory}; expected the '
                         'workdir of a trained run')
  manager = checkpoints.checkpoint_manager(workdir, config)
  try:
    try:
      meta = checkpoints.read_meta(manager, manager.latest_step())
    except Exception as e:  # pylint: disable=broad-except  (a damaged meta: the restore below names each step)
      meta = {}
      logging.warning('config.init_from=%r: the meta of step %s cannot be read (%s)', config.init_from,
                      manager.latest_step(), e)
    template = template_of(_source_config(config, meta))
    state, meta = checkpoints.restore_checkpoint(
        manager, template, check=lambda m: checkpoints.check_same_data(m, data_info, directory))
  finally:
    manager.close()
  return state, meta


def initialize(config, state, data_info, tx: optax.GradientTransformation, template_of: Callable[[Any], Any]):
  """`state` (a fresh host train state) with the networks of `config.init_from` grafted in, and a fresh optimizer
  state for them; `state` itself when `init_from` is ''. `template_of` as for `load_source`."""
  if config.freeze_recon and RECON_NET not in state.params:
    raise WarmStartError(f'config.freeze_recon=True: model {config.model.name!r} has no reconstruction network '
                         f'({RECON_NET}) to freeze; only a joint model (e.g. cascade_manet) has one')
  if not config.init_from:
    return state
  source, meta = load_source(config, data_info, template_of)
  what = f'config.init_from={config.init_from!r} (step {meta["step"]})'
  params, where = graft(state.params, source.params, what)
  batch_stats, _ = graft(state.batch_stats, source.batch_stats, what) if state.batch_stats else ({}, '')
  logging.info('Initialised %s from %s, trained %d steps', f'the submodule {where}' if where else 'the model',
               config.init_from, meta['step'])
  return state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params))


def trainable(config, optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer`, with the reconstruction network's updates set to zero under `config.freeze_recon`."""
  if not config.get('freeze_recon'):
    return optimizer
  return optax.multi_transform(
      {'train': optimizer, 'frozen': optax.set_to_zero()},
      lambda params: {name: jax.tree_util.tree_map(lambda _, n=name: 'frozen' if n == RECON_NET else 'train', tree)
                      for name, tree in params.items()})


def frozen_batch_stats(config, old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
  """The batch statistics after a train step: the frozen reconstruction network keeps its own."""
  if not config.get('freeze_recon') or RECON_NET not in old:
    return new
  return {**new, RECON_NET: old[RECON_NET]}


def check(config) -> Optional[str]:
  """What is wrong with `init_from` / `freeze_recon` in `config`, found before any data is read, or None."""
  if config.init_from and not os.path.isdir(os.path.expanduser(config.init_from)):
    return (f'config.init_from={config.init_from!r}: no such folder; expected the workdir of a trained run '
            '(its checkpoints/ initialise this run)')
  if config.freeze_recon and not config.init_from:
    return ('config.freeze_recon=True without config.init_from: the frozen reconstruction network would stay at '
            'its random initialisation; set init_from to a trained reconstruction run (two-stage training)')
  return None
