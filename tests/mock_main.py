"""`python tests/mock_main.py <advjax.main flags>`: the real CLI on mock data.

Runs `advjax.main` inside `tfds.testing.mock_data`, so end-to-end tests need
no downloaded dataset. MOCK_NUM_EXAMPLES sets the examples per split.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from advjax import main as advjax_main

if __name__ == "__main__":
  num_examples = int(os.environ.get("MOCK_NUM_EXAMPLES", "64"))
  with tfds.testing.mock_data(num_examples=num_examples):
    advjax_main.entry_point()
