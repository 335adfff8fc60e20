"""The thesis' qualitative analyses of a run, as matplotlib figures, and the
report `python -m advisor_tf.analyze` writes.

Every `plot_*` function takes plain arrays and returns a `Figure`, so the
notebooks can show them inline; `analyze_run` makes all of them for one run
and writes PNGs, `report.md`, `report.html`, `label_issues.csv` and
`summary.json`. The label issues are ranked by one of `advice.RANKINGS`
(default `advice.DEFAULT_RANKING`); the report states the ranking's mean
average precision measured by the dirty-labels grid (`GRID_RESULTS`, written
by `python -m advisor_tf.experiments.dirty_labels`), when that file exists.
"""

from __future__ import annotations

import html
import json
import os

from absl import logging
import matplotlib.pyplot as plt
import numpy as np

from advisor_tf import advice as advice_lib
from advisor_tf import crossval
from advisor_tf import evaluation
from advisor_tf import telemetry
from advisor_tf.data import pipeline
from advisor_tf.model import ADVISOR_MODES

_NOISY, _CLEAN = "tab:red", "tab:blue"
# Where the true labels are unknown (no synthetic noise), the figures mark the
# ranking's most suspected examples instead: this top fraction.
SUSPECT_FRACTION = 0.1
KNOWN_TAGS = ("clean label", "noisy label")
SUSPECT_TAGS = ("not flagged", f"flagged (top {SUSPECT_FRACTION:.0%} suspects)")
# The dirty-labels grid's results as shipped in the repository (absent from
# an installed package: the report then says "not measured yet"), and the
# rankings it measures.
GRID_RESULTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
    "dirty_labels.json")
GRID_RANKINGS = ("rank_average", "advisor", "loss", "cleanlab_model",
                 "cleanlab_cv", "cv_loss", "cv_advisor", "ce_loss")
NOT_MEASURED = "not measured yet"


def grid_ranking_means(results, group="label_issue_ap"):
  """Mean of each ranking's `group` values (AP or precision@k) over the
  grid's noisy cells, advisor methods and seeds: `{ranking: mean or None}`
  (`{}` when the grid has no noisy cell with an advisor method yet). The
  advisor methods are the runs where every ranking exists, so each mean is
  over the same runs."""
  values = {name: [] for name in GRID_RANKINGS}
  for by_method in results.values():
    for method, entry in by_method.items():
      if method not in ADVISOR_MODES:
        continue
      for name, per_seed in entry.get(group, {}).items():
        values.setdefault(name, []).extend(
            v for v in per_seed if v is not None)
  if not any(values.values()):
    return {}
  return {name: float(np.mean(v)) if v else None
          for name, v in values.items()}


def grid_ranking_ap(ranking, path=None):
  """The mean AP of `ranking` over the dirty-labels grid in `path`
  (default `GRID_RESULTS`); None when not measured (no file, or no value)."""
  path = GRID_RESULTS if path is None else path
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return grid_ranking_means(json.load(f)).get(ranking)


def _noise_colours(ax, points, noisy, tags=KNOWN_TAGS):
  if noisy is None or not noisy.any():
    ax.scatter(points[:, 0], points[:, 1], s=6, c=_CLEAN, alpha=0.6)
    return
  for label, members, colour in ((tags[0], ~noisy, _CLEAN),
                                 (tags[1], noisy, _NOISY)):
    ax.scatter(points[members, 0], points[members, 1], s=6, c=colour,
               alpha=0.6, label=f"{label} ({members.sum()})")
  ax.legend(loc="best", markerscale=3)


def plot_mask_pca(mask, noisy=None, tags=KNOWN_TAGS):
  """First two principal components of the attention masks `W_f`, coloured
  noisy / clean (thesis fig. 2.10, 3.8) — or by `tags` of another marking."""
  from sklearn.decomposition import PCA
  points = PCA(n_components=2, random_state=0).fit_transform(mask)
  fig, ax = plt.subplots(figsize=(6, 5))
  _noise_colours(ax, points, noisy, tags)
  ax.set(title="PCA of the attention masks $W_f$", xlabel="PC 1",
         ylabel="PC 2")
  fig.tight_layout()
  return fig


