"""DINO: head, multi-crop wrapper, student/teacher pair, and video/image inputs from a RunConfig."""
import copy

import torch

from scaling.config import RunConfig
from scaling.models import DINO, DINOHead, MultiCropWrapper, build_model, crop_geometry
from scaling.models.vatt import video_encoder


def test_head_is_mlp_to_bottleneck_then_normalised_weight_normed_layer():
    head = DINOHead(64, 1000, hidden_dim=128, bottleneck_dim=32)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [128, 128, 32]
    assert head.last_layer.weight_v.shape == (1000, 32) and head.last_layer.weight_g.shape == (1000, 1)
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer: gain fixed at 1
    assert DINOHead(64, 10, norm_last_layer=False).last_layer.weight_g.requires_grad
    x = torch.randn(5, 64)
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    w = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ w.t())
    assert set(head.state_dict()) >= {"last_layer.weight_g", "last_layer.weight_v", "mlp.0.weight", "mlp.4.bias"}


def test_multicrop_wrapper_runs_the_backbone_once_per_resolution():
    backbone = video_encoder("nano", 8, 64)
    calls = []
    backbone.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    wrapper = MultiCropWrapper(backbone, DINOHead(backbone.width, 16, 32, 8))
    crops = [torch.rand(2, 3, 8, 64, 64)] * 2 + [torch.rand(2, 3, 4, 32, 32)] * 3
    out = wrapper(crops)
    assert out.shape == (10, 16)
    assert calls == [(4, 3, 8, 64, 64), (6, 3, 4, 32, 32)]


def test_teacher_starts_equal_has_no_gradients_and_follows_the_ema():
    model = DINO(video_encoder("nano", 8, 64, drop_rate=0.5, drop_path=0.1), 128, out_dim=16, hidden_dim=32,
                 bottleneck_dim=8)
    for ps, pt in zip(model.student.parameters(), model.teacher.parameters()):
        assert torch.equal(ps, pt) and not pt.requires_grad
    model.train()
    assert model.student.training and not model.teacher.training
    assert model.teacher.backbone.drop_rate == 0.0  # the teacher always sees every token
    before = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.9)
    for b, ps, pt in zip(before, model.student.parameters(), model.teacher.parameters()):
        torch.testing.assert_close(pt, 0.9 * b + 0.1 * ps)


def test_teacher_sees_only_global_crops():
    cfg = RunConfig.load(None, ["method=dino", "steps=1", "dino.out_dim=32", "dino.hidden_dim=32", "dino.local_crops=2"])
    model = build_model(cfg)
    geo = crop_geometry(cfg)
    crops = [torch.rand(3, 3, 8, 64, 64)] * 2 + [torch.rand(3, 3, geo["local_frames"], geo["local_resolution"],
                                                            geo["local_resolution"])] * 2
    student, teacher = model(crops)
    assert student.shape == (12, 32) and teacher.shape == (6, 32)
    assert not teacher.requires_grad and student.requires_grad


def test_video_dino_uses_the_same_backbone_as_vatt():
    dino = build_model(RunConfig.load(None, ["method=dino", "steps=1", "dino.out_dim=32"]))
    vatt = build_model(RunConfig.load(None, ["method=vatt", "steps=1"]))
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(dino.student.backbone) == shapes(vatt.video)


def test_image_dino_runs_on_frames_with_a_patch_vit():
    cfg = RunConfig.load(None, ["method=dino", "steps=1", "dino.input=image", "dino.patch_size=8",
                                "dino.out_dim=32", "dino.hidden_dim=32", "dino.local_crops=2"])
    model = build_model(cfg)
    geo = crop_geometry(cfg)
    assert geo["local_resolution"] % 8 == 0
    crops = [torch.rand(2, 3, 64, 64)] * 2 + [torch.rand(2, 3, geo["local_resolution"], geo["local_resolution"])] * 2
    student, teacher = model(crops)
    assert student.shape == (8, 32) and teacher.shape == (4, 32)
    assert model.encode(torch.rand(2, 3, 64, 64)).shape == (2, 128)


def _reference_ema(student, teacher, shadow, momentum):
    """The per-parameter EMA update_teacher ran before it used foreach ops (the pinned formula)."""
    with torch.no_grad():
        for i, (ps, pt) in enumerate(zip(student.parameters(), teacher.parameters())):
            if pt.dtype == torch.float32:
                pt.data.mul_(momentum).add_(ps.data.float(), alpha=1.0 - momentum)
                continue
            if i not in shadow:
                shadow[i] = pt.data.float()
            shadow[i].mul_(momentum).add_(ps.data.float(), alpha=1.0 - momentum)
            pt.data.copy_(shadow[i])


def _small_dino():
    torch.manual_seed(0)
    return DINO(video_encoder("nano", 8, 64), 128, out_dim=16, hidden_dim=32, bottleneck_dim=8)


def test_foreach_teacher_ema_equals_the_per_parameter_update_bit_for_bit_in_fp32_and_bf16():
    for dtype in (torch.float32, torch.bfloat16):
        model = _small_dino().to(dtype)
        ref_student, ref_teacher = copy.deepcopy(model.student), copy.deepcopy(model.teacher)
        ref_shadow: dict[int, torch.Tensor] = {}
        for step, momentum in enumerate((0.9, 0.996, 0.9995)):
            torch.manual_seed(step + 1)
            with torch.no_grad():  # the student moves by an optimizer step's worth
                for ps, rs in zip(model.student.parameters(), ref_student.parameters()):
                    ps.add_(0.01 * torch.randn_like(ps))
                    rs.copy_(ps)
            model.update_teacher(momentum)
            _reference_ema(ref_student, ref_teacher, ref_shadow, momentum)
        for pt, rt in zip(model.teacher.parameters(), ref_teacher.parameters()):
            assert pt.dtype == dtype and torch.equal(pt, rt)
        if dtype == torch.float32:
            assert model.teacher_shadow_state() == {}
        else:
            # the fp32 shadow, keyed by parameter index (the checkpoint format), is the reference's
            state = model.teacher_shadow_state()
            assert set(state) == set(ref_shadow) == set(range(len(list(model.teacher.parameters()))))
            assert all(state[i].dtype == torch.float32 and torch.equal(state[i], ref_shadow[i]) for i in state)
            # and it holds what the bf16 teacher rounds away
            assert any(not torch.equal(state[i], pt.float()) for i, pt in enumerate(model.teacher.parameters()))
