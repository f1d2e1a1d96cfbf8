"""The model registry: every model the training system can build, by name, with what the system needs to know of it.

A research user adds a model from their own script (or from the config file that uses it, which main.py loads before
anything runs) with one call:

  models.register('tiny_joint', TinyJoint, display_name='Tiny joint net', task=models.JOINT,
                  num_classes=lambda model: model.num_classes)

and then `config.model = {'name': 'tiny_joint', ...}` trains, evaluates, predicts and (where the module has a
`segment` method) draws the pseudo-attention like a built-in model. The entry (`ModelSpec`) says what the model
outputs (`task`), which `config.model` fields it reads, its name in tables, and what the config checks need (the
image-size multiple, the number of segmentation outputs). Two facts about a module's own structure are declared by
the module, as optional methods, since only a built module can answer them:

- `reconstruction_params(params) -> params` (mark it `@nn.nowrap`): the parameters that compute the
  reconstruction, on which grad-norm balancing and `config.log_loss_grad_norms` measure the terms' gradients; all
  parameters when the module has no such method.
- `segment(recon, *, train) -> seg_logits`: the module's segmentation of a given reconstruction `[B, H, W, 2]`,
  which the pseudo-attention differentiates (study/attention.py); without it, `--mode=attention` is refused.

Every top-level model is called as `model.apply(variables, zero_filled, kspace, mask, train=...)` and returns a
`ModelOutput`: `recon` for RECONSTRUCTION, `seg_logits` for SEGMENTATION (`recon=None`: the model segments the
zero-filled image, which then stands for its reconstruction in the metrics and predictions), both for JOINT.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

RECONSTRUCTION = 'reconstruction'  # Outputs a reconstruction: trained with the l1-l2 term.
SEGMENTATION = 'segmentation'  # Outputs segmentation logits only: trained with the Dice term.
JOINT = 'joint'  # Outputs both: the two terms, which a loss-balancing scheme may weigh.
TASKS = (RECONSTRUCTION, SEGMENTATION, JOINT)

# Module fields that get_model sets itself (never from the config dict).
MANAGED_FIELDS = ('parent', 'name', 'dtype', 'bn_axis_name')


def module_fields(cls) -> Tuple[str, ...]:
  """The dataclass fields of a Flax module class that a config dict may set."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in MANAGED_FIELDS)


def check_fields(fields: Mapping[str, Any], valid, where: str) -> None:
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    raise ValueError(f'{where}: unknown field(s) {unknown}; valid fields are {sorted(valid)}.')


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def build_module(cls, fields: Mapping[str, Any], where: str, dtype, bn_axis_name, defaults=None, fixed=None):
  """`cls(**defaults, **fields, **fixed)` after checking `fields` against the module's fields less `fixed`; `dtype`
  and `bn_axis_name` are passed where the module declares them."""
  fixed = dict(fixed or {})
  check_fields(fields, set(module_fields(cls)) - set(fixed), where)
  kwargs = dict(defaults or {})
  kwargs.update({k: _hashable(v) for k, v in fields.items()})
  kwargs.update(fixed)
  declared = {f.name for f in dataclasses.fields(cls)}
  kwargs.update({k: v for k, v in (('dtype', dtype), ('bn_axis_name', bn_axis_name)) if k in declared})
  return cls(**kwargs)


