"""advjax against eager PyTorch on the same networks, side by side (CPU).

Each workload runs in advjax (the library's own jitted step or attack) and in
an equivalent PyTorch implementation (experiments/torch_reference/, run in
the test-only venv .ci/torch-venv) with advjax's initial weights copied in.
Rounds alternate between the two (ABBA order), each in a fresh process that
warms up and then times `--steps` calls; a round's figure is its median, the
result the median over rounds. Prints per workload: wall-clock ms per call
for both, the speed ratio (PyTorch ms / advjax ms: above 1 means advjax is
faster), advjax's compile time, the load average before and after, and the
same for process CPU time per call (all threads; less sensitive than wall
time to other processes on a shared machine, but it counts busy-waiting).

  python experiments/benchmark_torch.py                     # every workload
  python experiments/benchmark_torch.py --workloads=fgsm,pgd10 --rounds=7

Nothing here asserts a speed; tests/test_torch_reference.py checks that both
sides compute the same thing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.path.join(ROOT, ".ci", "torch-venv", "bin", "python")
TORCH_SCRIPT = os.path.join(ROOT, "experiments", "torch_reference",
                            "workloads.py")

# name -> workload. `config` is a file of configs/; `overrides` set config
# fields (dotted names); the other keys are the workload's own settings.
WORKLOADS: dict[str, dict[str, Any]] = {
    "cnn_train": dict(kind="classifier_train", config="quickstart",
                      batch=128, title="quickstart CNN train step, batch 128"),
    "fgsm": dict(kind="fgsm", config="quickstart", batch=128, eps=0.1,
                 title="FGSM on the quickstart CNN, batch 128"),
    "pgd10": dict(kind="pgd", config="quickstart", batch=128, eps=0.1,
                  step_size=0.025, num_steps=10,
                  title="PGD-10 L-inf on the quickstart CNN, batch 128"),
    "latent_attack": dict(kind="latent_attack", config="quickstart",
                          gan_config="quickstart_gan", batch=128,
                          num_steps=20, learning_rate=0.1, eps_z=0.1,
                          lambda_z=0.1, lambda_aux=0.1, iterate="last",
                          title="latent attack, quickstart AC-GAN + CNN, "
                                "batch 128, 20 iterations"),
    "densenet_train": dict(kind="classifier_train", config="densenet_cifar100",
                           batch=64,
                           title="DenseNet-BC-100 train step, batch 64"),
    "wgan_gp_train": dict(kind="wgan_gp_train", config="acgan_cifar100",
                          batch=64, overrides={"model.generator.width": 128,
                                               "model.discriminator.width": 128},
                          title="AC-WGAN-GP width 128, batch 64: 5 critic + "
                                "1 generator steps"),
}


def load_config(name: str, overrides: dict[str, Any] | None = None):
  from advjax import config_utils  # pylint: disable=g-import-not-at-top
  config = config_utils.load(os.path.join(ROOT, "configs", name + ".py"))
  for key, value in (overrides or {}).items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def flatten(tree: Any, prefix: str) -> dict[str, np.ndarray]:
  """{'prefix/params/a/kernel': array, ...} of a flax variable tree."""
  import jax  # pylint: disable=g-import-not-at-top
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = "/".join(str(getattr(k, "key", k)) for k in path)
    flat[f"{prefix}/{keys}"] = np.asarray(leaf)
  return flat


def _model_spec(config, num_classes: int, image_shape, name: str,
                **extra) -> dict[str, Any]:
  spec = dict(config.model.to_dict() if hasattr(config.model, "to_dict")
              else config.model)
  spec.update(name=name, num_classes=num_classes,
              image_shape=list(image_shape), **extra)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}


def _gan_specs(config, num_classes: int, image_shape) -> dict[str, Any]:
  family = config.model.name
  g_classes = num_classes if config.model.get("conditional", True) else 0
  d_classes = num_classes if (
      family == "resnet"
      or config.model.discriminator.get("aux_classifier", False)) else 0
  return {
      "generator": dict(name=f"{family}_g", latent_dim=config.model.latent_dim,
                        num_classes=g_classes, image_shape=list(image_shape),
                        width=config.model.generator.width),
      "discriminator": dict(name=f"{family}_d", num_classes=d_classes,
                            image_shape=list(image_shape),
                            width=config.model.discriminator.width)}


class Built(NamedTuple):
  """One advjax workload: `call()` runs it once and blocks; `export` holds
  the variables and inputs for PyTorch; `spec` the settings PyTorch needs;
  `reference()` the results PyTorch must reproduce."""
  call: Callable[[], Any]
  compile_s: float
  spec: dict[str, Any]
  export: dict[str, np.ndarray]
  reference: Callable[[], dict[str, np.ndarray]]


def _timed_compile(fn, *args):
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _classifier(config, batch: int):
  import jax  # pylint: disable=g-import-not-at-top
  from advjax import input_pipeline, models, parallel  # pylint: disable=g-import-not-at-top
  info = input_pipeline.get_dataset_info(config.dataset.name)
  model = models.create_model(config.model, info.num_classes,
                              axis_name=parallel.AXIS)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), np.zeros((1, *info.image_shape), np.float32))
  gen = np.random.default_rng(0)
  data = {"image": gen.uniform(-1, 1, (batch, *info.image_shape)
                               ).astype(np.float32),
          "label": gen.integers(0, info.num_classes, batch).astype(np.int32)}
  spec = _model_spec(config, info.num_classes, info.image_shape,
                     config.model.name)
  return model, variables, data, spec, info


def _export(variables: dict[str, np.ndarray], data: dict[str, np.ndarray]):
  out = {f"vars/{k}": v for k, v in variables.items()}
  out.update({f"data/{k}": np.asarray(v) for k, v in data.items()})
  return out


def build_classifier_train(w: dict[str, Any], config) -> Built:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from advjax import parallel  # pylint: disable=g-import-not-at-top
  from advjax.trainers import classifier  # pylint: disable=g-import-not-at-top
  config.batch_size = w["batch"]
  model, _, data, spec, info = _classifier(config, w["batch"])
  state0 = classifier.create_train_state(config, model, info.image_shape,
                                         jax.random.key(0), 1000)
  mesh = parallel.make_mesh()
  step = parallel.data_parallel(classifier.train_step, mesh,
                                in_specs=(P(), P(parallel.AXIS), P()),
                                out_specs=(P(), P()), donate_argnums=(0,))
  rng = jax.random.key(1)
  batch = jax.device_put(data)
  state = {"state": jax.tree.map(jnp.array, state0)}  # a copy to donate
  compiled, compile_s = _timed_compile(step, state["state"], batch, rng)

  def call():
    state["state"], metrics = compiled(state["state"], batch, rng)
    return jax.block_until_ready(metrics)

  variables = {"params": state0.params, "batch_stats": state0.batch_stats}
  local = model.clone(axis_name=None)  # the same model outside shard_map

  def reference():
    def loss_fn(params):
      logits, _ = local.apply({**variables, "params": params}, data["image"],
                              train=True, mutable=["batch_stats"],
                              rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, data["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state0.params)
    return {"loss": np.asarray(loss), **flatten({"params": grads}, "grads")}

  opt = config.optimizer.to_dict()
  spec = dict(kind="classifier_train", model=spec,
              optimizer=dict(name=opt["name"],
                             learning_rate=opt["learning_rate"],
                             momentum=opt.get("momentum", 0.0),
                             nesterov=opt.get("nesterov", False),
                             weight_decay=opt.get("weight_decay", 0.0)))
  return Built(call, compile_s, spec,
               _export(flatten(variables, "classifier"), data), reference)


def build_input_attack(w: dict[str, Any], config) -> Built:
  """FGSM or PGD (L-inf, random start) on the classifier in eval mode."""
  import jax  # pylint: disable=g-import-not-at-top
  from advjax import attacks  # pylint: disable=g-import-not-at-top
  model, variables, data, spec, _ = _classifier(config, w["batch"])
  rng = jax.random.key(2)
  eps = w["eps"]

  def attack(variables, x, y, rng):
    logits_fn = functools.partial(model.apply, variables, train=False)
    if w["kind"] == "fgsm":
      return attacks.fgsm(logits_fn, x, y, eps)
    return attacks.pgd(logits_fn, x, y, rng, eps=eps,
                       step_size=w["step_size"], num_steps=w["num_steps"])

  args = (variables, data["image"], data["label"], rng)
  compiled, compile_s = _timed_compile(jax.jit(attack), *args)
  call = lambda: jax.block_until_ready(compiled(*args))
  spec = dict(kind=w["kind"], model=spec, eps=eps)
  if w["kind"] == "pgd":
    spec.update(step_size=w["step_size"], num_steps=w["num_steps"])
    # attacks.pgd's random start: U[-eps, eps] drawn from `rng`.
    data["start"] = np.asarray(jax.random.uniform(
        rng, data["image"].shape, np.float32, -eps, eps))
  return Built(call, compile_s, spec,
               _export(flatten(variables, "classifier"), data),
               lambda: {"x_adv": np.asarray(call())})


def _gan_variables(gan_config, num_classes: int, image_shape):
  """The GAN's initial state (the GAN trainer's initialisation)."""
  import jax  # pylint: disable=g-import-not-at-top
  from advjax.trainers import gan  # pylint: disable=g-import-not-at-top
  return gan.create_train_state(gan_config, num_classes, image_shape,
                                jax.random.key(3), 1000)


def build_latent_attack(w: dict[str, Any], config) -> Built:
  import jax  # pylint: disable=g-import-not-at-top
  from advjax import attacks  # pylint: disable=g-import-not-at-top
  model, variables, data, spec, info = _classifier(config, w["batch"])
  gan_config = load_config(w["gan_config"], w.get("gan_overrides"))
  gan = _gan_variables(gan_config, info.num_classes, info.image_shape)
  g_vars = {"params": gan.g_params, **gan.g_state}
  d_vars = {"params": gan.d_params, **gan.d_state}
  z0 = np.random.default_rng(1).normal(
      size=(w["batch"], gan_config.model.latent_dim)).astype(np.float32)
  rng = jax.random.key(4)
  names = ("learning_rate", "eps_z", "lambda_z", "lambda_aux")

  def attack(variables, g_vars, d_vars, z0, y, rng):
    return attacks.unrestricted_attack(
        lambda z, labels: gan.players.generator.apply(g_vars, z, labels, train=False),
        lambda x: gan.players.discriminator.apply(d_vars, x, None,
                                          train=False)["logits"],
        functools.partial(model.apply, variables, train=False),
        z0, y, rng, num_steps=w["num_steps"], iterate=w["iterate"],
        **{k: w[k] for k in names})

  args = (variables, g_vars, d_vars, z0, data["label"], rng)
  compiled, compile_s = _timed_compile(jax.jit(attack), *args)
  call = lambda: jax.block_until_ready(compiled(*args))
  # unrestricted_attack's Langevin noise at iteration t: N(0, 1) from
  # fold_in(rng, t).
  data.update(z0=z0, noise=np.stack([
      np.asarray(jax.random.normal(jax.random.fold_in(rng, t), z0.shape))
      for t in range(w["num_steps"])]))
  spec = dict(kind="latent_attack", model=spec, num_steps=w["num_steps"],
              iterate=w["iterate"], **{k: w[k] for k in names},
              **_gan_specs(gan_config, info.num_classes, info.image_shape))
  export = {**flatten(variables, "classifier"),
            **flatten(g_vars, "generator"), **flatten(d_vars, "discriminator")}

  def reference():
    out = call()
    return {k: np.asarray(out[k])
            for k in ("images", "success", "attacked", "loss")}
  return Built(call, compile_s, spec, _export(export, data), reference)


def build_wgan_gp_train(w: dict[str, Any], config) -> Built:
  """advjax.trainers.gan's train step of an AC-WGAN-GP config (Wasserstein loss with
  gradient penalty, AC-GAN terms on real images and generator fakes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from advjax import input_pipeline, parallel  # pylint: disable=g-import-not-at-top
  from advjax.trainers import gan  # pylint: disable=g-import-not-at-top
  info = input_pipeline.get_dataset_info(config.dataset.name)
  config.batch_size = w["batch"]
  k, n = int(config.gan.critic_steps), w["batch"]
  state0 = _gan_variables(config, info.num_classes, info.image_shape)
  mesh = parallel.make_mesh()
  step = parallel.data_parallel(
      gan.make_train_step(config, info.num_classes), mesh,
      in_specs=(P(), P(parallel.AXIS), P()), out_specs=(P(), P()),
      donate_argnums=(0,))
  gen = np.random.default_rng(0)
  dim = config.model.latent_dim
  data = {"image": gen.uniform(-1, 1, (k * n, *info.image_shape)
                               ).astype(np.float32),
          "label": gen.integers(0, info.num_classes, k * n).astype(np.int32),
          "z_d": gen.normal(size=(k, n, dim)).astype(np.float32),
          "z_g": gen.normal(size=(n, dim)).astype(np.float32),
          "e": gen.uniform(size=(k, n)).astype(np.float32),
          "y_g": gen.integers(0, info.num_classes, n).astype(np.int32)}
  rng = jax.random.key(1)
  batch = jax.device_put({"image": data["image"], "label": data["label"]})
  state = {"state": jax.tree.map(jnp.array, state0)}  # a copy to donate
  compiled, compile_s = _timed_compile(step, state["state"], batch, rng)

  def call():
    state["state"], metrics = compiled(state["state"], batch, rng)
    return jax.block_until_ready(metrics)

  g_vars = {"params": state0.g_params, **state0.g_state}
  d_vars = {"params": state0.d_params, **state0.d_state}
  g = config.gan
  opt = config.d_optimizer
  spec = dict(kind="wgan_gp_train", critic_steps=k,
              gradient_penalty=g.gradient_penalty,
              aux_weight_real=g.aux_weight_real, aux_weight_g=g.aux_weight_g,
              optimizer=dict(learning_rate=opt.learning_rate, b1=opt.b1,
                             b2=opt.b2),
              **_gan_specs(config, info.num_classes, info.image_shape))
  export = {**flatten(g_vars, "generator"), **flatten(d_vars, "discriminator")}
  return Built(call, compile_s, spec, _export(export, data),
               functools.partial(wgan_gp_reference, state0, config, data))


