"""Evaluation metrics and re-evaluating a run from its checkpoint or
export."""

import dataclasses

import keras
import numpy as np
import pytest

from advisor_tf import config as config_lib
from advisor_tf import evaluation
from advisor_tf import trainer


def test_evaluation_report_hand_values():
  logits = np.array([[3, 2, 1], [1, 3, 2], [1, 2, 3], [3, 1, 2]], float)
  labels = np.array([0, 2, 1, 1])
  report = evaluation.report(logits, labels, 3, train_counts=[500, 50, 5])
  # Predictions (argmax): 0, 1, 2, 0 against labels 0, 2, 1, 1.
  assert report["top1"] == 25.0 and report["top3"] == 100.0
  assert evaluation.report(logits, labels, 3, ks=(2,))["top2"] == 75.0
  assert report["per_class_accuracy"] == [100.0, 0.0, 0.0]
  assert report["many_shot"] == 100.0 and report["medium_shot"] == 0.0
  assert report["few_shot"] == 0.0
  assert report["confusion_matrix"] == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


# ------------------------------------------------ flagfiles on mock data


@pytest.mark.slow
def test_evaluate_cli_checkpoint_and_export(tmp_path):
  config = dataclasses.replace(
      config_lib.TrainConfig(), workdir=str(tmp_path / "run"), epochs=1,
      steps_per_epoch=3, lr_decay_epochs=(1,), verbose=0, embedding_size=8)
  metrics = trainer.train(config)
  keras.backend.clear_session()
  from_ckpt = evaluation.evaluate_run(str(tmp_path / "run"), "test", "checkpoint")
  from_export = evaluation.evaluate_run(str(tmp_path / "run"), "test", "saved_model")
  assert from_ckpt["top1"] == pytest.approx(metrics["test/top1"])
  assert from_export["top1"] == pytest.approx(metrics["test/top1"])
  assert {"top3", "top5", "confusion_matrix", "few_shot"} <= set(from_ckpt)
  train_report = evaluation.evaluate_run(str(tmp_path / "run"), "train", "checkpoint")
  assert len(train_report["per_class_accuracy"]) == 10
  with pytest.raises(ValueError, match="--split='val' is not a split"):
    evaluation.evaluate_run(str(tmp_path / "run"), "val")
