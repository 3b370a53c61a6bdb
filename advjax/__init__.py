"""advjax: GANs and adversarial examples in JAX/Flax.

Image convention everywhere in the library: float32, NHWC, values in [-1, 1].
"""

__version__ = "0.1.0"
