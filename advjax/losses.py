"""GAN losses and regularisers, as small pure functions.

Conventions: `d_real` / `d_fake` are discriminator *logits* (pre-sigmoid) for
the probabilistic (minimax / non-saturating) losses, and raw discriminator or
critic outputs for the least-squares, hinge and Wasserstein losses. Inputs have
a leading batch axis ([B] or [B, 1]); every loss returns a scalar, the mean
over the batch. D(x) = sigmoid(d_real), D(G(z)) = sigmoid(d_fake).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax.errors import UserError


def _is_concrete(*values) -> bool:
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def _sigmoid_ce(logits, target):
  """Mean sigmoid cross-entropy -[t log s(l) + (1 - t) log(1 - s(l))], stably.

  Uses log(1 - sigmoid(l)) = log_sigmoid(-l).
  """
  logits = jnp.asarray(logits, jnp.float32)
  return -jnp.mean(target * jax.nn.log_sigmoid(logits)
                   + (1. - target) * jax.nn.log_sigmoid(-logits))


# --- Minimax GAN (Goodfellow et al. 2014) -----------------------------------


def minimax_d_loss(d_real, d_fake, real_label: float = 1.0):
  """Discriminator loss of the original GAN (Goodfellow et al. 2014).

  L_D = -E[log D(x)] - E[log(1 - D(G(z)))], i.e. sigmoid cross-entropy with
  target 1 for reals and 0 for fakes. `real_label` < 1 (e.g. 0.9) is one-sided
  label smoothing (Salimans et al. 2016): only the real target changes, so the
  real term becomes -E[t log D(x) + (1 - t) log(1 - D(x))]; fakes keep target 0.
  """
  if (_is_concrete(real_label)
      and not 0. <= float(np.asarray(real_label)) <= 1.):
    raise UserError(f"real_label must lie in [0, 1], got {real_label}.")
  return _sigmoid_ce(d_real, real_label) + _sigmoid_ce(d_fake, 0.)


def minimax_g_loss(d_fake):
  """Saturating generator loss E[log(1 - D(G(z)))] (Goodfellow et al. 2014).

  The generator minimises it; its gradient -sigmoid(d_fake) vanishes when the
  discriminator confidently rejects fakes (D(G(z)) ~ 0).
  """
  return jnp.mean(jax.nn.log_sigmoid(-jnp.asarray(d_fake, jnp.float32)))


def nonsaturating_g_loss(d_fake):
  """Non-saturating generator loss -E[log D(G(z))] (Goodfellow et al. 2014).

  Same fixed point as the minimax loss but strong gradients early in training.
  """
  return _sigmoid_ce(d_fake, 1.)


# --- Least squares GAN (Mao et al. 2017), a = 0, b = 1, c = 1 ---------------


def least_squares_d_loss(d_real, d_fake):
  """LSGAN discriminator loss (Mao et al. 2017) with a=0, b=1, without the
  paper's 1/2 factors: plain mean squared errors, as CycleGAN's code (Zhu et
  al. 2017, junyanz/pytorch-CycleGAN-and-pix2pix: nn.MSELoss) computes them:

  L_D = E[(D(x) - 1)^2] + E[D(G(z))^2], D = raw (linear) output.
  """
  return (jnp.mean(jnp.square(d_real - 1.))
          + jnp.mean(jnp.square(d_fake)))


def least_squares_g_loss(d_fake):
  """LSGAN generator loss (Mao et al. 2017) with c=1, without the 1/2:
  E[(D(G(z)) - 1)^2], the mean squared error to the real target."""
  return jnp.mean(jnp.square(d_fake - 1.))


# --- Hinge loss (Lim & Ye 2017; Miyato et al. 2018) -------------------------


def hinge_d_loss(d_real, d_fake):
  """Hinge discriminator loss (Lim & Ye 2017; Miyato et al. 2018).

  L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))], D = raw output.
  """
  return (jnp.mean(jax.nn.relu(1. - d_real))
          + jnp.mean(jax.nn.relu(1. + d_fake)))


def hinge_g_loss(d_fake):
  """Hinge-GAN generator loss -E[D(G(z))] (Lim & Ye 2017; Miyato 2018)."""
  return -jnp.mean(d_fake)


# --- Wasserstein GAN (Arjovsky et al. 2017; Gulrajani et al. 2017) ----------


def wasserstein_d_loss(c_real, c_fake):
  """WGAN critic loss E[C(G(z))] - E[C(x)] (Arjovsky et al. 2017).

  Minimising it maximises the critic's estimate E[C(x)] - E[C(G(z))] of the
  Wasserstein-1 distance (given a 1-Lipschitz critic).
  """
  return jnp.mean(c_fake) - jnp.mean(c_real)


def wasserstein_g_loss(c_fake):
  """WGAN generator loss -E[C(G(z))] (Arjovsky et al. 2017)."""
  return -jnp.mean(c_fake)


def clip_weights(params, c: float):
  """WGAN weight clipping (Arjovsky et al. 2017): every leaf to [-c, c]."""
  if _is_concrete(c) and np.any(np.asarray(c) < 0):
    raise UserError(f"weight clipping bound c must be >= 0, got {c}.")
  return jax.tree_util.tree_map(lambda p: jnp.clip(p, -c, c), params)


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], real, fake,
                     rng, *, return_norm: bool = False):
  """WGAN-GP gradient penalty (Gulrajani et al. 2017).

  x_hat = e * real + (1 - e) * fake with e ~ U[0, 1] per sample;
  GP = E[(||grad_{x_hat} C(x_hat)||_2 - 1)^2], the norm taken per sample over
  all non-batch axes (H, W, C). The per-sample gradients come from
  grad(sum_i C(x_hat_i)), which is exact because the critic treats samples
  independently (so no batch normalisation in the critic, as the paper says).
  `critic_fn` maps [B, ...] to scores [B] or [B, 1]; close it over the critic
  parameters to differentiate GP w.r.t. them. `rng` is one key, or one key
  per sample ([B]) to draw each e from its own. The norm is
  sqrt(sum g^2 + 1e-12) so that GP stays differentiable when g = 0.

  Returns GP, or (GP, mean gradient norm) when `return_norm` (for logging).
  """
  real = jnp.asarray(real)
  fake = jnp.asarray(fake)
  if real.shape != fake.shape:
    raise UserError(
        f"gradient_penalty needs real and fake batches of the same shape, got "
        f"{real.shape} and {fake.shape}.")
  if real.ndim < 2:
    raise UserError(
        f"gradient_penalty needs batched inputs [B, ...], got shape "
        f"{real.shape}.")
  batch = real.shape[0]
  mix_shape = (batch,) + (1,) * (real.ndim - 1)
  if jnp.shape(rng) == (batch,):  # one key per sample
    e = jax.vmap(lambda k: jax.random.uniform(k, mix_shape[1:], real.dtype))(
        rng)
  else:
    e = jax.random.uniform(rng, mix_shape, real.dtype)
  x_hat = e * real + (1. - e) * fake

  def total_score(xs):
    scores = critic_fn(xs)
    if scores.size != batch:
      raise UserError(
          f"critic_fn must return one score per sample ([B] or [B, 1] with "
          f"B={batch}), got shape {scores.shape}.")
    return jnp.sum(scores)

  grads = jax.grad(total_score)(x_hat)
  axes = tuple(range(1, grads.ndim))
  norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=axes) + 1e-12)
  penalty = jnp.mean(jnp.square(norms - 1.))
  if return_norm:
    return penalty, jnp.mean(norms)
  return penalty


# --- Class-conditional terms -------------------------------------------------


def cross_entropy(logits, labels, label_smoothing: float = 0.):
  """Softmax cross-entropy of each example, [B] float32.

  CE_i = -sum_k t_ik log softmax(logits_i)_k, with t_i the one-hot label
  smoothed to (1 - ls) onehot(y_i) + ls / K (Szegedy et al. 2016; ls = 0 is
  plain CE), or, when `labels` are already distributions [B, K] (soft
  targets, e.g. a distillation teacher's), t_i = labels_i. Every cross-entropy
  of the library (classifier losses, attacks, the AC-GAN class terms) is this
  one; the caller reduces it (the attacks sum it, so an example's input
  gradient does not depend on the batch size; training losses average it).

  With integer labels its values and gradients are bit-identical to picking
  -log_softmax(logits)[y] (the sum over k only adds exact zeros), the form
  the attacks used when their agreement with torchattacks and AutoAttack was
  measured. optax.softmax_cross_entropy_with_integer_labels computes
  logsumexp(logits) - logits[y] instead, which rounds differently in the last
  bits, so it is not used.
  """
  logits = jnp.asarray(logits).astype(jnp.float32)
  labels = jnp.asarray(labels)
  if labels.ndim == logits.ndim:  # soft targets
    targets = labels.astype(jnp.float32)
  else:
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
      targets = (targets * (1. - label_smoothing)
                 + label_smoothing / num_classes)
  return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def classification_loss(logits, labels, label_smoothing: float = 0.):
  """Mean softmax cross-entropy with integer labels, inputs checked.

  The mean over the batch of `cross_entropy` (Szegedy et al. 2016's label
  smoothing when ls > 0). Malformed inputs (shapes, dtypes, labels outside
  [0, K), ls outside [0, 1]) are one-line `UserError`s.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise UserError(
        f"classification_loss expects logits [B, K] and integer labels [B], "
        f"got shapes {logits.shape} and {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise UserError(
        f"labels must be integer class indices, got dtype {labels.dtype}; for "
        f"one-hot labels pass labels.argmax(-1).")
  num_classes = logits.shape[-1]
  if _is_concrete(labels) and labels.size:
    labels_np = np.asarray(labels)
    lo, hi = int(labels_np.min()), int(labels_np.max())
    if lo < 0 or hi >= num_classes:
      raise UserError(
          f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}].")
  if (_is_concrete(label_smoothing)
      and not 0. <= float(np.asarray(label_smoothing)) <= 1.):
    raise UserError(
        f"label_smoothing must lie in [0, 1], got {label_smoothing}.")
  return jnp.mean(cross_entropy(logits, labels, label_smoothing))


