"""Learning from unlabelled studies (`train.semi`): confidence-thresholded pseudo-labelling and tri-net.

Tri-net (Chen, Wang, Gao & Zhou, IJCAI 2018): three classifiers over one shared stem and encoder
(`TransMed(num_classifiers=3)`). During `train.semi.warmup_epochs` each learns the labelled studies
through its own output smearing (labels with added noise), so the three start apart. From then on,
at the start of every epoch (a round), two classifiers label an unlabelled study for the third
where they agree and are both confident (`train.semi.threshold`), and a pseudo-label that changes
under dropout on the heads' input in any of `train.semi.passes` passes of either is edited out.
`pseudo_label` is the simple baseline: one classifier labels for itself where it is confident.
With `train.semi.round_size` N_0, round t keeps only the N_t = min(N_0 2^(t-1), U) most confident of the
studies each classifier would get (tri-net's growing N_t); 0 keeps every one from the first round.
`train.semi.balance` keeps the pseudo-labels in the labelled studies' class shares (`most_confident`).

Written here rather than taken from a library: the semi-supervised libraries (USB, TorchSSL)
expect fixed-size images with one label, not masked variable-length multi-modal studies with
multi-label targets, and none implements tri-net.

Targets: every training item carries `label` as a float32 (C, K) array, row c classifier c's
target (multilabel: a probability per task; multiclass: a distribution over the classes), NaN
where classifier c has none (a task the pseudo-labellers were unsure of, or a classifier the study
was not pseudo-labelled for). `SemiLoss` reads only the known entries, and averages the pseudo-labelled
studies apart from the labelled ones (`train.semi.weight`). A batch holds
`train.batch_size` labelled studies and `train.semi.ratio` times as many pseudo-labelled ones, and
an epoch as many batches as without unlabelled studies, so the learning-rate schedule, and the
labelled studies' share of it, are those of a labelled-only run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Sampler

from ..core.io import atomic_write
from ..core.labels import LabelSpec
from ..core.progress import progress
from ..data.collate import pad_collate, to_device
from .utils import autocast, eval_mode


def classifier_count(cfg: DictConfig) -> int:
    """How many classifiers `train.semi.method` trains: 3 for tri-net, else 1."""
    return 3 if cfg.train.semi.method == "tri_net" else 1


def one_hot_targets(labels: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """Stored labels (N, K) for multilabel, (N,) class indices for multiclass -> float32 (N, K)."""
    if spec.kind == "multilabel":
        return labels.astype(np.float32)
    return np.eye(spec.num_outputs, dtype=np.float32)[labels.astype(int)]


def labelled_targets(labels: np.ndarray, spec: LabelSpec, classifiers: int, smearing: float = 0.0, seed: int = 0) -> np.ndarray:
    """(N, C, K) targets of the labelled studies, the same for every classifier unless `smearing`.

    Output smearing (tri-net's start): each classifier gets its own noise |z|, z ~ N(0, smearing),
    fixed for the run by `seed`; multilabel targets move |z| towards the other label (clipped to
    [0, 1]), multiclass one-hot targets get |z| added to every class and are renormalised.
    """
    onehot = one_hot_targets(labels, spec)
    out = np.repeat(onehot[:, None], classifiers, axis=1)
    if smearing <= 0:
        return out
    noise = np.abs(np.random.default_rng(seed).normal(0.0, smearing, size=out.shape)).astype(np.float32)
    if spec.kind == "multilabel":
        return np.clip(out + (1 - 2 * out) * noise, 0.0, 1.0)
    smeared = out + noise
    return smeared / smeared.sum(axis=-1, keepdims=True)


class SemiLoss(nn.Module):
    """The training criterion on (B, C, K) logits and (B, C, K) targets with NaN for unknown entries.

    Multilabel: BCE with the labelled run's `pos_weight`, averaged over the known entries.
    Multiclass: cross-entropy with soft targets and the class weights, normalised as torch's
    weighted cross-entropy is for hard labels (by the weight of the targets), over the known rows.
    With `pseudo` (B,) marking the pseudo-labelled studies, the labelled and the pseudo-labelled studies
    are averaged apart and the latter added with `pseudo_weight` (the unlabelled loss's lambda of FixMatch and
    Mean Teacher): in one average, `train.semi.ratio` = 2 gives noisy pseudo-labels two thirds of every step.
    """

    def __init__(self, spec: LabelSpec, criterion: nn.Module, pseudo_weight: float = 1.0) -> None:
        super().__init__()
        self.kind, self.pseudo_weight = spec.kind, pseudo_weight
        class_weight = criterion.pos_weight if spec.kind == "multilabel" else criterion.weight
        self.register_buffer("weight", None if class_weight is None else class_weight.clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, pseudo: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "multilabel":
            known = ~torch.isnan(target)
            loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), pos_weight=self.weight, reduction="none")
            norm = known.float()
        else:
            known = ~torch.isnan(target[..., 0])  # a row is a whole distribution, or NaN
            target = torch.nan_to_num(target)
            weighted = target if self.weight is None else target * self.weight
            loss = -(weighted * F.log_softmax(logits, dim=-1)).sum(dim=-1)
            norm = weighted.sum(dim=-1) * known  # torch's normalisation of weighted cross-entropy
        floor = 1e-12 if self.kind == "multiclass" else 1.0  # a part without known entries adds 0
        if pseudo is None:
            return (loss * known).sum() / norm.sum().clamp(min=floor)
        rows = pseudo.view(-1, *[1] * (loss.dim() - 1))  # masks, not indexing: no host sync in the training step
        labelled = (loss * known * ~rows).sum() / (norm * ~rows).sum().clamp(min=floor)
        return labelled + self.pseudo_weight * (loss * known * rows).sum() / (norm * rows).sum().clamp(min=floor)


class WithTargets(Dataset):
    """`dataset`'s items with `label` replaced by row i of `targets` (N, C, K), and `pseudo` saying whether it is a pseudo-label."""

    def __init__(self, dataset: Dataset, targets: np.ndarray, pseudo: bool = False) -> None:
        self.dataset, self.targets, self.pseudo = dataset, targets, pseudo

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "label": torch.from_numpy(self.targets[index]), "pseudo": self.pseudo}


class SemiBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` labelled studies (indices 0..n_labelled-1, each once per epoch) and
    `ratio` x `batch_size` pseudo-labelled ones (drawn without replacement from `pool`, which indexes
    past the labelled ones, reshuffled when used up). Under DDP each rank takes every `world`-th index
    (the labelled order padded to a multiple of `world`, so every rank runs as many batches)."""

    def __init__(
        self, n_labelled: int, pool: np.ndarray, batch_size: int, ratio: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.n_labelled, self.pool, self.batch_size, self.ratio = n_labelled, pool, batch_size, ratio
        self.seed, self.rank, self.world = seed, rank, world

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n_labelled / self.world) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.n_labelled, generator=g).tolist()
        order += order[: -len(order) % self.world]  # every rank the same count, as DistributedSampler pads
        labelled = order[self.rank :: self.world]
        pseudo: list[int] = []
        for start in range(0, len(labelled), self.batch_size):
            batch = labelled[start : start + self.batch_size]
            while len(self.pool) and len(pseudo) < self.ratio * len(batch):
                pseudo += self.pool[torch.randperm(len(self.pool), generator=g)[self.rank :: self.world].numpy()].tolist()
            take = min(len(pseudo), self.ratio * len(batch))
            yield batch + pseudo[:take]
            pseudo = pseudo[take:]


@dataclass
class Round:
    """One round of pseudo-labelling (`semi.jsonl`, and `semi/*` in metrics.jsonl)."""

    epoch: int
    method: str
    unlabelled: int  # studies in data.unlabelled_root
    limit: int  # at most this many studies per classifier this round (`train.semi.round_size`'s N_t)
    pseudo_labelled: int  # studies given at least one pseudo-label, for any classifier
    edited: int  # studies that only dropout-unstable pseudo-labels would have labelled (tri-net's editing)
    entries: int  # pseudo-label entries (classifier x task, or classifier x study for multiclass)
    correct: Optional[int]  # entries that match the generator's truth; None when it is unknown
    per_classifier: list[int]  # studies pseudo-labelled for each classifier

    def metrics(self) -> dict:
        out = {"semi/pseudo_labelled": self.pseudo_labelled, "semi/edited": self.edited}
        if self.correct is not None and self.entries:
            out["semi/accuracy"] = self.correct / self.entries  # of the pseudo-label entries, against the generator's truth
        return out


@torch.no_grad()
def pre_logits(model: nn.Module, loader, device: torch.device, amp: bool) -> tuple[list[str], torch.Tensor]:
    """What the heads read, (N, D) on the CPU, for every study of `loader`, in eval mode."""
    ids, out = [], []
    with eval_mode(model):
        for batch in progress(loader, desc="pseudo-label", unit="batches"):
            x, mask = to_device(batch, device)
            with autocast(device, amp):
                out.append(model.forward_head(model.forward_features(x, mask), pre_logits=True).float().cpu())
            ids.extend(batch["id"])
    return ids, torch.cat(out)


def decisions(probs: torch.Tensor, spec: LabelSpec, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (..., K) probabilities: the decision (0/1 per task; the class index broadcast over K for
    multiclass) and whether it is confident (p >= t or p <= 1 - t; the top class's p >= t)."""
    if spec.kind == "multilabel":
        return (probs >= 0.5).long(), torch.maximum(probs, 1 - probs) >= threshold
    top, index = probs.max(dim=-1, keepdim=True)
    return index.expand_as(probs), (top >= threshold).expand_as(probs)


def dropout_passes(model: nn.Module, features: torch.Tensor, rate: float, passes: int, seed: int) -> torch.Tensor:
    """(P, N, C, K) logits of every classifier with dropout of `rate` on the heads' input, seeded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(passes):
        keep = (torch.rand(features.shape, generator=g) >= rate).to(features.dtype) / (1 - rate)
        out.append(model.classify(features * keep, classifiers=True))
    return torch.stack(out)


@torch.no_grad()
def pseudo_labels(
    model: nn.Module,
    loader,
    spec: LabelSpec,
    device: torch.device,
    cfg: DictConfig,
    epoch: int,
    truth: Optional[dict] = None,
    weight: Optional[torch.Tensor] = None,
    prior: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, Round]:
    """(N, C, K) targets for the unlabelled studies of `loader` (NaN: none), and the round's record.

    `pseudo_label`: classifier 0's confident decisions. `tri_net`: for classifier v, the decisions
    on which the other two agree, both confident, and unchanged in every dropout pass of both.
    `weight`: the loss's `pos_weight` (multilabel) or class weights (`SemiLoss.weight`). A weighted loss
    is minimised by odds multiplied by the weight, so confidence is judged on the logits less
    log(weight), the probabilities an unweighted model would give: otherwise a rare task's
    negatives look confidently positive, and each round's pseudo-labels feed the next.
    `prior` (K,): the labelled studies' share of each task's positives or of each class. With
    `train.semi.balance`, each classifier's logits of a task are first moved so that the unlabelled studies
    it decides positive are that share of them (`aligned_shift`), and each round's N_t is shared out in
    those proportions (`most_confident`).
    `truth` (study id -> label, from the synthetic generator) only scores the pseudo-labels.
    """
    semi = cfg.train.semi
    ids, features = pre_logits(model, loader, device, cfg.train.amp)
    cpu_head = _CPUHead(model, weight)
    if semi.balance and prior is not None and spec.kind == "multilabel":
        cpu_head.shift = cpu_head.shift + aligned_shift(cpu_head.classify(features), prior)
    probs = spec.probabilities(cpu_head.classify(features, classifiers=True))  # (N, C, K)
    decided, confident = decisions(probs, spec, semi.threshold)
    n, c, k = probs.shape
    assign = torch.zeros(n, c, k, dtype=torch.bool)
    edited = torch.zeros(n, c, k, dtype=torch.bool)
    label = torch.zeros(n, c, k, dtype=torch.long)
    if semi.method == "pseudo_label":
        assign, label = confident, decided
    else:
        passes = spec.probabilities(dropout_passes(cpu_head, features, semi.dropout, semi.passes, cfg.seed * 1000 + epoch))
        stable = (decisions(passes, spec, semi.threshold)[0] == decided).all(dim=0)  # (N, C, K)
        for v in range(c):
            i, j = [other for other in range(c) if other != v]
            agreed = (decided[:, i] == decided[:, j]) & confident[:, i] & confident[:, j]
            keep = agreed & stable[:, i] & stable[:, j]
            assign[:, v], edited[:, v], label[:, v] = keep, agreed & ~keep, decided[:, i]
    limit = round_limit(semi.round_size, epoch - semi.warmup_epochs, n)
    assign = most_confident(assign, probs, spec, semi.method, limit, label, prior if semi.balance else None)
    if spec.kind == "multiclass":
        rows = assign[..., 0]  # a multiclass pseudo-label is a whole row
        targets = torch.full((n, c, k), float("nan"))
        targets[rows] = F.one_hot(label[..., 0][rows], k).float()
        entries = int(rows.sum())
    else:
        targets = torch.where(assign, label.float(), torch.tensor(float("nan")))
        entries = int(assign.sum())
    studied = assign.flatten(1).any(dim=1)
    record = Round(
        epoch=epoch,
        method=semi.method,
        unlabelled=n,
        limit=limit,
        pseudo_labelled=int(studied.sum()),
        edited=int((edited.flatten(1).any(dim=1) & ~studied).sum()),
        entries=entries,
        correct=_correct(ids, label, assign, spec, truth),
        per_classifier=[int(assign[:, v].flatten(1).any(dim=1).sum()) for v in range(c)],
    )
    return targets.numpy(), record


def aligned_shift(logits: torch.Tensor, prior: np.ndarray) -> torch.Tensor:
    """(C, K) logit offsets that make each classifier decide a share prior[k] of the (N, C, K) studies positive
    on task k: the (1 - prior[k]) quantile of its logits (distribution alignment, as ReMixMatch aligns its
    guesses to the labelled marginal). Confidence is then measured from that boundary: a labeller that has
    overfitted a few studies puts every logit of a rare task below 0, and its "confident" negatives are
    its ranking's positives too; a task it cannot rank yet gets no confident decisions at all."""
    q = torch.as_tensor(1 - prior, dtype=logits.dtype)
    return torch.stack([torch.quantile(logits[..., k], q[k], dim=0) for k in range(logits.shape[-1])], dim=-1)


def round_limit(round_size: int, round_index: int, unlabelled: int) -> int:
    """Tri-net's N_t: `round_size` x 2^(t-1) studies in round t (1, 2, ...), at most all; 0: all from the first."""
    if round_size <= 0:
        return unlabelled
    return min(unlabelled, round_size * 2 ** min(max(round_index - 1, 0), 32))


def most_confident(
    assign: torch.Tensor,
    probs: torch.Tensor,
    spec: LabelSpec,
    method: str,
    limit: int,
    label: Optional[torch.Tensor] = None,
    prior: Optional[np.ndarray] = None,
) -> torch.Tensor:
    """`assign` (N, C, K) kept for at most `limit` studies per classifier: those whose pseudo-labels its
    labellers are surest of (the mean over the assigned entries of the least sure labeller's margin).

    With `prior` (K,): the labelled studies' share of each task's positives (multilabel) or of each class
    (multiclass), and `label` the decisions (N, C, K), the limit is shared out class by class instead
    (class-balanced self-training, Zou et al. 2018): per classifier, at most limit x prior positive and
    limit x (1 - prior) negative entries of each task (rounded half up), or limit x prior studies of each
    class, each the surest of its kind. Otherwise a labeller that has overfitted a few studies is surest
    of the majority decision, the set fills with it, and each round's pseudo-labels feed the next.
    """
    n, c, k = assign.shape
    if prior is None and limit >= n:
        return assign
    margin = (probs - 0.5).abs() if spec.kind == "multilabel" else probs.max(dim=-1, keepdim=True).values.expand_as(probs)
    kept = torch.zeros_like(assign)
    for v in range(c):
        labellers = [v] if method == "pseudo_label" else [other for other in range(c) if other != v]
        sure = margin[:, labellers].amin(dim=1)  # (N, K)
        rows = assign[:, v]
        if prior is None:
            top = _surest((sure * rows).sum(dim=-1) / rows.sum(dim=-1).clamp(min=1), rows.any(dim=-1), limit)
            kept[top, v] = assign[top, v]
            continue
        if spec.kind == "multilabel":  # entries: (task, decision) apart
            for task in range(k):
                for decided, part in ((1, float(prior[task])), (0, 1 - float(prior[task]))):
                    mine = rows[:, task] & (label[:, v, task] == decided)
                    kept[_surest(sure[:, task], mine, int(limit * part + 0.5)), v, task] = True
        else:  # studies: one class apart from another, a row kept whole
            for cls in range(k):
                mine = rows[:, 0] & (label[:, v, 0] == cls)
                kept[_surest(sure[:, 0], mine, int(limit * float(prior[cls]) + 0.5)), v] = True
    return kept


def _surest(score: torch.Tensor, eligible: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the (at most) `count` eligible entries with the highest score."""
    index = torch.nonzero(eligible).flatten()
    return index[score[index].argsort(descending=True, stable=True)[:count]]


class _CPUHead:
    """A copy of the model's heads on the CPU (`TransMed.classify`'s arithmetic), so the dropout passes
    and the decisions run beside the features whatever device trains; with `loss_weight`, the logits
    less log(loss_weight) (see `pseudo_labels`)."""

    def __init__(self, model: nn.Module, loss_weight: Optional[torch.Tensor] = None) -> None:
        self.weight, self.bias = model.head.weight.detach().float().cpu(), model.head.bias.detach().float().cpu()
        self.shape = (model.num_classifiers, model.num_outputs)
        self.shift = torch.zeros(self.shape[1]) if loss_weight is None else loss_weight.detach().float().cpu().log()

    def classify(self, features: torch.Tensor, classifiers: bool = True) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias).unflatten(-1, self.shape) - self.shift


def _correct(ids: list[str], label: torch.Tensor, assign: torch.Tensor, spec: LabelSpec, truth: Optional[dict]) -> Optional[int]:
    if truth is None:
        return None
    true = torch.from_numpy(one_hot_targets(np.stack([np.asarray(truth[i]) for i in ids]), spec))  # (N, K)
    if spec.kind == "multilabel":
        return int(((label == true[:, None].long()) & assign).sum())
    rows = assign[..., 0]
    return int(((label[..., 0] == true.argmax(dim=-1, keepdim=True)) & rows).sum())


def semi_loader(cfg: DictConfig, labelled: Dataset, targets: np.ndarray, unlabelled: Dataset, pseudo: np.ndarray, seed: int, rank: int, world: int):
    """The epoch's training loader: labelled studies with `targets`, and the unlabelled studies that
    have any pseudo-label in `pseudo` (N_u, C, K), `train.semi.ratio` of them per labelled study."""
    dataset = ConcatDataset([WithTargets(labelled, targets), WithTargets(unlabelled, pseudo, pseudo=True)])
    pool = len(labelled) + np.flatnonzero(~np.isnan(pseudo).reshape(len(pseudo), -1).all(axis=1))
    sampler = SemiBatchSampler(len(labelled), pool, cfg.train.batch_size, cfg.train.semi.ratio, seed, rank, world)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=str(cfg.train.device).startswith("cuda"),
        collate_fn=partial(pad_collate, modalities=list(cfg.data.modalities)),
    )


def write_round(path: Path, record: Round) -> None:
    """Appends the round to `semi.jsonl`, dropping rounds of this epoch or later (a resumed run redoes them)."""
    kept = []
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] < record.epoch]
    atomic_write(path, lambda f: f.write("".join(f"{line}\n" for line in [*kept, json.dumps(asdict(record))])), mode="w")