def _any_size(model) -> int:
  del model
  return 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the registry knows of a model: its builder and what it can do (see the module docstring)."""
  build: Callable[..., nn.Module]  # (fields without 'name', dtype, bn_axis_name) -> module.
  display_name: str  # The method's name in tables (the paper's, for the built-in models).
  task: str  # RECONSTRUCTION, SEGMENTATION or JOINT: what the model outputs, so which loss terms train it.
  fields: Optional[Tuple[str, ...]] = None  # The config.model fields besides 'name'; None: `build` checks them.
  upconv: bool = False  # Has U-Net up-convolutions (the runtime setting upconv_impl changes how they run).
  size_multiple: Callable[[nn.Module], int] = _any_size  # Built module -> the factor H and W must be a multiple of.
  num_classes: Optional[Callable[[nn.Module], int]] = None  # Built module -> its segmentation outputs (checked).
  num_classes_field: str = 'num_classes'  # The config.model field (dotted) that sets them, for the check's message.

  @property
  def segments(self) -> bool:
    """Has a segmentation output (trained with the Dice term, evaluated with Dice)."""
    return self.task in (SEGMENTATION, JOINT)

  @property
  def reconstructs(self) -> bool:
    """Has a reconstruction output (trained with the l1-l2 term)."""
    return self.task in (RECONSTRUCTION, JOINT)


MODELS: Dict[str, ModelSpec] = {}
BUILT_IN = frozenset()  # The package's own names (models/__init__.py sets it): never replaced by a registration.


def _class_builder(cls, name: str):
  def build(fields, dtype, bn_axis_name):
    return build_module(cls, fields, f'model {name!r}', dtype, bn_axis_name)
  return build


def register(name: str, build, *, display_name: str, task: str, fields: Optional[Sequence[str]] = None,
             upconv: bool = False, size_multiple: Optional[Callable[[nn.Module], int]] = None,
             num_classes: Optional[Callable[[nn.Module], int]] = None,
             num_classes_field: str = 'num_classes') -> ModelSpec:
  """Adds (or, for a name registered before outside the package, replaces) the model `name`; returns its entry.

  Args:
    name: the `config.model.name` that picks it.
    build: a Flax module class, whose dataclass fields are then the config fields (`dtype` and `bn_axis_name` are
      passed when it declares them), or a function `(fields, dtype, bn_axis_name) -> module` with `fields` the
      config.model dict without 'name'.
    display_name: its name in results tables and figures.
    task: RECONSTRUCTION, SEGMENTATION or JOINT (what its ModelOutput holds).
    fields: the config.model fields it reads; default: a class's fields, or none checked for a function.
    upconv: it has U-Net up-convolutions of models/layers.py.
    size_multiple: built module -> the factor H and W must be a multiple of (default 1: any size).
    num_classes: built module -> its number of segmentation logits, which the config checks compare with
      config.num_classes; None: not checked.
    num_classes_field: the config.model field that sets them, named in that check's message.

  Raises:
    ValueError: a name of the package's own models, or an unknown task.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'models.register: the name must be a non-empty string, got {name!r}.')
  if name in BUILT_IN:
    raise ValueError(f'models.register({name!r}): a built-in model of that name exists; choose another name.')
  if task not in TASKS:
    raise ValueError(f'models.register({name!r}): task={task!r}; expected one of {list(TASKS)}.')
  if isinstance(build, type) and issubclass(build, nn.Module):
    if fields is None:
      fields = module_fields(build)
    build = _class_builder(build, name)
  elif not callable(build):
    raise ValueError(f'models.register({name!r}): build must be a Flax module class or a function (fields, dtype, '
                     f'bn_axis_name) -> module, got {build!r}.')
  entry = ModelSpec(build=build, display_name=display_name, task=task,
                    fields=None if fields is None else tuple(fields), upconv=upconv,
                    size_multiple=size_multiple or _any_size, num_classes=num_classes,
                    num_classes_field=num_classes_field)
  MODELS[name] = entry
  return entry


def spec(model_config) -> ModelSpec:
  """The registry entry of `model_config` (a name, a Mapping or a ConfigDict with 'name')."""
  if isinstance(model_config, str) or model_config is None:
    name = model_config
  else:
    name = dict(model_config).get('name')
  if name not in MODELS:
    raise ValueError(f'unknown model name {name!r}; valid names are {sorted(MODELS)}.')
  return MODELS[name]


def segments(model_config) -> bool:
  """Whether the model has a segmentation output."""
  return spec(model_config).segments


def display_name(model_config) -> str:
  """The method's name as the paper's tables print it (without the '(S)' of stabilization)."""
  return spec(model_config).display_name


def has_upconv(model_config) -> bool:
  """Whether the model has U-Net up-convolutions (so the runtime setting upconv_impl applies to it)."""
  return spec(model_config).upconv


def get_model(model_config, dtype=jnp.float32, bn_axis_name=None) -> nn.Module:
  """The model named by `model_config['name']`, built from the other fields (see models/__init__.py).

  Args:
    model_config: a Mapping or an ml_collections ConfigDict with 'name' and the model's fields.
    dtype: computation dtype of every network (e.g. jnp.bfloat16); parameters stay float32.
    bn_axis_name: the pmap axis name over which BatchNorm averages batch statistics ('batch'), or None.

  Raises:
    ValueError: unknown name or field, listing the valid ones.
  """
  if hasattr(model_config, 'to_dict'):
    model_config = model_config.to_dict()
  fields = dict(model_config)
  name = fields.pop('name', None)
  entry = spec(name)
  if entry.fields is not None:
    check_fields(fields, entry.fields, f'model {name!r}')
  return entry.build(fields, dtype, bn_axis_name)


def reconstruction_params(model: nn.Module, params):
  """The parameters of `model`'s reconstruction network: what its `reconstruction_params` method selects, or all."""
  select = getattr(model, 'reconstruction_params', None)
  return params if select is None else select(params)


def segments_reconstruction(model: nn.Module) -> bool:
  """Whether the module segments a given reconstruction (has `segment(recon, *, train)`, for the pseudo-attention)."""
  return callable(getattr(model, 'segment', None))