def auxiliary_classifier_loss(logits, labels):
  """AC-GAN auxiliary class term (Odena et al. 2017): E[-log P(C = c | x)].

  Softmax cross-entropy of the discriminator's class head against the true
  (real) or conditioning (fake) labels. Both D and G minimise it; the caller
  applies any weights and adds it to the adversarial losses.
  """
  return classification_loss(logits, labels)


# --- Improved-GAN techniques (Salimans et al. 2016) --------------------------


def feature_matching_loss(f_real, f_fake, axis_name: str | None = None):
  """Feature matching (Salimans et al. 2016): ||E[f(x)] - E[f(G(z))]||_2^2.

  f_* are [B, ...] intermediate discriminator features; the means are over the
  batch (and, with `axis_name`, over the devices of a data-parallel step, so
  that the expectation is over the global batch) and the squared norm over
  all remaining axes.
  """
  f_real = jnp.asarray(f_real, jnp.float32)
  f_fake = jnp.asarray(f_fake, jnp.float32)
  if f_real.shape[1:] != f_fake.shape[1:]:
    raise UserError(
        f"feature_matching_loss needs features of the same per-sample shape, "
        f"got {f_real.shape} and {f_fake.shape}.")
  mean_real, mean_fake = jnp.mean(f_real, axis=0), jnp.mean(f_fake, axis=0)
  if axis_name is not None:
    mean_real = jax.lax.pmean(mean_real, axis_name)
    mean_fake = jax.lax.pmean(mean_fake, axis_name)
  return jnp.sum(jnp.square(mean_real - mean_fake))


