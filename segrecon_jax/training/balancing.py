"""Loss-balancing schemes: how a joint model's reconstruction and Dice terms are weighed, by `config.loss_balancing`.

A scheme is one small object, a `Scheme` subclass registered under a name. The train step (steps.py) asks it for its
state, this step's loss and the next state; the config checks ask it once, before anything runs, whether the fields
it reads are usable. Built in: 'none' (the fixed weights), 'grad_norm' and 'uncertainty'. A research user adds one
from their own script (or the config file that uses it):

  class DiceWarmup(balancing.Scheme):
    summary = 'the Dice weight ramped up from 0'
    fields = (settings.Field('warmup_steps', 100, settings.TRAINING, 'DiceWarmup: steps of the ramp.'),)
    def init(self, config):
      return {'seg_weight': jnp.zeros((), jnp.float32)}
    def weights(self, config, state):
      return config.recon_loss_weight, state['seg_weight']
    def update(self, config, state, step, terms):
      return {'seg_weight': config.seg_loss_weight * jnp.minimum(1.0, (step + 1) / config.warmup_steps)}

  balancing.register('dice_warmup', DiceWarmup())

and `--config.loss_balancing=dice_warmup --config.warmup_steps=50` trains with it (docs/usage.md, Extending).
"""

import numbers
from typing import Any, Callable, Dict, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from segrecon_jax import losses
from segrecon_jax import settings
from segrecon_jax.training import parallel

NONE = 'none'  # The fixed weights: the only scheme for a model with one loss term.


def check_number(config, field: str, valid: Callable[[Any], bool], what: str) -> None:
  """Raises a ValueError naming `config.<field>` when its value is not a number or not `valid`; `what` says what is
  expected (for a scheme's `check`)."""
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not valid(value):
    raise ValueError(f'config.{field}={value!r}: {what}.')


class Scheme:
  """The fixed weights `config.recon_loss_weight` and `config.seg_loss_weight`; a scheme overrides what differs.

  The train step of a joint model runs under `parallel.pmap` (a scheme may average over the 'batch' axis with
  `parallel.pmean`) and calls:
  - `loss(config, recon_loss, seg_loss, state)`: the loss whose gradient trains the model (the terms are this
    device's batch means, unweighted).
  - `update(config, state, step, terms)`: the state of the next step. By default after the gradient, from this
    step's `terms` (`recon_loss`, `seg_loss`). A scheme with `reads_grad_norms` is updated before the gradient, its
    `terms` also holding the terms' gradient norms on the reconstruction network (`recon_grad_norm` of the
    weighted l1-l2 term, `seg_grad_norm` of the Dice term at weight 1, both averaged over devices); the step then
    trains with the Dice weight of the state it returns (the gradient `g_recon + w_seg g_dice` from one forward and
    a 2-wide backward pass).
  - `logged(config, state)`: train scalars (`train_` + key) of the weights the step trained with.
  The state (`init`) is a pytree of arrays, carried in `TrainState.loss_state`, so it is checkpointed and resumed.
  """
  summary = 'the fixed seg_loss_weight'  # What it does, in the config check's list of schemes.
  # The config fields it reads besides the two weights: names declared in segrecon_jax/settings.py, or a
  # settings.Field of its own, which `register` declares (role TRAINING: equal on resume).
  fields: Tuple[Union[str, settings.Field], ...] = ()
  reads_grad_norms = False

  def check(self, config) -> None:
    """Raises a ValueError naming the field for a value the scheme cannot use (config_checks asks once)."""
    del config

  def init(self, config) -> Any:
    """The state before the first step."""
    del config
    return {}

  def weights(self, config, state) -> Tuple[Any, Any]:
    """(reconstruction weight, Dice weight): the effective weights of the two terms in this step's loss."""
    del state
    return config.recon_loss_weight, config.seg_loss_weight

  def loss(self, config, recon_loss, seg_loss, state):
    recon_weight, seg_weight = self.weights(config, state)
    return recon_weight * recon_loss + seg_weight * seg_loss

  def update(self, config, state, step, terms) -> Any:
    del config, step, terms
    return state

  def logged(self, config, state) -> Dict[str, Any]:
    return {'seg_weight_effective': jnp.asarray(self.weights(config, state)[1], jnp.float32)}


class GradNorm(Scheme):
  """The Dice weight that makes the weighted Dice term's gradient norm on the reconstruction network
  `config.balance_ratio` times the l1-l2 term's, a moving average over steps (`losses.grad_norm_seg_weight`).

  State: `{'seg_weight'}`, `config.seg_loss_weight` until the first step replaces it.
  """
  summary = 'equal gradient norms on the reconstruction network'
  fields = ('balance_ratio', 'balance_momentum')
  reads_grad_norms = True

  def check(self, config) -> None:
    if config.model.get('stop_gradient', False):
      raise ValueError("config.loss_balancing='grad_norm' sets the Dice weight from the Dice term's gradient on "
                       'the reconstruction network, which config.model.stop_gradient=True cuts (use \'none\').')
    check_number(config, 'balance_ratio', lambda v: v > 0, 'the wanted ratio of the Dice term\'s gradient norm to '
                 'the l1-l2 term\'s must be > 0 (1 = equal norms)')
    check_number(config, 'balance_momentum', lambda v: 0 <= v < 1, 'the moving average\'s momentum must lie in '
                 '[0, 1) (0 = this step\'s norms only)')

  def init(self, config):
    return {'seg_weight': jnp.asarray(config.seg_loss_weight, jnp.float32)}

  def weights(self, config, state):
    return config.recon_loss_weight, state['seg_weight']

  def update(self, config, state, step, terms):
    return {'seg_weight': losses.grad_norm_seg_weight(terms['recon_grad_norm'], terms['seg_grad_norm'],
                                                      state['seg_weight'], step == 0, config.balance_ratio,
                                                      config.balance_momentum)}


