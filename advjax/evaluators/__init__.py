"""Evaluators, by name: one registry for the report command line
(`python -m advjax.evaluate`), the trainers' evaluation, distillation and
the study (see `common` for the protocol). A new evaluator is one module
with a settings dataclass and a `@register`ed `run`, plus its import here.
"""

from advjax.evaluators import common
from advjax.evaluators.common import (EVALUATORS, Evaluator, Inputs,
                                      eval_data, get, provenance, register,
                                      write_report)
# The entries, in the order a report shows them.
from advjax.evaluators import robustness  # pylint: disable=g-bad-import-order
from advjax.evaluators import unrestricted
from advjax.evaluators import patch
from advjax.evaluators import gan_samples
from advjax.evaluators import gan_quality