def historical_averaging_penalty(params, avg_params):
  """Historical averaging (Salimans et al. 2016): sum ||theta - theta_avg||^2.

  theta_avg = (1/t) sum_{i<t} theta[i] is kept by `update_historical_average`;
  the sum runs over all leaves of the parameter pytree.
  """
  sq = jax.tree_util.tree_map(lambda p, a: jnp.sum(jnp.square(p - a)),
                              params, avg_params)
  return sum(jax.tree_util.tree_leaves(sq), jnp.zeros((), jnp.float32))


def update_historical_average(avg, params, step):
  """Running mean of parameter snapshots: (step * avg + params) / (step + 1).

  `step` is how many snapshots `avg` already averages (0 for the first update,
  where `avg` is ignored and the result equals `params`). After updates with
  step = 0, 1, ..., t-1 the result is (1/t) sum_i params_i. Works under jit.
  """
  t = jnp.asarray(step, jnp.float32)
  w_avg, w_new = t / (t + 1.), 1. / (t + 1.)
  return jax.tree_util.tree_map(
      lambda a, p: a * w_avg.astype(a.dtype) + p * w_new.astype(a.dtype),
      avg, params)


# --- The adversarial objectives by name ---------------------------------------


@dataclasses.dataclass(frozen=True)
class AdversarialLoss:
  """A GAN's adversarial objective: D minimises `d_loss(real, fake)` over its
  scores on real and generated images, G minimises `g_loss(fake)`.

  `probabilistic`: scores are logits, D(x) = sigmoid(score) (what the GAN
  trainer logs as d_real/d_fake). `label_smoothing`: `d_loss` takes
  `real_label` (one-sided label smoothing, Salimans et al. 2016).
  """
  d_loss: Callable[..., jax.Array]
  g_loss: Callable[[jax.Array], jax.Array]
  probabilistic: bool = False
  label_smoothing: bool = False

  def discriminator(self, real, fake, real_label: float = 1.):
    """d_loss(real, fake), with the real target `real_label` if it has one."""
    if self.label_smoothing:
      return self.d_loss(real, fake, real_label=real_label)
    return self.d_loss(real, fake)

  def mean_output(self, scores) -> jax.Array:
    """Mean D(x): a probability for probabilistic losses, else the score."""
    if self.probabilistic:
      return jnp.mean(jax.nn.sigmoid(scores))
    return jnp.mean(scores)


