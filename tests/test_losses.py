"""Losses: DINOLoss against a hand-computed case, NCE / MIL-NCE as cross-entropy over similarities."""
import math

import pytest
import torch
import torch.nn.functional as F

from scaling.losses import (
    DINOLoss,
    asymmetric_nce_loss,
    cosine_schedule,
    koleo_loss,
    mil_nce_loss,
    nce_loss,
    negatives_per_positive,
    nt_xent_loss,
    sigmoid_loss,
)


def test_dino_loss_matches_hand_computed_case():
    loss_fn = DINOLoss(out_dim=2, ncrops=3, warmup_teacher_temp=0.04, teacher_temp=0.04,
                       warmup_teacher_temp_epochs=0, nepochs=10, student_temp=0.1, center_momentum=0.9)
    teacher = torch.tensor([[0.04, 0.0], [0.0, 0.04]])        # 2 global views, batch of 1
    student = torch.tensor([[0.1, 0.0], [0.0, 0.0], [0.0, 0.1]])  # 3 views
    # teacher probs: softmax([1, 0]) = [p, 1-p]; student log-probs: -softplus(-1), -softplus(1), log 1/2
    p = 1 / (1 + math.exp(-1))
    a, b = math.log1p(math.exp(-1)), math.log1p(math.e)
    pairs = [math.log(2),                 # teacher view 1 vs student view 2
             p * b + (1 - p) * a,         # teacher view 1 vs student view 3
             (1 - p) * a + p * b,         # teacher view 2 vs student view 1
             (1 - p) * b + p * a]         # teacher view 2 vs student view 3
    got = loss_fn(student, teacher, epoch=0)
    assert got.item() == pytest.approx(sum(pairs) / 4, rel=1e-6)
    # forward leaves the centre alone; update_center applies the EMA of the teacher mean
    assert torch.equal(loss_fn.center, torch.zeros(1, 2))
    loss_fn.update_center()
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.1 * 0.02, 0.1 * 0.02]]))


def test_dino_centre_is_subtracted_from_teacher_logits():
    loss_fn = DINOLoss(4, 4, 0.04, 0.04, 0, 10)
    s, t = torch.randn(8, 4), torch.randn(4, 4)
    shift = torch.randn(1, 4)
    base = loss_fn(s, t, 0)
    loss_fn.center.copy_(shift)
    torch.testing.assert_close(loss_fn(s, t + shift, 0), base)


def test_dino_centre_update_over_micro_batches_equals_one_update_on_the_optimizer_batch():
    t = torch.randn(16, 8)
    s = torch.randn(32, 8)
    accumulated, whole = DINOLoss(8, 4, 0.04, 0.04, 0, 10), DINOLoss(8, 4, 0.04, 0.04, 0, 10)
    accumulated.center.fill_(0.5), whole.center.fill_(0.5)
    for tc, sc in zip(t.view(2, 2, 4, 8).unbind(1), s.view(4, 2, 4, 8).unbind(1)):  # 2 micro-batches of 4 clips
        accumulated(sc.reshape(-1, 8), tc.reshape(-1, 8), 0)
    accumulated.update_center()
    whole(s, t, 0)
    whole.update_center()
    torch.testing.assert_close(accumulated.center, whole.center)
    torch.testing.assert_close(whole.center, 0.9 * 0.5 + 0.1 * t.mean(0, keepdim=True))


def test_update_center_also_takes_the_official_call_form_with_the_teacher_output():
    """The official DINOLoss.update_center(teacher_output) updates the centre from that batch; ours
    takes no argument and applies what forward staged. Given the teacher output, it uses that
    alone (what was staged is dropped, so the batch is not counted twice)."""
    t = torch.randn(6, 8)
    official, staged = DINOLoss(8, 4, 0.04, 0.04, 0, 10), DINOLoss(8, 4, 0.04, 0.04, 0, 10)
    official(torch.randn(12, 8), t, 0)           # stages t
    official.update_center(t)                     # the official form: t once, not twice
    staged(torch.randn(12, 8), t, 0)
    staged.update_center()
    torch.testing.assert_close(official.center, staged.center)
    torch.testing.assert_close(official.center, 0.1 * t.mean(0, keepdim=True))
    fresh = DINOLoss(8, 4, 0.04, 0.04, 0, 10)
    fresh.update_center(2 * t)                   # nothing staged before: the given output alone
    torch.testing.assert_close(fresh.center, 0.2 * t.mean(0, keepdim=True))
    official.update_center()                     # nothing staged any more: the centre stays
    torch.testing.assert_close(official.center, staged.center)


def test_teacher_temperature_warms_up_like_dinos_linspace():
    loss_fn = DINOLoss(4, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4, nepochs=10)
    official = [0.04, 0.05, 0.06, 0.07, 0.07, 0.07]  # np.linspace(0.04, 0.07, 4) then constant
    assert [round(loss_fn.teacher_temp_at(e), 6) for e in range(6)] == official
    assert loss_fn.teacher_temp_at(0.5) == pytest.approx(0.045)