class Uncertainty(Scheme):
  """Kendall et al. (2018): the loss `sum_i exp(-s_i) w_i L_i + s_i` with learned log-variances s_i
  (`losses.uncertainty_weighted_loss`).

  State: `{'log_variances': {'recon', 'seg'}, 'opt_state'}`, the s_i (0 until the first step sets them) and their
  own Adam state (`optimizer`). The first step (step 0) sets `s_i = log(w_i L_i)` from its losses, the minimum of
  the uncertainty loss for them (`exp(-s_i) w_i L_i = 1`), so training starts balanced rather than at the fixed
  weights (s_i = 0; the model's own update of that step used s_i = 0); later steps take Adam's step on the analytic
  gradient `1 - exp(-s_i) w_i L_i`, averaged over the 'batch' axis.
  """
  summary = "Kendall et al.'s learned weights"
  fields = ('uncertainty_learning_rate',)
  _NAMES = ('recon', 'seg')

  def check(self, config) -> None:
    check_number(config, 'uncertainty_learning_rate', lambda v: v > 0, 'must be > 0')

  def optimizer(self, config) -> optax.GradientTransformation:
    """Adam of the log-variances: `config.uncertainty_learning_rate`, constant, the model's betas. Their own rate,
    since the s_i must follow the logarithm of losses that shrink many-fold during training, which the model's
    small (and decaying) rate would not let them do."""
    return optax.adam(config.uncertainty_learning_rate, b1=config.b1, b2=config.b2)

  def init(self, config):
    log_variances = {'recon': jnp.zeros((), jnp.float32), 'seg': jnp.zeros((), jnp.float32)}
    return {'log_variances': log_variances, 'opt_state': self.optimizer(config).init(log_variances)}

  def weights(self, config, state):
    log_variances = state['log_variances']
    return (config.recon_loss_weight * jnp.exp(-log_variances['recon']),
            config.seg_loss_weight * jnp.exp(-log_variances['seg']))

  def loss(self, config, recon_loss, seg_loss, state):
    log_variances = state['log_variances']
    return losses.uncertainty_weighted_loss(
        (config.recon_loss_weight * recon_loss, config.seg_loss_weight * seg_loss),
        (log_variances['recon'], log_variances['seg']))

  def update(self, config, state, step, terms):
    weighted = {'recon': config.recon_loss_weight * terms['recon_loss'],
                'seg': config.seg_loss_weight * terms['seg_loss']}
    log_variances, opt_state = state['log_variances'], state['opt_state']
    grads = losses.uncertainty_log_variance_grads([weighted[k] for k in self._NAMES],
                                                  [log_variances[k] for k in self._NAMES])
    grads = parallel.pmean(dict(zip(self._NAMES, grads)))  # Average over the 'batch' axis.
    updates, new_opt_state = self.optimizer(config).update(grads, opt_state, log_variances)
    stepped = optax.apply_updates(log_variances, updates)
    initial = {k: jnp.log(jnp.maximum(v, 1e-12)) for k, v in parallel.pmean(weighted).items()}
    first = step == 0
    return {'log_variances': jax.tree.map(lambda a, b: jnp.where(first, a, b), initial, stepped),
            'opt_state': jax.tree.map(lambda a, b: jnp.where(first, a, b), opt_state, new_opt_state)}

  def logged(self, config, state):
    recon_weight, seg_weight = self.weights(config, state)
    log_variances = state['log_variances']
    return {'seg_weight_effective': seg_weight, 'recon_weight_effective': recon_weight,
            'log_variance_recon': log_variances['recon'], 'log_variance_seg': log_variances['seg']}


SCHEMES: Dict[str, Scheme] = {}
BUILT_IN = frozenset()  # The package's own names: never replaced by a registration.


def register(name: str, scheme: Scheme) -> Scheme:
  """Adds (or, for a name registered before outside the package, replaces) the scheme `name`; returns it.

  Each `settings.Field` among `scheme.fields` is declared (`settings.declare`), so configs built afterwards have it;
  each name among them must be declared already.

  Raises:
    ValueError: a built-in name, a scheme that is not a `Scheme` instance, or a field name that is not declared.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'balancing.register: the name must be a non-empty string, got {name!r}.')
  if name in BUILT_IN:
    raise ValueError(f'balancing.register({name!r}): a built-in scheme of that name exists; choose another name.')
  if not isinstance(scheme, Scheme):
    raise ValueError(f'balancing.register({name!r}): expected an instance of a balancing.Scheme subclass, got '
                     f'{scheme!r}.')
  for field in scheme.fields:
    if isinstance(field, settings.Field):
      settings.declare(field)
    elif field not in settings.BY_NAME:
      raise ValueError(f'balancing.register({name!r}): the scheme reads config.{field}, which is not a config field; '
                       'give a settings.Field in its `fields` to declare it.')
  SCHEMES[name] = scheme
  return scheme


def get(name: str) -> Scheme:
  """The scheme registered as `name` (`config.loss_balancing`).

  Raises:
    ValueError: an unknown name, listing the registered schemes.
  """
  if name not in SCHEMES:
    described = [f'{n!r} ({scheme.summary})' for n, scheme in SCHEMES.items()]
    listed = ', '.join(described[:-1]) + ' or ' + described[-1] if len(described) > 1 else described[0]
    raise ValueError(f'config.loss_balancing={name!r}: expected {listed}.')
  return SCHEMES[name]


register(NONE, Scheme())
register('grad_norm', GradNorm())
register('uncertainty', Uncertainty())
BUILT_IN = frozenset(SCHEMES)