# name -> objective, for every trainer with a discriminator (the GAN and the
# CycleGAN trainers); `register_adversarial_loss` adds one.
ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {}


def register_adversarial_loss(name: str, d_loss, g_loss, *,
                              probabilistic: bool = False,
                              label_smoothing: bool = False) -> None:
  """Makes `gan.loss` / `cyclegan.loss` == `name` use (d_loss, g_loss)."""
  if name in ADVERSARIAL_LOSSES:
    raise ValueError(f"adversarial loss '{name}' is already registered")
  ADVERSARIAL_LOSSES[name] = AdversarialLoss(
      d_loss, g_loss, probabilistic=probabilistic,
      label_smoothing=label_smoothing)


def adversarial_loss(name: str) -> AdversarialLoss:
  """The registered objective `name`; a UserError lists the others."""
  if name not in ADVERSARIAL_LOSSES:
    raise UserError(f"adversarial loss '{name}' is not one of "
                    f"{sorted(ADVERSARIAL_LOSSES)}")
  return ADVERSARIAL_LOSSES[name]


register_adversarial_loss("minimax", minimax_d_loss, minimax_g_loss,
                          probabilistic=True, label_smoothing=True)
register_adversarial_loss("nonsaturating", minimax_d_loss,
                          nonsaturating_g_loss, probabilistic=True,
                          label_smoothing=True)
register_adversarial_loss("least_squares", least_squares_d_loss,
                          least_squares_g_loss)
register_adversarial_loss("hinge", hinge_d_loss, hinge_g_loss)
register_adversarial_loss("wasserstein", wasserstein_d_loss,
                          wasserstein_g_loss)