def wgan_gp_reference(state0, config, data) -> dict[str, np.ndarray]:
  """What the PyTorch step computes with k = 1 and the exported draws: the
  first critic update's loss and gradients, then the generator's loss and
  gradients against the updated critic (flax names and layouts)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from advjax import losses  # pylint: disable=g-import-not-at-top
  g, opt = config.gan, config.d_optimizer
  # The same models outside shard_map (no cross-device BatchNorm axis).
  gen = state0.players.generator.clone(axis_name=None)
  critic = state0.players.discriminator.clone(axis_name=None)
  g_state = state0.g_state
  real, y = data["image"], data["label"]
  z, e = data["z_d"][0], data["e"][0][:, None, None, None]

  def generate(g_params, z, labels):
    out, _ = gen.apply({"params": g_params, **g_state}, z, labels, train=True,
                       mutable=["batch_stats"])
    return out

  def critic_fn(d_params, x):
    return critic.apply({"params": d_params}, x, None, train=True)

  def d_loss_fn(d_params):
    fake = generate(state0.g_params, z, y)
    out_real, out_fake = critic_fn(d_params, real), critic_fn(d_params, fake)
    loss = losses.wasserstein_d_loss(out_real["score"], out_fake["score"])
    x_hat = e * real + (1 - e) * fake
    grads = jax.grad(lambda x: jnp.sum(critic_fn(d_params, x)["score"]))(
        x_hat)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=(1, 2, 3)) + 1e-12)
    gp = jnp.mean(jnp.square(norms - 1))
    aux = losses.auxiliary_classifier_loss(out_real["logits"], y)
    return loss + g.gradient_penalty * gp + g.aux_weight_real * aux

  d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state0.d_params)
  tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2)
  updates, _ = tx.update(d_grads, tx.init(state0.d_params))
  d_params = optax.apply_updates(state0.d_params, updates)

  def g_loss_fn(g_params):
    out = critic_fn(d_params, generate(g_params, data["z_g"], data["y_g"]))
    return (losses.wasserstein_g_loss(out["score"]) + g.aux_weight_g
            * losses.auxiliary_classifier_loss(out["logits"], data["y_g"]))

  g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state0.g_params)
  return {"d_loss": np.asarray(d_loss), "g_loss": np.asarray(g_loss),
          **flatten({"params": d_grads}, "d_grads"),
          **flatten({"params": g_grads}, "g_grads")}


BUILDERS = {"classifier_train": build_classifier_train,
            "fgsm": build_input_attack, "pgd": build_input_attack,
            "latent_attack": build_latent_attack,
            "wgan_gp_train": build_wgan_gp_train}


def build(w: dict[str, Any]) -> Built:
  config = load_config(w["config"], w.get("overrides"))
  return BUILDERS[w["kind"]](w, config)


# ---------------------------------------------------------------------------
# Worker processes and the alternating driver.


def run_jax_worker(name: str, steps: int, export_path: str) -> dict:
  built = build(WORKLOADS[name])
  if not os.path.exists(export_path):
    np.savez(export_path + ".tmp.npz", **built.export)
    os.replace(export_path + ".tmp.npz", export_path)
    with open(export_path + ".json", "w") as f:
      json.dump(built.spec, f)
  built.call()  # warm-up
  return {**time_calls(built.call, steps), "compile_s": built.compile_s}


def time_calls(call: Callable[[], Any], steps: int) -> dict[str, list[float]]:
  """Wall-clock and process CPU milliseconds of each of `steps` calls."""
  wall, cpu = [], []
  for _ in range(steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    wall.append(1000 * (time.perf_counter() - start))
    cpu.append(1000 * (time.process_time() - start_cpu))
  return {"ms": wall, "cpu_ms": cpu}


def _worker_cmd(side: str, name: str, steps: int, export_path: str,
                threads: int) -> list[str]:
  if side == "advjax":
    return [sys.executable, os.path.abspath(__file__), f"--worker={name}",
            f"--steps={steps}", f"--export={export_path}"]
  with open(export_path + ".json") as f:
    spec = f.read()
  return [TORCH_PY, TORCH_SCRIPT, f"--spec={spec}",
          f"--weights={export_path}", f"--steps={steps}",
          f"--threads={threads}"]


def _run_worker(cmd: list[str]) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        cwd=ROOT, check=False)
  if proc.returncode:
    raise RuntimeError(f"{cmd[:2]} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(name: str, rounds: int, steps: int, threads: int, tmp: str
            ) -> dict[str, Any]:
  """Alternating rounds (ABBA) of both sides; medians and load averages."""
  export_path = os.path.join(tmp, f"{name}.npz")
  load_before = os.getloadavg()[0]
  result = {"advjax": [], "torch": [], "advjax_cpu": [], "torch_cpu": [],
            "compile_s": []}
  # advjax runs first once: it writes the weights PyTorch loads.
  order = ["advjax", "torch"]
  for r in range(rounds):
    for side in (order if r % 2 == 0 else order[::-1]):
      out = _run_worker(_worker_cmd(side, name, steps, export_path, threads))
      result[side].append(float(np.median(out["ms"])))
      result[side + "_cpu"].append(float(np.median(out["cpu_ms"])))
      if side == "advjax":
        result["compile_s"].append(out["compile_s"])
  result["load"] = (load_before, os.getloadavg()[0])
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5,
                      help="timed calls per process (after one warm-up)")
  parser.add_argument("--threads", type=int, default=0,
                      help="PyTorch threads (0: its default, one per core)")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--export", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(run_jax_worker(args.worker, args.steps, args.export)))
    return
  if not os.path.exists(TORCH_PY):
    sys.exit(f"no torch venv at {TORCH_PY}; create it with "
             f"`bash .ci/torch_env.sh`")
  print(f"{os.cpu_count()} CPU(s); {args.rounds} alternating rounds of "
        f"{args.steps} timed calls per workload; speed = PyTorch ms / "
        f"advjax ms", flush=True)
  print(f"{'workload':<16} {'advjax ms':>10} {'torch ms':>10} {'speed':>6} "
        f"{'compile s':>9} {'load before/after':>18} {'cpu ms advjax':>14} "
        f"{'torch':>8} {'speed':>6}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.workloads.split(","):
      name = name.strip()
      r = compare(name, args.rounds, args.steps, args.threads, tmp)
      med = {k: float(np.median(v)) for k, v in r.items() if k != "load"}
      print(f"{name:<16} {med['advjax']:>10.1f} {med['torch']:>10.1f} "
            f"{med['torch'] / med['advjax']:>5.2f}x {med['compile_s']:>9.1f} "
            f"{r['load'][0]:>8.2f} / {r['load'][1]:<7.2f} "
            f"{med['advjax_cpu']:>14.1f} {med['torch_cpu']:>8.1f} "
            f"{med['torch_cpu'] / med['advjax_cpu']:>5.2f}x", flush=True)


if __name__ == "__main__":
  main()
