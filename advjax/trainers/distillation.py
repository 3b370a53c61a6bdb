"""Defensive distillation end to end (Papernot et al. 2016).

1. Train a teacher classifier with softmax temperature T
   (`<workdir>/teacher`).
2. Train a student of the same architecture on the teacher's soft labels
   softmax(teacher_logits / T), also at temperature T (`<workdir>/student`).
3. Evaluate both at T = 1: clean accuracy and FGSM accuracy for
   `distill.eval_eps`, written to `<workdir>/distillation.md` and `.json`.

At T = 1 the student's softmax saturates, so its input gradients nearly
vanish: FGSM, which follows the gradient's sign, is blunted. This is gradient
masking rather than robustness (Carlini & Wagner 2016); compare with the
transfer error from an undistilled substitute (`advjax.evaluate
--substitute_workdir`).
"""

from __future__ import annotations

import json

import jax
import ml_collections

from advjax import fileio, inference, loop
from advjax import settings as settings_lib
from advjax.evaluators import robustness
from advjax.trainers import classifier

SECTIONS = ("dataset", "model", "optimizer", "distill")
EXAMPLE_CONFIG = "configs/distillation_fashion_mnist.py"
TRAINER = "distillation"


def _classifier_config(config: ml_collections.ConfigDict,
                       teacher_workdir: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.trainer = classifier.TRAINER
  c.distill.teacher_workdir = teacher_workdir
  return c


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       options: loop.RunOptions = loop.RunOptions()
                       ) -> dict[str, float]:
  """Teacher, then student, then the comparison; reruns resume each part."""
  teacher_dir = fileio.join(workdir, "teacher")
  student_dir = fileio.join(workdir, "student")
  is_main = jax.process_index() == 0
  loop.announce(f"distillation at temperature {config.temperature}: "
                f"training the teacher in {teacher_dir}")
  classifier.train_and_evaluate(_classifier_config(config, ""), teacher_dir,
                                options)
  loop.announce(f"training the student on the teacher's soft labels in "
                f"{student_dir}")
  classifier.train_and_evaluate(_classifier_config(config, teacher_dir),
                           student_dir)

  d = settings_lib.read(classifier.DistillSettings, config, "distill")
  eps_list = list(d.eval_eps)
  results = {}
  for name, path in (("teacher", teacher_dir), ("student", student_dir)):
    run = inference.restore(path, kind="classifier")
    results[name] = robustness.run(
        robustness.Settings(eps=tuple(eps_list), attacks=("fgsm",),
                            num_examples=d.eval_examples),
        robustness.common.Inputs(classifier=run))
    results[name].pop("examples")
  lines = [f"Defensive distillation at T = {config.temperature:g}, evaluated "
           f"at T = 1 on {results['teacher']['num_examples']} test images", "",
           "| model | clean accuracy | " + " | ".join(
               f"FGSM eps={e:g}" for e in eps_list) + " |",
           "| --- | --- | " + " | ".join("---" for _ in eps_list) + " |"]
  for name in ("teacher", "student"):
    r = results[name]
    lines.append(f"| {name} | {100 * r['clean_accuracy']:.2f}% | " + " | ".join(
        f"{100 * row['fgsm_accuracy']:.2f}%" for row in r["rows"]) + " |")
  markdown = "\n".join(lines) + "\n"
  if is_main:
    fileio.write_text(fileio.join(workdir, "distillation.md"), markdown)
    fileio.write_text(fileio.join(workdir, "distillation.json"),
                      json.dumps(results, indent=2))
    print(markdown, flush=True)
  return {"teacher/clean_accuracy": results["teacher"]["clean_accuracy"],
          "student/clean_accuracy": results["student"]["clean_accuracy"]}