def plot_mask_tsne(mask, labels, class_names, components=50, seed=0):
  """t-SNE of the masks' leading principal components, coloured by (given)
  class (thesis fig. 2.11, 3.9)."""
  from sklearn.decomposition import PCA
  from sklearn.manifold import TSNE
  reduced = PCA(n_components=min(components, *mask.shape),
                random_state=seed).fit_transform(mask)
  perplexity = float(min(30, max(2, (len(mask) - 1) // 3)))
  points = TSNE(n_components=2, perplexity=perplexity, init="pca",
                random_state=seed).fit_transform(reduced)
  fig, ax = plt.subplots(figsize=(7, 6))
  cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
  for k, name in enumerate(class_names):
    members = labels == k
    if members.any():
      ax.scatter(points[members, 0], points[members, 1], s=6,
                 color=cmap(k % cmap.N), label=str(name), alpha=0.7)
  if len(class_names) <= 20:
    ax.legend(loc="best", fontsize=7, markerscale=2, ncol=2)
  ax.set(title="t-SNE of the masks' principal components, by given class")
  fig.tight_layout()
  return fig


def plot_mask_heatmap(mask, noisy, class_name, tags=("clean", "noisy")):
  """Attention masks of examples of one class, one row each, noisy rows
  marked (thesis fig. 2.12, 3.5, 3.6, 3.10, 3.11); `tags` name the two kinds
  of row (e.g. `("", "suspect")` where the truth is unknown)."""
  fig, ax = plt.subplots(figsize=(8, 0.25 * len(mask) + 1.2))
  ax.imshow(mask, aspect="auto", cmap="gray", vmin=0.0, vmax=1.0,
            interpolation="nearest")
  ax.set_yticks(range(len(mask)))
  ax.set_yticklabels([tags[1] if n else tags[0] for n in noisy], fontsize=6)
  for tick, n in zip(ax.get_yticklabels(), noisy):
    tick.set_color(_NOISY if n else "black")
  ax.set(title=f"$W_f$ of the first {len(mask)} examples labelled "
               f"{class_name!r} (white = 1)", xlabel="feature")
  fig.tight_layout()
  return fig


def plot_suppression(trace, class_counts, eql_threshold):
  """MES suppressions `s_k` against the normalised class sizes over training:
  the mean absolute error to the target `1 − n_k/n_max` per epoch beside the
  two hand-made EQL threshold functions, and `s_k` at a few epochs
  (thesis fig. 3.7, 3.12)."""
  target = advice_lib.suppression_target(class_counts)
  epochs = [r["epoch"] for r in trace]
  learned = np.asarray([r["class_suppression"] for r in trace])
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  left.plot(epochs, np.abs(learned - target).mean(axis=1), "o-",
            label="MES (learned $s_k$)")
  for name, values in advice_lib.eql_thresholds(class_counts,
                                                eql_threshold).items():
    left.axhline(np.abs(values - target).mean(), ls="--", color="gray"
                 if "step" in name else "black", label=f"{name}, λ={eql_threshold}")
  left.set(xlabel="epoch", ylabel="MAE to $1 - n_k/n_{max}$",
           title="Fit of the suppression to the class sizes")
  left.legend()
  order = np.argsort(-np.asarray(class_counts))
  right.plot(np.arange(len(order)), target[order], "k-", lw=2,
             label="$1 - n_k/n_{max}$")
  picks = sorted({0, len(trace) // 2, len(trace) - 1})
  for i in picks:
    right.plot(np.arange(len(order)), learned[i][order], ".-",
               label=f"$s_k$, epoch {epochs[i]}")
  right.set(xlabel="class, most to least frequent", ylabel="value",
            ylim=(-0.05, 1.05), title="Learned $s_k$ per class")
  right.legend(fontsize=8)
  fig.tight_layout()
  return fig


def plot_per_class_accuracy(per_class, class_counts):
  """Test accuracy of each class against its number of training images."""
  counts = np.asarray(class_counts)
  accuracy = np.asarray([np.nan if a is None else a for a in per_class])
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(counts, accuracy, s=14)
  if counts.max() > 5 * max(counts.min(), 1):
    ax.set_xscale("log")
  ax.axvline(evaluation.FEW_SHOT, color="gray", ls=":", lw=1)
  ax.axvline(evaluation.MANY_SHOT, color="gray", ls=":", lw=1)
  ax.set(xlabel="training images of the class", ylabel="test accuracy (%)",
         title="Per-class accuracy against class size", ylim=(-2, 102))
  fig.tight_layout()
  return fig


def plot_confusion(confusion, class_names):
  """Row-normalised confusion matrix (rows: true class)."""
  confusion = np.asarray(confusion, np.float64)
  rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  size = min(12, 3 + 0.35 * len(class_names))
  fig, ax = plt.subplots(figsize=(size, size))
  image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
  if len(class_names) <= 30:
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names, fontsize=7)
  ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  return fig


def plot_label_issue_curves(curves):
  """Precision/recall of finding the corrupted labels, one curve per
  ranking (`{name: ranking_quality(...)}`)."""
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for name, quality in curves.items():
    ax.plot(quality["recall"], quality["precision"],
            label=f"{name} (AP {quality['ap']:.3f})")
  ax.set(xlabel="recall of corrupted labels", ylabel="precision",
         title="Finding the corrupted labels", xlim=(0, 1), ylim=(0, 1.02))
  ax.legend(loc="lower left")
  fig.tight_layout()
  return fig


def plot_top_suspects(images, given, predicted, class_names, noisy=None,
                      scores=None, cols=8, ranking=""):
  """A gallery of training images, most suspected first, each titled
  `given→predicted` label; where the truth is known (`noisy`), the titles of
  truly corrupted labels are red and the others blue."""
  images = np.asarray(images, np.float64)
  rows = max(1, -(-len(images) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols,
                                                1.5 * rows + 0.5),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i >= len(images):
      continue
    image = images[i]
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else image * 0.0
    if image.shape[-1] == 1:
      ax.imshow(image[..., 0], cmap="gray", interpolation="nearest")
    else:
      ax.imshow(image[..., :3], interpolation="nearest")
    colour = "black" if noisy is None else (_NOISY if noisy[i] else _CLEAN)
    title = f"{class_names[given[i]]}→{class_names[predicted[i]]}"
    if scores is not None:
      title += f"\n{scores[i]:.3g}"
    ax.set_title(title, fontsize=7, color=colour)
  fig.suptitle(f"Top {len(images)} suspected training images"
               + (f" by `{ranking}`" if ranking else "")
               + ": given→predicted label" + (
                   " (red: truly corrupted)" if noisy is not None else ""),
               fontsize=9)
  fig.tight_layout()
  return fig


def top_suspect_images(source, split, advice, order):
  """The training images at positions `advice.positions[order]`, as the
  model sees them without augmentation."""
  if not len(order):
    return np.zeros((0,) + tuple(source.image_shape))
  indices = np.asarray(split.train_indices)[advice.positions[order]]
  data = pipeline.unaugmented_train(source, indices, advice.given[order])
  return np.stack([np.asarray(x) for x, _ in data])


# ------------------------------------------------------------------ report
def analyze_run(run, out_dir, class_names=None, num_examples=50,
                max_points=2000, seed=0, ranking=None, num_suspects=24,
                grid_results=None, folds=crossval.FOLDS):
  """Makes every figure that applies to `run` (a `run.Run`) and writes
  the report into `out_dir`. Returns the summary dict (also written as
  `summary.json`); `summary["figures"]` maps figure names to PNG paths.

  `ranking` (one of `advice.RANKINGS`, None: the default) orders the label
  issues, the suspects marked where the truth is unknown, and the gallery of
  the `num_suspects` top suspects; `grid_results` is the dirty-labels grid's
  JSON the report quotes the ranking's mean AP from (default
  `GRID_RESULTS`). `cleanlab_cv` trains `folds` cross-entropy models first
  (`crossval`; their probabilities are cached in `out_dir`)."""
  os.makedirs(out_dir, exist_ok=True)
  config, source, split, model = run.config, run.source, run.split, run.model
  counts = split.class_counts(source.num_classes)
  adv = advice_lib.advise(model, source, split,
                          batch_size=config.eval_batch_size)
  scores = advice_lib.label_issue_scores(adv)
  rankings = advice_lib.single_run_rankings(adv, scores)
  ranking, fallback = advice_lib.resolve_ranking(
      ranking, advice_lib.available_rankings(rankings), len(adv.given))
  if fallback:
    logging.warning(fallback)
  if ranking in advice_lib.TRAINED_RANKINGS:  # K CE trainings, cached.
    probs = crossval.cross_validated_probabilities(
        config, source, split, folds,
        cache=os.path.join(out_dir, f"cv_probabilities_{folds}fold.npy"),
        log=logging.warning)  # Shown: the minutes they take are no hang.
    rankings.update(advice_lib.cv_rankings(rankings, advice_lib.cleanlab_scores(
        adv.given, probs[adv.positions])))
  # The truth is known only where the noise was synthetic (the protocol kept
  # the clean labels); otherwise mark the ranking's top suspects, and say so.
  known = config.noise != "none"
  if known:
    marked, tags, row_tags = adv.noisy, KNOWN_TAGS, ("clean", "noisy")
    marking = "noisy vs clean labels"
  else:
    marked = np.zeros(len(adv.given), bool)
    top = max(1, int(round(SUSPECT_FRACTION * len(marked))))
    marked[np.argsort(-rankings[ranking], kind="stable")[:top]] = True
    tags, row_tags = SUSPECT_TAGS, ("", "suspect")
    marking = (f"true labels unknown; marked: the top {SUSPECT_FRACTION:.0%} "
               f"suspects of the `{ranking}` ranking")
  noisy = adv.noisy if known and adv.noisy.any() else None
  figures, notes = {}, [fallback] if fallback else []

  def save(name, fig, caption):
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    figures[name] = {"path": path, "caption": caption}

  rng = np.random.default_rng(seed)
  sample = np.sort(rng.permutation(len(adv.given))[:max_points])
  if adv.mask is not None:
    save("mask_pca", plot_mask_pca(adv.mask[sample], marked[sample], tags),
         f"PCA of the attention masks W_f of training examples, {marking} "
         "(thesis fig. 2.10, 3.8).")
    save("mask_tsne", plot_mask_tsne(adv.mask[sample], adv.given[sample],
                                     source.class_names, seed=seed),
         "t-SNE of the masks' principal components by given class "
         "(fig. 2.11, 3.9).")
    names = class_names or _default_heatmap_classes(counts, source)
    for name in names:
      if name not in source.class_names:
        raise ValueError(f"--classes: {name!r} is not a class of "
                         f"{config.dataset}; classes: "
                         f"{', '.join(map(str, source.class_names[:20]))}…")
      k = list(source.class_names).index(name)
      members = np.flatnonzero(adv.given == k)[:num_examples]
      save(f"mask_heatmap_{_slug(name)}",
           plot_mask_heatmap(adv.mask[members], marked[members], name,
                             row_tags),
           f"W_f of the first {len(members)} training examples labelled "
           f"{name!r} ({counts[k]} in the class); "
           + ("noisy rows in red" if known else
              f"{marking}, in red") + " (fig. 2.12, 3.5, 3.6, 3.10, 3.11).")
  else:
    notes.append(f"--method={config.method} learns no attention mask: no "
                 "PCA, t-SNE or heat-map figures.")
  trace = telemetry.read_trace(config.workdir)
  trace = [r for r in trace if "class_suppression" in r]
  if trace:
    save("suppression_vs_class_size",
         plot_suppression(trace, counts, config.eql_threshold),
         "MES suppressions s_k against the normalised class sizes over "
         "training, with the EQL threshold functions (fig. 3.7, 3.12).")
  elif adv.suppression is not None:
    notes.append("No advisor_trace.jsonl (trained with "
                 "--telemetry_examples=0?): no s_k-over-training figure.")
  metrics = {k.split("/", 1)[1]: v for k, v in evaluation.evaluate(
      model, source, "test", config.eval_batch_size, counts).items()}
  save("per_class_accuracy",
       plot_per_class_accuracy(metrics["per_class_accuracy"], counts),
       "Test accuracy per class against its training images (dotted: the "
       "few/many-shot limits 20 and 100).")
  save("confusion", plot_confusion(metrics["confusion_matrix"],
                                   source.class_names),
       "Row-normalised test confusion matrix.")
  issues_path = os.path.join(out_dir, "label_issues.csv")
  advice_lib.write_label_issues(issues_path, adv, rankings, source, split,
                                score=ranking)
  order = np.argsort(-rankings[ranking], kind="stable")[:num_suspects]
  if len(order):
    save("top_suspects", plot_top_suspects(
        top_suspect_images(source, split, adv, order), adv.given[order],
        adv.predicted[order], source.class_names,
        noisy=adv.noisy[order] if known else None,
        scores=rankings[ranking][order], ranking=ranking),
         f"The {len(order)} training images the `{ranking}` ranking suspects "
         "most, each titled given→predicted label (and its score)"
         + ("; red titles: truly corrupted labels." if known else "."))
  grid_ap = grid_ranking_ap(ranking, grid_results)
  summary = {"workdir": config.workdir, "checkpoint": run.checkpoint,
             "method": config.method, "dataset": config.dataset,
             "test_top1": metrics.get("top1"),
             "train_examples": int(len(adv.given)),
             "labels_truth": "known (synthetic noise)" if known else "unknown",
             "label_issue_ranking": ranking,
             "label_issue_ranking_means": advice_lib.RANKING_HELP[ranking],
             "label_issue_ranking_grid_ap": grid_ap,
             "label_issues_csv": issues_path,
             "meta_source": split.meta_source,
             "meta_note": meta_note(split.meta_source, known)}
  if known:
    summary["realised_noise_rate"] = float(adv.noisy.mean())
  else:
    summary["flagged_suspects"] = int(marked.sum())
  if noisy is not None:
    curves = {name: advice_lib.ranking_quality(rankings[name], noisy)
              for name in advice_lib.RANKINGS if name in rankings}
    summary.update({f"{name}_ap": q["ap"] for name, q in curves.items()})
    summary.update({f"{name}_precision_at_k": advice_lib.precision_at_k(
        rankings[name], noisy) for name in curves})
    save("label_issue_precision_recall", plot_label_issue_curves(curves),
         "Precision/recall of the label-issue rankings for the corrupted "
         "labels: " + ", ".join(curves) + f" (the report uses `{ranking}`).")
  summary["figures"] = figures
  summary["notes"] = notes
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _write_markdown(os.path.join(out_dir, "report.md"), summary)
  _write_html(os.path.join(out_dir, "report.html"), summary)
  return summary


def _default_heatmap_classes(counts, source):
  """The most and the least frequent class (the thesis shows one common
  and one rare class)."""
  order = np.argsort(-np.asarray(counts), kind="stable")
  return list(dict.fromkeys([source.class_names[order[0]],
                             source.class_names[order[-1]]]))


def _slug(name):
  return "".join(c if c.isalnum() else "_" for c in str(name))


def _headline(summary):
  lines = [f"- run: `{summary['workdir']}` ({summary['method']} on "
           f"{summary['dataset']}), checkpoint `{summary['checkpoint']}`",
           f"- test top-1: {summary['test_top1']:.2f} %",
           f"- training examples: {summary['train_examples']}, " + (
               f"realised noise rate {summary['realised_noise_rate']:.3f}"
               if "realised_noise_rate" in summary else
               "true labels unknown (no synthetic noise was injected): "
               f"figures mark the {summary['flagged_suspects']} most "
               "suspected examples (top "
               f"{SUSPECT_FRACTION:.0%}) of the ranking, not known errors"),
           ranking_line(summary)]
  if summary.get("meta_note"):
    lines.append(f"- meta set: {summary['meta_note']}")
  lines.append(f"- label issues ranked by `{summary['label_issue_ranking']}` "
               f"→ `label_issues.csv`; {summary['label_issue_ranking']}: "
               f"{summary['label_issue_ranking_means']}")
  measured = [name for name in advice_lib.RANKINGS
              if f"{name}_ap" in summary]
  if measured:
    lines.append("- this run's average precision (precision at the true "
                 "number of corrupted labels) for the corrupted labels: "
                 + ", ".join(f"{name} {summary[f'{name}_ap']:.3f} "
                             f"({summary[f'{name}_precision_at_k']:.3f})"
                             for name in measured))
  return lines + [f"- note: {n}" for n in summary["notes"]]


def meta_note(meta_source, known):
  """What the report says of the meta set the suspects were judged against
  (None: a trusted one)."""
  if meta_source == "auto":
    return ("the meta set was chosen automatically (--meta_source=auto) from "
            "the training labels themselves: the suspects were judged against "
            "a set the tool picked, not one you vouched for")
  if meta_source == "random_noisy" or (meta_source == "random" and not known):
    return (f"the meta set was drawn at random from the training labels "
            f"(--meta_source={meta_source}), as dirty as they are: the "
            "suspects were judged against a set nobody vouched for")
  return None


def ranking_line(summary):
  """`- ranking: X (mean AP over the dirty-labels grid: V)`."""
  grid_ap = summary.get("label_issue_ranking_grid_ap")
  return (f"- ranking: {summary['label_issue_ranking']} (mean AP over the "
          "dirty-labels grid: "
          + (NOT_MEASURED if grid_ap is None else f"{grid_ap:.3f}") + ")")


def _write_markdown(path, summary):
  lines = ["# advisor_tf run analysis", ""] + _headline(summary) + [""]
  for name, fig in summary["figures"].items():
    lines += [f"## {name}", "", fig["caption"], "",
              f"![{name}]({os.path.basename(fig['path'])})", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def _write_html(path, summary):
  items = "".join(f"<li>{html.escape(line[2:])}</li>"
                  for line in _headline(summary))
  body = [f"<h1>advisor_tf run analysis</h1><ul>{items}</ul>"]
  for name, fig in summary["figures"].items():
    body.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(fig['caption'])}"
                f"</p><img src=\"{html.escape(os.path.basename(fig['path']))}"
                "\" style=\"max-width:100%\">")
  with open(path, "w") as f:
    f.write("<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            "advisor_tf analysis</title></head><body>" + "".join(body) +
            "</body></html>")
