"""Backbones: feature sizes and weight-loading errors."""

import pytest

from advisor_tf import backbones


@pytest.mark.parametrize("name,shape,feature", [
    ("small_cnn", (8, 8, 1), 128), ("small_cnn_auto", (32, 32, 3), 128),
    ("resnet32", (32, 32, 3), 64),
    ("resnet18", (32, 32, 3), 512), ("resnet10", (64, 64, 3), 512),
    ("resnet50", (32, 32, 3), 2048)])
def test_backbone_feature_sizes(name, shape, feature):
  body, head = backbones.build_classifier(name, shape, 10)
  assert body.output_shape == (None, feature)
  assert head.output_shape == (None, 10)
  if name == "resnet32":  # He et al.'s CIFAR ResNet-32: 0.46 M parameters.
    total = body.count_params() + head.count_params()
    assert 0.45e6 < total < 0.475e6
  assert any(l.name.startswith(backbones.LAST_STAGE[name])
             for l in body.layers)


@pytest.mark.parametrize("side,extra", [(8, 0), (16, 1), (32, 2), (64, 3),
                                        (224, 5)])
def test_small_cnn_auto_ends_at_two_by_two(side, extra):
  """small_cnn_auto is small_cnn at 8×8 and adds stride-2 layers until the
  last map is 2×2 (its receptive field covers the image)."""
  body = backbones.BACKBONES["small_cnn_auto"]((side, side, 3))
  convs = [l for l in body.layers if l.name.startswith("conv")]
  assert len(convs) == 3 + extra
  assert convs[-1].output.shape[1:3] == (2, 2)
  if extra == 0:
    plain = backbones.BACKBONES["small_cnn"]((side, side, 3))
    assert [l.name for l in body.layers] == [l.name for l in plain.layers]
    assert body.count_params() == plain.count_params()


def test_resnet152_and_pretrained_weights_errors():
  body, _ = backbones.build_classifier("resnet152", (32, 32, 3), 5)
  assert body.output_shape == (None, 2048)
  with pytest.raises(ValueError, match="file not found"):
    backbones.build_classifier("resnet50", (32, 32, 3), 5,
                               weights="/nonexistent.h5")
  with pytest.raises(ValueError, match="--init_checkpoint"):
    backbones.build_classifier("resnet32", (32, 32, 3), 5, weights="x.h5")


# --------------------------------------------------------------- baselines