def _normed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_nce_equals_cross_entropy_over_the_similarity_matrix():
    x, y = _normed(6, 5), _normed(6, 5, seed=1)
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).t() / 0.07
    target = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    torch.testing.assert_close(nce_loss(x, y, 0.07), expected)


def test_mil_nce_reduces_to_nce_when_k_is_1():
    x, y = _normed(5, 8), _normed(5, 8, seed=2)
    torch.testing.assert_close(mil_nce_loss(x, y.unsqueeze(1), 0.07), nce_loss(x, y, 0.07))


def test_mil_nce_matches_its_definition_with_several_positives():
    b, k, t = 3, 2, 0.1
    x, y = F.normalize(_normed(b, 4), dim=-1), F.normalize(_normed(b, k, 4, seed=3), dim=-1)
    s = lambda i, j, kk: math.exp(float(x[i] @ y[j, kk]) / t)  # noqa: E731
    x_to_y = [-math.log(sum(s(i, i, kk) for kk in range(k)) / sum(s(i, j, kk) for j in range(b) for kk in range(k)))
              for i in range(b)]
    y_to_x = [-math.log(sum(s(i, i, kk) for kk in range(k)) / sum(s(j, i, kk) for j in range(b) for kk in range(k)))
              for i in range(b)]
    expected = 0.5 * (sum(x_to_y) / b + sum(y_to_x) / b)
    assert mil_nce_loss(x, y, t).item() == pytest.approx(expected, rel=1e-5)


def test_negatives_are_the_micro_batch_across_ranks_not_the_optimizer_batch():
    assert negatives_per_positive(micro_batch=32, world=4) == 127
    assert negatives_per_positive(micro_batch=32, world=4, same_video=3) == 124  # 4 windows per video, masked


def test_windows_of_one_video_are_left_out_of_each_others_negatives():
    b, k, t = 4, 2, 0.1
    groups = torch.tensor([7, 7, 3, 3])  # two videos, two windows each
    x, y = F.normalize(_normed(b, 5), dim=-1), F.normalize(_normed(b, 5, seed=1), dim=-1)
    yk = F.normalize(_normed(b, k, 5, seed=4), dim=-1)
    kept = lambda i: [j for j in range(b) if j == i or groups[j] != groups[i]]  # noqa: E731
    s = lambda i, j: math.exp(float(x[i] @ y[j]) / t)  # noqa: E731
    nce = 0.5 * (sum(-math.log(s(i, i) / sum(s(i, j) for j in kept(i))) for i in range(b))
                 + sum(-math.log(s(i, i) / sum(s(j, i) for j in kept(i))) for i in range(b))) / b
    assert nce_loss(x, y, t, groups).item() == pytest.approx(nce, rel=1e-5)
    m = lambda i, j, kk: math.exp(float(x[i] @ yk[j, kk]) / t)  # noqa: E731
    pos = lambda i: sum(m(i, i, kk) for kk in range(k))  # noqa: E731
    mil = 0.5 * (sum(-math.log(pos(i) / sum(m(i, j, kk) for j in kept(i) for kk in range(k))) for i in range(b))
                 + sum(-math.log(pos(i) / sum(m(j, i, kk) for j in kept(i) for kk in range(k))) for i in range(b))) / b
    assert mil_nce_loss(x, yk, t, groups).item() == pytest.approx(mil, rel=1e-5)
    # Distinct ids mask nothing; and masking changes the loss here.
    torch.testing.assert_close(nce_loss(x, y, t, torch.arange(b)), nce_loss(x, y, t))
    torch.testing.assert_close(mil_nce_loss(x, yk, t, torch.arange(b)), mil_nce_loss(x, yk, t))
    assert abs(nce_loss(x, y, t, groups).item() - nce_loss(x, y, t).item()) > 1e-3


def test_the_linspace_warm_up_reaches_the_peak_on_its_last_step_as_dino():
    """DINO's cosine_scheduler warms up with np.linspace(start, peak, warmup): the peak on warm-up
    step warmup - 1, one step earlier than step / warmup; then the cosine over the remaining steps."""
    import numpy as np

    warmup, total, peak, end = 10, 100, 1.0, 0.01
    iters = np.arange(total - warmup)
    official = np.concatenate([np.linspace(0.0, peak, warmup),
                               end + 0.5 * (peak - end) * (1 + np.cos(np.pi * iters / len(iters)))])
    ours = [cosine_schedule(peak, end, s, total, warmup, linspace=True) for s in range(total)]
    np.testing.assert_allclose(ours, official, rtol=1e-12, atol=1e-15)
    assert cosine_schedule(peak, end, warmup - 1, total, warmup) < peak  # the step / warmup form
    assert cosine_schedule(peak, end, 0, total, 1, linspace=True) == peak  # one warm-up step: the peak


def test_cosine_schedule_warms_up_then_decays_to_the_end_value():
    assert cosine_schedule(1.0, 0.0, 0, 100, warmup=10) == 0.0
    assert cosine_schedule(1.0, 0.0, 5, 100, warmup=10) == pytest.approx(0.5)
    assert cosine_schedule(1.0, 0.0, 10, 100, warmup=10) == pytest.approx(1.0)
    assert cosine_schedule(1.0, 0.0, 55, 100, warmup=10) == pytest.approx(0.5)
    assert cosine_schedule(0.996, 1.0, 100, 100) == pytest.approx(1.0)


