"""advjax's experiment configs, one module per experiment.

Each module's `get_config()` (`get_config(arg)` for 'name:arg') returns the
experiment's ConfigDict; `common` holds the blocks they share. Configs build
on each other with plain imports (`from configs import dcgan_cifar10`). The
package is installed beside `advjax`, so the command line finds a config by
name (`advjax-train --config=quickstart`) or by path
(`--config=configs/quickstart.py`); see `advjax.config_utils`.
"""
