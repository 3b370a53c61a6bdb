"""2-D convolutions whose derivatives stay fast on XLA:CPU, also inside loops.

XLA:CPU runs a convolution with a library kernel (YNNPACK or Eigen) only in
the canonical layout: NHWC input, HWIO kernel, NHWC output. Autodiff of such
a convolution gives convolutions in other layouts: the input gradient has an
OI kernel, the kernel gradient has batch and channels swapped. XLA:CPU's
`ConvCanonicalization` pass wraps those in transposes, but only in the entry
computation and before one-trip loops are inlined, so inside `lax.scan`,
`lax.fori_loop` or `lax.while_loop` (the critic updates of a GAN step, PGD,
the latent attack, patch training) they run as naive loop nests, 10-50x
slower.

On CPU, `conv_general_dilated` computes the same values as
`lax.conv_general_dilated` in that layout, with a custom VJP that states
both gradients as canonical convolutions of explicitly transposed operands.
The VJP calls the same function, so derivatives of any order (the gradient
penalty of WGAN-GP is a second derivative) are canonical too. For a
convolution out = conv(x, w) with strides s, padding (lo, hi), input
dilation a and kernel dilation d (per spatial axis), with dil(n, k) =
k (n - 1) + 1 the dilated size:

  dx = conv(dy, flip(w) with I and O swapped; strides a, input dilation s,
            kernel dilation d, padding (dil(K, d) - 1 - lo, rest)),
  dw = conv(x with N and C swapped, dy as kernel [Ho, Wo, N, O]; strides d,
            input dilation a, kernel dilation s, padding (lo, rest)),
       with the result's [C, Kh, Kw, O] axes moved back to HWIO,

where "rest" pads the far side so that dx has x's size and dw has w's
(Dumoulin & Visin 2016, "A guide to convolution arithmetic for deep
learning", Sec. 4). Where XLA would exchange a convolution's input and
kernel (a kernel larger than its input, as in some second derivatives),
which gives a non-canonical layout again, the exchange is done here in
canonical form. The kernel gradient sums over chunks of the batch where
that is faster (`_kernel_grad_chunk`).

1x1 convolutions (no padding or input dilation) are matrix products over
the channels on every platform; their gradients are matrix products too.
Other platforms get `lax.conv_general_dilated` itself.

`Conv` is `flax.linen.Conv` with this convolution (same parameters, same
names); `ConvTranspose` mirrors `flax.linen.ConvTranspose` (parameters
'kernel' [Kh, Kw, C, O] and 'bias' [O]) for the default
`transpose_kernel=False`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))

Pads = tuple[tuple[int, int], ...]


def _dilated(size: int, dilation: int) -> int:
  return 0 if size == 0 else dilation * (size - 1) + 1


def _input_grad_pads(in_hw, k_hw, out_hw, strides, pads, lhs_dil,
                     rhs_dil) -> Pads:
  """Padding of dy for dx (see the module docstring)."""
  result = []
  for n, k, m, s, (lo, _), a, d in zip(in_hw, k_hw, out_hw, strides, pads,
                                       lhs_dil, rhs_dil):
    before = _dilated(k, d) - 1 - lo
    after = _dilated(n, a) + _dilated(k, d) - 1 - _dilated(m, s) - before
    result.append((before, after))
  return tuple(result)


def _kernel_grad_pads(in_hw, k_hw, out_hw, strides, pads, lhs_dil,
                      rhs_dil) -> Pads:
  """Padding of x for dw (see the module docstring)."""
  result = []
  for n, k, m, s, (lo, _), a, d in zip(in_hw, k_hw, out_hw, strides, pads,
                                       lhs_dil, rhs_dil):
    after = _dilated(m, s) - _dilated(n, a) + _dilated(k, d) - 1 - lo
    result.append((lo, after))
  return tuple(result)


def _xla_would_swap(in_hw, k_hw, strides, pads, lhs_dil, rhs_dil) -> bool:
  """Whether XLA's ConvOperandSwapper would exchange input and kernel: when
  the kernel's spatial size exceeds the input's (apart from axes that are a
  plain contraction). The swapped convolution is not canonical."""
  kernel_product = swapped_product = 1
  for n, k, s, (lo, hi), a, d in zip(in_hw, k_hw, strides, pads, lhs_dil,
                                     rhs_dil):
    plain = lo == 0 and hi == 0 and d == 1
    if plain and ((a == k and s == k - 1) or (k == n and a == 1 and s == 1)):
      continue
    kernel_product *= k
    swapped_product *= (k if n == 1 and s == 1 and d == 1 and lo == k - 1
                        and hi == k - 1 else n)
  return kernel_product > swapped_product


def _swapped_conv(x, w, strides, pads, lhs_dil, rhs_dil, precision):
  """conv(x, w) computed as a canonical convolution of the flipped kernel
  (batch = output channels) with the flipped input (as kernel, output
  channels = batch): out[o] = sum_k x_dil[o s + k d - lo] w[k] read the
  other way round."""
  in_hw, k_hw = x.shape[1:3], w.shape[:2]
  swapped_pads = tuple(
      (_dilated(n, a) + lo - _dilated(k, d), _dilated(n, a) + hi
       - _dilated(k, d))
      for n, k, (lo, hi), a, d in zip(in_hw, k_hw, pads, lhs_dil, rhs_dil))
  lhs = jnp.flip(w, (0, 1)).transpose(3, 0, 1, 2)  # [O, Kh, Kw, I]
  rhs = jnp.flip(x, (1, 2)).transpose(1, 2, 3, 0)  # [H, W, C, N]
  out = lax.conv_general_dilated(lhs, rhs, strides, swapped_pads, rhs_dil,
                                 lhs_dil, _NHWC, precision=precision)
  return out.transpose(3, 1, 2, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x, w, strides, pads, lhs_dil, rhs_dil, precision):
  if _xla_would_swap(x.shape[1:3], w.shape[:2], strides, pads, lhs_dil,
                     rhs_dil):
    return _swapped_conv(x, w, strides, pads, lhs_dil, rhs_dil, precision)
  return lax.conv_general_dilated(x, w, strides, pads, lhs_dil, rhs_dil,
                                  _NHWC, precision=precision)


def _conv_fwd(x, w, strides, pads, lhs_dil, rhs_dil, precision):
  return _conv(x, w, strides, pads, lhs_dil, rhs_dil, precision), (x, w)


def _conv_bwd(strides, pads, lhs_dil, rhs_dil, precision, residuals, dy):
  x, w = residuals
  in_hw, k_hw, out_hw = x.shape[1:3], w.shape[:2], dy.shape[1:3]
  geometry = (in_hw, k_hw, out_hw, strides, pads, lhs_dil, rhs_dil)
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = _conv(dy, w_t, lhs_dil, _input_grad_pads(*geometry), strides, rhs_dil,
             precision)
  dw_pads = _kernel_grad_pads(*geometry)
  chunk = _kernel_grad_chunk(x.shape[0], w.shape[3], lhs_dil)
  dw = sum(_conv(x[i:i + chunk].transpose(3, 1, 2, 0),
                 dy[i:i + chunk].transpose(1, 2, 0, 3), rhs_dil, dw_pads,
                 lhs_dil, strides, precision)
           for i in range(0, x.shape[0], chunk))
  return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


# Examples per kernel-gradient convolution (see `_kernel_grad_chunk`).
_KERNEL_GRAD_CHUNK = 8


def _kernel_grad_chunk(batch: int, out_channels: int, lhs_dil) -> int:
  """How many examples one kernel-gradient convolution sums over.

  In that convolution the batch is the channel axis being contracted and
  the window is the whole image. XLA:CPU's YNNPACK convolution slows down
  sharply when both are large (width-128 critic at batch 64 on 32x32: 4x
  slower than summing the gradients of 8-example chunks, about as fast as
  Eigen's convolution). Chunks are used where YNNPACK takes the
  convolution: more than 16 output channels and no input dilation.
  """
  if out_channels <= 16 or lhs_dil != (1, 1):
    return batch
  return min(batch, _KERNEL_GRAD_CHUNK)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_canonical(dimension_numbers, ndim: int) -> bool:
  if ndim != 4:
    return False
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(map(tuple, dimension_numbers)) == tuple(map(tuple, _NHWC))
  return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1,
                         precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` with canonical derivatives (module doc).

  Takes the custom path for 2-D NHWC/HWIO/NHWC convolutions without groups
  and with matching input and kernel dtypes, on CPU; anything else, and
  every other platform, gets `lax.conv_general_dilated` (1x1 convolutions
  are matrix products everywhere).
  """
  if (not _is_canonical(dimension_numbers, jnp.ndim(lhs))
      or feature_group_count != 1 or batch_group_count != 1
      or preferred_element_type is not None
      or jnp.result_type(lhs) != jnp.result_type(rhs)):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  ones = (1, 1)
  lhs_dil = tuple(int(v) for v in (lhs_dilation or ones))
  rhs_dil = tuple(int(v) for v in (rhs_dilation or ones))
  strides = tuple(int(v) for v in window_strides)
  if isinstance(padding, str):
    in_hw = [_dilated(n, a) for n, a in zip(jnp.shape(lhs)[1:3], lhs_dil)]
    k_hw = [_dilated(k, d) for k, d in zip(jnp.shape(rhs)[:2], rhs_dil)]
    padding = lax.padtype_to_pads(in_hw, k_hw, strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if jnp.shape(rhs)[:2] == (1, 1) and lhs_dil == ones and pads == ((0, 0),) * 2:
    return _pointwise(lhs, rhs, strides, precision)
  args = (strides, pads, lhs_dil, rhs_dil)
  return lax.platform_dependent(
      lhs, rhs,
      cpu=lambda x, w: _conv(x, w, *args, precision),
      default=lambda x, w: lax.conv_general_dilated(
          x, w, *args, _NHWC, precision=precision))


def _pointwise(x, w, strides, precision):
  """A 1x1 convolution as a matrix product over the channels. Its gradients
  are matrix products too: the kernel gradient contracts batch and space
  directly, without the transposes and the H x W-sized window that a
  convolution-shaped kernel gradient needs."""
  x = x[:, ::strides[0], ::strides[1]]
  return lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())),
                         precision=precision)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def _transpose_pads(k: int, s: int, padding) -> tuple[int, int]:
  """Padding of the dilated input of a transposed convolution, as
  `lax.conv_transpose` sets it: 'SAME' gives s * n outputs, 'VALID'
  s * (n - 1) + max(k, s)."""
  if padding == "SAME":
    total = k + s - 2
    before = k - 1 if s > k - 1 else int(np.ceil(total / 2))
  elif padding == "VALID":
    total = k + s - 2 + max(k - s, 0)
    before = k - 1
  else:
    raise ValueError(f"ConvTranspose padding must be 'SAME', 'VALID' or "
                     f"explicit pairs, not {padding!r}")
  return before, total - before


class ConvTranspose(nn.Module):
  """`flax.linen.ConvTranspose` (2-D, transpose_kernel=False) on
  `conv_general_dilated`: out = conv(x dilated by `strides`, kernel).

  `padding`: 'SAME', 'VALID' or explicit ((lo, hi), (lo, hi)) pairs for the
  dilated input, as in `lax.conv_transpose`.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if inputs.ndim != 4 or len(self.kernel_size) != 2:
      raise ValueError(f"ConvTranspose is 2-D: inputs [B, H, W, C] and a "
                       f"2-D kernel, got {inputs.shape} and "
                       f"{self.kernel_size}")
    kernel_size = tuple(self.kernel_size)
    strides = tuple(self.strides or (1, 1))
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias,
                                                   dtype=self.dtype)
    if isinstance(self.padding, str):
      pads = tuple(_transpose_pads(k, s, self.padding)
                   for k, s in zip(kernel_size, strides))
    else:
      pads = tuple(tuple(p) for p in self.padding)
    y = conv_general_dilated(inputs, kernel, (1, 1), pads,
                             lhs_dilation=strides,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                             precision=self.precision)
    if bias is not None:
      y = y + bias.reshape((1, 1, 1, -1))
    return y