def test_koleo_is_minus_the_mean_log_distance_to_the_nearest_other_row():
    # Rows (after L2 normalisation) at angles 0, 90 and 180 degrees, the first given at length 2.
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    # Nearest other row: 0 -> 1 and 2 -> 1 (distance sqrt 2); 1 -> 0 (first of the tie, sqrt 2).
    expected = -math.log(math.sqrt(2.0))
    loss = koleo_loss(x)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Spreading lowers it: two rows close together score higher than the same rows far apart.
    close = koleo_loss(torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]]))
    far = koleo_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert close > far


def test_asymmetric_nce_matches_the_official_joint_denominator_by_hand():
    """VATT's AsymmetricNCE: row i's denominator holds x_i against every y_jk and every x_j against
    y_ik (positives twice); numerator the sum over i's own K positives."""
    b, k, t = 3, 2, 0.1
    x, y = F.normalize(_normed(b, 4), dim=-1), F.normalize(_normed(b, k, 4, seed=3), dim=-1)
    s = lambda i, j, kk: math.exp(float(x[i] @ y[j, kk]) / t)  # noqa: E731
    rows = []
    for i in range(b):
        joint = sum(s(i, j, kk) for j in range(b) for kk in range(k)) + sum(s(j, i, kk) for j in range(b) for kk in range(k))
        rows.append(-math.log(sum(s(i, i, kk) for kk in range(k)) / joint))
    assert asymmetric_nce_loss(x, y, t).item() == pytest.approx(sum(rows) / b, rel=1e-5)
    # One positive: (B, D) and (B, 1, D) are the same loss; and it differs from the symmetric NCE.
    y1 = y[:, 0]
    torch.testing.assert_close(asymmetric_nce_loss(x, y1, t), asymmetric_nce_loss(x, y1[:, None], t))
    assert abs(asymmetric_nce_loss(x, y1, t).item() - nce_loss(x, y1, t).item()) > 1e-3
    groups = torch.tensor([5, 5, 2])
    kept = lambda i: [j for j in range(b) if j == i or groups[j] != groups[i]]  # noqa: E731
    masked = [-math.log(sum(s(i, i, kk) for kk in range(k))
                        / (sum(s(i, j, kk) for j in kept(i) for kk in range(k))
                           + sum(s(j, i, kk) for j in kept(i) for kk in range(k)))) for i in range(b)]
    assert asymmetric_nce_loss(x, y, t, groups).item() == pytest.approx(sum(masked) / b, rel=1e-5)


def test_sigmoid_loss_matches_siglip_by_hand_with_its_initialisation():
    from scaling.models.vatt import SIGMOID_BIAS_INIT, SIGMOID_LOG_SCALE_INIT

    assert math.log(10) == pytest.approx(SIGMOID_LOG_SCALE_INIT) and SIGMOID_BIAS_INIT == -10
    b, k = 3, 2
    x, y = F.normalize(_normed(b, 4), dim=-1), F.normalize(_normed(b, k, 4, seed=3), dim=-1)
    log_scale, bias = torch.tensor([0.7]), torch.tensor([-1.5])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    term = lambda i, j, kk: math.log(sig((1 if i == j else -1) * (math.exp(0.7) * float(x[i] @ y[j, kk]) - 1.5)))  # noqa: E731
    expected = -sum(term(i, j, kk) for i in range(b) for j in range(b) for kk in range(k)) / b
    assert sigmoid_loss(x, y, log_scale, bias).item() == pytest.approx(expected, rel=1e-5)
    y1 = y[:, 0]
    expected1 = -sum(term(i, j, 0) for i in range(b) for j in range(b)) / b
    assert sigmoid_loss(x, y1, log_scale, bias).item() == pytest.approx(expected1, rel=1e-5)
    groups = torch.tensor([5, 5, 2])
    kept = [(i, j) for i in range(b) for j in range(b) if i == j or groups[i] != groups[j]]
    masked = -sum(term(i, j, kk) for i, j in kept for kk in range(k)) / b
    assert sigmoid_loss(x, y, log_scale, bias, groups).item() == pytest.approx(masked, rel=1e-5)


def test_nt_xent_matches_simclr_by_hand():
    """SimCLR's NT-Xent: each of the 2B views against the other 2B - 1 (itself excluded), its other
    view the positive; the mean over all 2B."""
    b, t = 3, 0.1
    z1, z2 = F.normalize(_normed(b, 4), dim=-1), F.normalize(_normed(b, 4, seed=5), dim=-1)
    z = torch.cat([z1, z2])
    s = lambda i, j: math.exp(float(z[i] @ z[j]) / t)  # noqa: E731
    rows = [-math.log(s(i, (i + b) % (2 * b)) / sum(s(i, j) for j in range(2 * b) if j != i)) for i in range(2 * b)]
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(sum(rows) / (2 * b), rel=1e-5)
