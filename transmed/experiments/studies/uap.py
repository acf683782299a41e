"""The uap study: the extra measurement per run (a UAP from the training studies and one from natural
images, each with its random control; fooling rates with Wilson intervals) and its analysis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ...core.errors import ConfigError
from ...core.tables import markdown_table
from ..ablation import has_split
from .analysis import Analysis, Results, plot_fooling, pretrained_note
from .spec import Study
from .stats import NAN, Comparison, Interval, wilson_interval

UAP_SETTINGS = {
    "zeta": 0.04,  # UAP norm relative to the mean norm of a training slice image (both sources: the same norm)
    "norm": "l2",
    "step": 0.1,
    "max_iter": 10,
    "delta": 0.2,
    "random_trials": 5,
    "natural_images": "sample",  # a folder of photos, or "sample": matplotlib's (and scikit-image's) bundled photos
    "crops": 48,  # random crops per sample photo
}
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "coffee", "rocket", "grass", "gravel", "brick")


def sample_photos() -> list[tuple[str, Any]]:
    """(name, PIL image) of the natural photos bundled with matplotlib and, where installed, scikit-image."""
    from PIL import Image

    from ...models.weights import sample_image

    with Image.open(sample_image()) as photo:
        photos = [("grace_hopper", photo.convert("L"))]
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        try:
            array = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001, S112 - not bundled in this version, or needs a download
            continue
        image = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
        photos.append((name, image.convert("L")))
    return photos


def natural_image_folder(settings: dict, out_dir: Path, seed: int) -> Path:
    """The folder the natural-image UAP is crafted from: the setting's folder, or random crops of the
    sample photos written once to `{group}/natural-images/`."""
    if settings["natural_images"] != "sample":
        folder = Path(settings["natural_images"])
        if not folder.is_dir():
            raise ConfigError(f"study setting natural_images: folder not found: {folder}")
        return folder
    folder = out_dir / "natural-images"
    if folder.is_dir() and any(folder.glob("*.png")):
        return folder
    from PIL import Image

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, photo in sample_photos():
        width, height = photo.size
        for i in range(int(settings["crops"])):
            side = int(rng.uniform(0.35, 1.0) * min(width, height))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((128, 128), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(tmp / f"{name}-{i:03d}.png")
    tmp.rename(folder)
    return folder


def measure_uap(run_dir: Path, cfg: DictConfig, study: Study, out_dir: Path) -> dict:
    """A UAP from the training studies and one from natural images, both of the same norm, each with
    its random control; fooling rates with Wilson intervals on test (where the data has it) or valid."""
    from ...evaluation.adversarial import image_folder_batches, mean_slice_norm, run_robustness

    s = study.settings
    checkpoint = run_dir / "checkpoints" / "best.pt"
    split = "test" if has_split(cfg, "test") else "valid"
    common = {"norm": s["norm"], "split": split, "step": s["step"], "max_iter": int(s["max_iter"]), "delta": s["delta"]}
    common["random_trials"] = int(s["random_trials"])
    results = {}
    train_dir = run_dir / "uap-train"
    if not (train_dir / "uap.json").exists():  # a rerun (train.resume=auto) keeps what was measured
        run_robustness(checkpoint, zeta=float(s["zeta"]), source="train", out=train_dir, **common)
    results["train"] = json.loads((train_dir / "uap.json").read_text())
    folder = natural_image_folder(s, out_dir, int(cfg.seed))
    natural_dir = run_dir / "uap-natural"
    if not (natural_dir / "uap.json").exists():
        natural_norm = mean_slice_norm(image_folder_batches(folder, cfg, cfg.train.batch_size), s["norm"])
        zeta = float(s["zeta"]) * results["train"]["settings"]["mean_input_norm"] / natural_norm  # the training UAP's radius
        run_robustness(checkpoint, zeta=zeta, source=str(folder), out=natural_dir, **common)
    results["natural"] = json.loads((natural_dir / "uap.json").read_text())
    row: dict[str, Any] = {"uap/split": split}
    for source, result in results.items():
        n, trials = int(result["settings"]["n_eval"]), int(result["settings"]["random_trials"])
        fooled = wilson_interval(round(result["fooling_rate"] * n), n)
        random = wilson_interval(round(result["random_fooling_rate"] * n * trials), n * trials)
        for name, interval in ((f"fooling/{source}", fooled), (f"random/{source}", random)):
            row.update({name: interval.value, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high})
        row.update(
            {
                f"uap/{source}/radius": result["settings"]["radius"],
                f"uap/{source}/zeta": result["settings"]["zeta"],
                f"uap/{source}/passes": result["settings"]["passes"],
                "uap/n_eval": n,
            }
        )
        if "auc" in result:
            row.update({"auc/clean": result["auc"]["clean"], f"auc/{source}_uap": result["auc"]["uap"]})
    return row


def analyse_uap(results: Results, out_dir: Path) -> Analysis:
    """Minagi, Hirano & Takemoto 2022: natural-image UAPs against random and training-image ones, pretrained and from scratch."""
    pretrained, scratch = results.one("pretrained"), results.one("scratch")
    label = lambda r: "" if r is None else str(r["run"])

    def rate(row: pd.Series | None, name: str) -> Interval:
        if row is None or f"{name}_ci_low" not in row or pd.isna(row.get(name)):
            return NAN
        return Interval(float(row[name]), float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"]))

    p, s = label(pretrained), label(scratch)
    comparisons = [
        Comparison(
            "Natural-image UAPs fool far more often than random perturbations of the same norm (pretrained)",
            f"{p} natural UAP",
            f"{p} random",
            rate(pretrained, "fooling/natural"),
            rate(pretrained, "random/natural"),
            "higher",
            "rate",
        ),
        Comparison(
            "... and a little less often than UAPs from the training images (pretrained)",
            f"{p} natural UAP",
            f"{p} training UAP",
            rate(pretrained, "fooling/natural"),
            rate(pretrained, "fooling/train"),
            "lower",
            "rate",
            "the verdict is the direction; 'a little' is the size of the difference",
        ),
        Comparison(
            "Training from scratch reduces the vulnerability to natural-image UAPs",
            f"{s} natural UAP",
            f"{p} natural UAP",
            rate(scratch, "fooling/natural"),
            rate(pretrained, "fooling/natural"),
            "lower",
            "rate",
        ),
        Comparison(
            "... but does not remove it: natural-image UAPs still beat random (from scratch)",
            f"{s} natural UAP",
            f"{s} random",
            rate(scratch, "fooling/natural"),
            rate(scratch, "random/natural"),
            "higher",
            "rate",
        ),
    ]
    rows = []
    for row in results.rows(ok=False):
        for source, what in (("train", "training studies"), ("natural", "natural images")):
            if pd.isna(row.get(f"fooling/{source}", np.nan)):
                continue
            rows.append(
                {
                    "run": row["run"],
                    "role": row["role"],
                    "UAP from": what,
                    "radius": row[f"uap/{source}/radius"],
                    "zeta": row[f"uap/{source}/zeta"],
                    "fooling rate [95% CI]": rate(row, f"fooling/{source}").text(),
                    "random, same norm [95% CI]": rate(row, f"random/{source}").text(),
                    "AUC clean": row.get("auc/clean"),
                    "AUC with UAP": row.get(f"auc/{source}_uap"),
                    "passes": row[f"uap/{source}/passes"],
                    "studies": row["uap/n_eval"],
                }
            )
    formats = {"radius": ".3g", "zeta": ".3g", "AUC clean": ".3f", "AUC with UAP": ".3f", "passes": "d", "studies": "d"}
    tables = [("Fooling rates", markdown_table(rows, formats=formats) if rows else "no UAP was measured")]
    split = next((str(r["uap/split"]) for r in results.rows() if isinstance(r.get("uap/split"), str)), "valid")
    s_ = results.study.settings
    notes = pretrained_note(results, ["pretrained"])
    notes.append(
        f"Fooling rate: the share of {split} studies whose prediction changes (any task flips at 0.5, or the class changes), "
        f"with a Wilson 95% interval; the random control pools its {s_['random_trials']} perturbations. Both UAPs have the same "
        f"{s_['norm']} norm, zeta={s_['zeta']:g} times the mean norm of a training slice image (the natural UAP's zeta is rescaled "
        f"to its own inputs' norm). Natural images: `{s_['natural_images']}`"
        + (
            f" ({s_['crops']} random crops per photo of matplotlib's, and where installed scikit-image's, sample photos)."
            if s_["natural_images"] == "sample"
            else "."
        )
    )
    figure = out_dir / "uap.png"
    plot_fooling(results, figure, rate)
    return Analysis(comparisons, notes, tables, [("Fooling rates with 95% Wilson intervals", figure)])
