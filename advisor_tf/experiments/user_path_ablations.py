r"""The user-path grid with an ablation-only change of the method: the
ablations of README "The user-path grid" that no option of the library
offers (none of them became one; the fix was the backbone).

  python -m advisor_tf.experiments.user_path_ablations \
      --variant=advisor_input_std|meta_bn_eval|no_loss_input \
      --out=results/user_path_ablations.json --workdir=runs/user_path \
      --cells=flip0.4 --seeds=0 --methods=mfrw_mes \
      --set=backbone=small_cnn --tag=@small_cnn_advstd

Every other flag is `user_path`'s. The variants (patched into this process
only):

  advisor_input_std  the advisor reads its feature standardised over the
                     batch (per feature: (f − mean) / (std + 1e-3)); the
                     mask still multiplies the raw feature
  meta_bn_eval       the meta forward (step 3) uses the BatchNorm moving
                     statistics instead of the meta batch's own
  no_loss_input      the advisor reads a zero loss: the feature alone
"""

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from keras import ops  # noqa: E402

from advisor_tf import layers as adv_layers  # noqa: E402
from advisor_tf import losses as adv_losses  # noqa: E402
from advisor_tf import model as model_lib  # noqa: E402
from advisor_tf.experiments import user_path  # noqa: E402

VARIANTS = ("advisor_input_std", "meta_bn_eval", "no_loss_input")


def apply_variant(variant):
  """Patches `variant` (one of `VARIANTS`) into this process."""
  if variant == "advisor_input_std":
    call = adv_layers.AdvisorNetwork.call

    def standardised(self, features, losses):
      f = ops.stop_gradient(ops.cast(features, self.compute_dtype))
      f = (f - ops.mean(f, 0, keepdims=True)) / (
          ops.std(f, 0, keepdims=True) + 1e-3)
      return call(self, f, losses)
    adv_layers.AdvisorNetwork.call = standardised
  elif variant == "no_loss_input":
    call = adv_layers.AdvisorNetwork.call
    adv_layers.AdvisorNetwork.call = (
        lambda self, features, losses: call(self, features,
                                            ops.zeros_like(losses)))
  elif variant == "meta_bn_eval":
    def meta_loss(self, fast_weights, x_meta, y_meta):
      body, head = self._split(fast_weights)  # noqa: SLF001
      f, _ = self.backbone.stateless_call(
          body, [v.value for v in self.backbone.non_trainable_variables],
          x_meta, training=False)
      z, _ = self.head.stateless_call(
          head, [v.value for v in self.head.non_trainable_variables], f,
          training=False)
      return ops.mean(adv_losses.cross_entropy(y_meta, z))
    model_lib.AdvisorModel._meta_loss = meta_loss  # noqa: SLF001
  else:
    raise ValueError(f"--variant={variant!r} is not one of "
                     f"{', '.join(VARIANTS)}.")


if __name__ == "__main__":
  _VARIANT = flags.DEFINE_enum("variant", None, VARIANTS,
                               "The ablation-only change.", required=True)
  _FLAGS = user_path._define_flags()  # noqa: SLF001

  def _main(argv):
    apply_variant(_VARIANT.value)
    user_path.main(argv, _FLAGS)
  app.run(_main)
