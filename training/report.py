"""PR curves, F-measure curves and a markdown table for several models on several datasets.

python -m training.report --runs NAME=SOURCE ... --datasets NAME=IMAGES:MASKS[:SPLIT] ... --out DIR

A run's SOURCE is ``bundle:NAME_OR_DIR``, ``checkpoint:PATH``, ``predictions:DIR`` or ``baseline:centre_prior`` /
``baseline:spectral_residual``. Each model is scored with ``training.evaluate`` on each dataset; the command
writes ``<out>/pr_<dataset>.png``, ``<out>/f_<dataset>.png``, ``<out>/results.md`` and ``<out>/results.json`` and
prints the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np

from training.data import DatasetError, list_pairs
from training.evaluate import EvaluationError, evaluate, make_predictor

TABLE_COLUMNS = ("max_f", "mean_f", "adaptive_f", "weighted_f", "s_measure", "max_e", "mae")
SOURCE_KINDS = ("bundle", "checkpoint", "predictions", "baseline")


def parse_run(text: str) -> tuple[str, str, str]:
    """``NAME=KIND:VALUE`` → (name, kind, value)."""
    name, sep, source = text.partition("=")
    kind, sep2, value = source.partition(":")
    if not sep or not sep2 or kind not in SOURCE_KINDS or not name or not value:
        raise argparse.ArgumentTypeError(f"run {text!r}: expected NAME=KIND:VALUE with KIND in {SOURCE_KINDS}")
    return name, kind, value


def parse_dataset(text: str) -> tuple[str, str, str, str | None]:
    """``NAME=IMAGES:MASKS[:SPLIT]`` → (name, images, masks, split)."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"dataset {text!r}: expected NAME=IMAGES:MASKS[:SPLIT]")
    return name, parts[0], parts[1], parts[2] if len(parts) == 3 else None


def markdown_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per (dataset, model), one column per metric, best value per dataset in bold."""
    lines = ["| dataset | model | n | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 3) + "|"]
    for dataset, by_model in results.items():
        best = {
            c: (min if c == "mae" else max)(r[c] for r in by_model.values()) for c in TABLE_COLUMNS if len(by_model) > 1
        }
        for model, r in by_model.items():
            cells = [f"**{r[c]:.4f}**" if best.get(c) == r[c] else f"{r[c]:.4f}" for c in TABLE_COLUMNS]
            lines.append(f"| {dataset} | {model} | {r['n_images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, dict[str, np.ndarray]], dataset: str, out: Path) -> list[Path]:
    """PR curve and F-measure-vs-threshold curve of every model on one dataset."""
    thresholds = np.arange(255, -1, -1)
    pr_fig, pr_ax = plt.subplots(figsize=(5, 5))
    f_fig, f_ax = plt.subplots(figsize=(6, 4))
    for model, c in curves.items():
        pr_ax.plot(c["recall"], c["precision"], label=model)
        f_ax.plot(thresholds, c["f"], label=f"{model} (max {c['f'].max():.3f})")
    pr_ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR curves — {dataset}")
    f_ax.set(xlabel="threshold", ylabel="F-measure (β²=0.3)", xlim=(0, 255), ylim=(0, 1), title=f"F curves — {dataset}")
    paths = []
    for fig, ax, stem in ((pr_fig, pr_ax, "pr"), (f_fig, f_ax, "f")):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if stem == "pr" else "lower center", fontsize=8)
        fig.tight_layout()
        path = out / f"{stem}_{dataset}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=parse_run, required=True, help="NAME=KIND:VALUE ...")
    parser.add_argument("--datasets", nargs="+", type=parse_dataset, required=True, help="NAME=IMAGES:MASKS[:SPLIT]")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    files: list[str] = []
    try:
        predictors = {name: make_predictor(**{kind: value}, threads=args.threads) for name, kind, value in args.runs}
        for dataset, images, masks, split in args.datasets:
            samples = list_pairs(Path(images), Path(masks), Path(split) if split else None)
            curves = {}
            for model, predictor in predictors.items():
                scores, metrics = evaluate(predictor, samples, progress=False)
                results.setdefault(dataset, {})[model] = scores
                curves[model] = metrics.curves()
            files += [str(p) for p in plot_curves(curves, dataset, out)]
    except (DatasetError, EvaluationError) as exc:
        parser.exit(2, f"error: {exc}\n")
    (out / "results.md").write_text(markdown_table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    files += [str(out / "results.md"), str(out / "results.json")]
    print(json.dumps({"results": results, "files": files}))


if __name__ == "__main__":
    main()
