"""One-run layer: the training objectives. NCE (video-audio) and MIL-NCE (video-text) with
negatives gathered across ranks, and DINO's self-distillation loss with a separately updated centre.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scaling.distributed import all_gather_cat, all_reduce_, gather_with_grad


def same_group(groups: torch.Tensor | None) -> torch.Tensor | None:
    """(N, N) bool over the global batch: pairs of *different* rows with the same group id (windows
    of one video, under repeated sampling), which are then left out of each other's negatives. None
    (no groups): every other row is a negative."""
    if groups is None:
        return None
    g = all_gather_cat(groups.reshape(-1))
    mask = g[:, None] == g[None, :]
    return mask & ~torch.eye(len(g), dtype=torch.bool, device=mask.device)


def nce_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.07,
             groups: torch.Tensor | None = None,
             queue: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of x and y (B, D), L2-normalised.

    Negatives are every other row of the global batch: rows are all-gathered across ranks with
    gradient to the local part. Equals the mean of the cross-entropy of the similarity matrix
    (positives on the diagonal) over rows and over columns. `groups` (B,): rows sharing an id are
    not each other's negatives (their logits are -inf in both directions). `queue` (x_q, y_q), each
    (Q, D) and already normalised (vatt.negatives=queue): past embeddings, constants, added as
    negatives: y_q to every x row's softmax and x_q to every y row's.
    """
    x = gather_with_grad(F.normalize(x, dim=-1))
    y = gather_with_grad(F.normalize(y, dim=-1))
    logits = x @ y.t() / temperature
    masked = same_group(groups)
    if masked is not None:
        logits = logits.masked_fill(masked, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    rows, cols = logits, logits.t()
    if queue is not None:
        x_q, y_q = queue
        rows = torch.cat([rows, x @ y_q.t() / temperature], dim=1)
        cols = torch.cat([cols, y @ x_q.t() / temperature], dim=1)
    return 0.5 * (F.cross_entropy(rows, target) + F.cross_entropy(cols, target))


def mil_nce_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.07,
                 groups: torch.Tensor | None = None,
                 queue: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Symmetric MIL-NCE: x (B, D) against a bag of K positives y (B, K, D), L2-normalised.

    x -> y: -log( sum_k e^{s(x_i, y_ik)} / sum_{j,k} e^{s(x_i, y_jk)} ).
    y -> x: for each bag, -log( sum_k e^{s(y_ik, x_i)} / sum_k sum_j e^{s(y_ik, x_j)} ).
    With K = 1 both reduce to the two directions of `nce_loss`. `groups` (B,): j with the same id as
    i (j != i) leaves both sums, as in `nce_loss`. `queue` (x_q (Q, D), y_q (Q, K, D)), normalised
    constants: past videos and their bags, added to the x -> y sum (every caption of every queued
    bag) and to the y -> x sum (every queued video).
    """
    k = y.shape[1]
    x = gather_with_grad(F.normalize(x, dim=-1))
    y = gather_with_grad(F.normalize(y, dim=-1))
    n = x.shape[0]
    sim = torch.einsum("id,jkd->ijk", x, y) / temperature        # (N, N, K)
    masked = same_group(groups)
    if masked is not None:
        sim = sim.masked_fill(masked[:, :, None], float("-inf"))
    # The diagonal as a view: boolean-mask indexing would read the mask's count back to the host.
    positives = torch.diagonal(sim, dim1=0, dim2=1).t()            # (N, K)
    to_y, to_x = sim.reshape(n, n * k), sim.permute(1, 2, 0).reshape(n, k * n)
    # y -> x: bag i's captions against every video j; sim[j, i, k] laid out as [i, (k, j)].
    if queue is not None:
        x_q, y_q = queue
        to_y = torch.cat([to_y, torch.einsum("id,qkd->iqk", x, y_q).reshape(n, -1) / temperature], dim=1)
        to_x = torch.cat([to_x, torch.einsum("ikd,qd->ikq", y, x_q).reshape(n, -1) / temperature], dim=1)
    x_to_y = torch.logsumexp(to_y, dim=1) - torch.logsumexp(positives, dim=1)
    y_to_x = torch.logsumexp(to_x, dim=1) - torch.logsumexp(positives, dim=1)
    return 0.5 * (x_to_y.mean() + y_to_x.mean())


def _bag(y: torch.Tensor) -> torch.Tensor:
    return y[:, None] if y.dim() == 2 else y


def asymmetric_nce_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.07,
                        groups: torch.Tensor | None = None) -> torch.Tensor:
    """The official VATT code's AsymmetricNCE (its default for the FAC model): x (B, D) against a
    bag of K positives y (B, K, D) or one (B, D), L2-normalised, with one joint denominator.

    For row i of the global batch: loss_i = logsumexp over {s(x_i, y_jk)} ∪ {s(x_j, y_ik)} (all j,
    k: both directions in one softmax, so the positives appear twice) minus logsumexp_k s(x_i, y_ik),
    similarities divided by the temperature; the loss is the mean over rows. `groups`: as in
    `nce_loss`, same-video rows leave both halves.
    """
    y = _bag(y)
    k = y.shape[1]
    x = gather_with_grad(F.normalize(x, dim=-1))
    y = gather_with_grad(F.normalize(y, dim=-1))
    n = x.shape[0]
    sim = torch.einsum("id,jkd->ijk", x, y) / temperature        # (N, N, K): s(x_i, y_jk)
    masked = same_group(groups)
    if masked is not None:
        sim = sim.masked_fill(masked[:, :, None], float("-inf"))
    positives = torch.diagonal(sim, dim1=0, dim2=1).t()            # (N, K)
    # Row i: x_i against every bag, then every x_j against bag i (sim[j, i, k] laid out as [i, (j, k)]).
    joint = torch.cat([sim.reshape(n, n * k), sim.transpose(0, 1).reshape(n, n * k)], dim=1)
    return (torch.logsumexp(joint, dim=1) - torch.logsumexp(positives, dim=1)).mean()


def sigmoid_loss(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                 groups: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023) over the global batch: x (B, D) against y
    (B, D), or a bag of K positives (B, K, D) each of which is a positive pair with its x row.

    loss = -(1/N) sum_i sum_{j,k} log sigmoid(z_ijk (exp(t') x_i . y_jk + b)), z = +1 for the
    positives (j = i) and -1 for every other pair; rows L2-normalised; t' (log_scale) and b (bias)
    learnable scalars. Negatives are all-gathered across ranks, which is the same sum SigLIP's
    chunked ring computes. `groups`: same-video pairs (j != i) leave the sum.
    """
    y = _bag(y)
    x = gather_with_grad(F.normalize(x, dim=-1))
    y = gather_with_grad(F.normalize(y, dim=-1))
    n = x.shape[0]
    logits = torch.einsum("id,jkd->ijk", x, y) * log_scale.exp().reshape(()) + bias.reshape(())
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)[:, :, None]
    terms = F.logsigmoid(torch.where(eye, logits, -logits))
    masked = same_group(groups)
    if masked is not None:
        terms = terms.masked_fill(masked[:, :, None], 0.0)
    return -terms.sum() / n


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020) between two views (B, D) of the same clips, L2-normalised,
    over the global batch: each of the 2N embeddings has its other view as the positive and the
    other 2N - 2 as negatives (itself excluded); the mean cross-entropy over all 2N."""
    z1 = gather_with_grad(F.normalize(z1, dim=-1))
    z2 = gather_with_grad(F.normalize(z2, dim=-1))
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    logits = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(logits.device)
    return F.cross_entropy(logits, target)


def negatives_per_positive(micro_batch: int, world: int, same_video: int = 0, queued: int = 0) -> int:
    """Negatives each positive pair is contrasted with (per direction).

    Negatives come from one forward pass across ranks, so under gradient accumulation they are
    micro_batch x world - 1, not the optimizer batch; `same_video` other windows of the positive's
    own video (repeated sampling, masked out) are not among them; `queued` past embeddings (a full
    vatt.negatives=queue) are.
    """
    return micro_batch * world - 1 - same_video + queued


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019; DINOv2's regulariser): -mean log distance of each L2-normalised
    row to its nearest other row, which spreads the features of a batch over the sphere."""
    x = F.normalize(x, dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
    return -torch.log((x - x[nearest]).norm(dim=-1) + eps).mean()


class DINOLoss(nn.Module):
    """DINO's cross-entropy between the sharpened, centred teacher and the student.

    Official constructor and call: forward(student_output, teacher_output, epoch). The centre is
    *not* changed by forward: forward stages the teacher outputs, and `update_center()` applies the
    EMA (all-reduced across ranks) once per optimizer step, over every micro-batch staged since.
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.out_dim = out_dim
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.nepochs = nepochs
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("_staged_sum", torch.zeros(1, out_dim), persistent=False)
        self._staged_rows = 0  # on the host: whether anything is staged needs no device read

    def teacher_temp_at(self, epoch: float) -> float:
        """Linear warm-up over warmup_teacher_temp_epochs (as DINO's linspace), then constant.

        Fractional epochs interpolate, so short runs measured in steps get a smooth schedule.
        """
        w = self.warmup_teacher_temp_epochs
        if epoch >= w:
            return self.teacher_temp
        if w == 1:
            return self.warmup_teacher_temp
        frac = min(epoch / (w - 1), 1.0)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * frac

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: float) -> torch.Tensor:
        student = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp_at(epoch)
        teacher = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total, pairs = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:
                    continue  # the same view seen by both networks is not a pair
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                pairs += 1
        self.stage_center(teacher_output)
        return total / pairs

    @torch.no_grad()
    def stage_center(self, teacher_output: torch.Tensor) -> None:
        self._staged_sum += teacher_output.detach().float().sum(dim=0, keepdim=True)
        self._staged_rows += teacher_output.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor | None = None) -> None:
        """center <- m * center + (1 - m) * mean teacher output over all staged rows of all ranks.

        Called with no argument: forward staged the teacher outputs of every micro-batch since the
        last update, so under gradient accumulation the centre moves once per optimizer step, on
        the whole optimizer batch (the official loss updates it inside forward, once per call).
        The official call form, `update_center(teacher_output)`, is accepted too: the centre then
        moves on that output alone, and what forward staged is dropped (not counted twice)."""
        if teacher_output is not None:
            self._staged_sum.zero_()
            self._staged_rows = 0
            self.stage_center(teacher_output)
        if self._staged_rows == 0:
            return
        count = self._staged_sum.new_full((1,), float(self._staged_rows))  # a device fill, not a copy
        total = all_reduce_(torch.cat([self._staged_sum.flatten(), count]))
        batch_center = (total[:-1] / total[-1]).reshape(1, -1).to(self.center.dtype)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        self._staged_sum.zero_()
        self._staged_rows = 0


def cosine_schedule(start: float, end: float, step: float, total: float, warmup: float = 0,
                    warmup_start: float = 0.0, linspace: bool = False) -> float:
    """Linear warm-up from warmup_start to start over `warmup` steps, then cosine from start to end.

    The warm-up's step s gives warmup_start + (start - warmup_start) * s / warmup, which reaches
    `start` at step `warmup` (the first cosine step); with linspace, s / (warmup - 1) as DINO's
    np.linspace(warmup_start, start, warmup), which reaches it on the warm-up's last step."""
    if warmup > 0 and step < warmup:
        span = warmup - 1 if linspace else warmup
        return start if span <= 0 else warmup_start + (start - warmup_start) * step / span
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


