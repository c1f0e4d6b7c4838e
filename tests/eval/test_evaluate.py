"""The evaluation protocol: it leaves the run's RNG streams untouched (so a run trains the same with
or without its random-init and intermediate evaluations), runs VATT's video encoder once per batch,
reads its data with worker processes without changing a number, and gathers features as tensors
(padded shards on every rank give exactly the one-process result)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from clitools import TINY

import scaling.eval.evaluate as evaluate_module
from scaling.config import RunConfig
from scaling.data.loader import build_dataset
from scaling.eval.evaluate import embed, evaluate
from scaling.models import build_model
from scaling.objectives import build_objective

WORLD = 2
UNEVEN_SIZES = (7, 13)  # neither splits evenly over 2 ranks, so the padding's repeats must go


def _vatt(*overrides, seed=0):
    cfg = RunConfig.load(None, [*TINY, "method=vatt", *overrides])
    torch.manual_seed(seed)
    return cfg, build_model(cfg)


def test_evaluation_does_not_consume_the_global_torch_rng():
    cfg = RunConfig.load(None, [*TINY, "method=vatt"])
    model = build_model(cfg)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    metrics = evaluate(cfg, model, build_objective(cfg))
    assert "knn_top1" in metrics and "linear_top1" in metrics
    assert torch.equal(torch.rand(4), expected)


def test_vatt_evaluation_runs_the_video_encoder_once_per_batch(monkeypatch):
    monkeypatch.setattr(evaluate_module, "EVAL_BATCH", 16)
    cfg, model = _vatt()
    calls = []
    model.video.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    metrics = evaluate(cfg, model, build_objective(cfg))
    # 64 train + 32 eval clips in batches of 16: 6 batches, one encoder pass each.
    assert calls == [16] * 6
    assert "v2t_r1" in metrics and "knn_top1" in metrics


def test_video_text_embeddings_from_the_encoded_feature_match_the_direct_call():
    cfg, model = _vatt()
    model.eval()
    batch = build_dataset(cfg.data, "eval").__getitems__(range(5))
    with torch.no_grad():
        direct = model.video_text_embeddings(batch["video"], batch["text"])
        derived = model.video_text_embeddings_from(model.encode_video(batch["video"]), batch["text"])
    for a, b in zip(direct, derived):
        assert torch.equal(a, b)


def test_worker_processes_do_not_change_the_results(monkeypatch):
    monkeypatch.setattr(evaluate_module, "EVAL_BATCH", 8)
    results = {}
    for workers in (0, 2):
        cfg, model = _vatt(f"data.num_workers={workers}")
        objective = build_objective(cfg)
        torch.manual_seed(7)
        results[workers] = (evaluate(cfg, model, objective),
                            embed(cfg, model, objective, build_dataset(cfg.data, "eval")))
        after = torch.rand(3)
        torch.manual_seed(7)
        # Even embed() alone (outside evaluate's fork_rng) leaves the global RNG alone with workers.
        assert torch.equal(after, torch.rand(3))
    (metrics0, feats0), (metrics2, feats2) = results[0], results[2]
    assert metrics0 == metrics2
    assert feats0.keys() == feats2.keys()
    for k in feats0:
        assert torch.equal(feats0[k], feats2[k]), k


def _no_object_gathers(*args, **kwargs):
    raise AssertionError("evaluation must gather tensors, not pickled objects")


def _embed_worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        dist.all_gather_object = _no_object_gathers
        evaluate_module.EVAL_BATCH = 3  # several batches per rank, the last one short
        out = {}
        for n in UNEVEN_SIZES:
            cfg, model = _vatt(f"data.eval_size={n}")
            out[n] = embed(cfg, model, build_objective(cfg, WORLD), build_dataset(cfg.data, "eval"))
        torch.save(out, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_embed_on_two_gloo_ranks_equals_one_process(tmp_path, monkeypatch):
    mp.spawn(_embed_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=WORLD, join=True)
    monkeypatch.setattr(evaluate_module, "EVAL_BATCH", 3)
    for n in UNEVEN_SIZES:
        cfg, model = _vatt(f"data.eval_size={n}")
        expected = embed(cfg, model, build_objective(cfg), build_dataset(cfg.data, "eval"))
        assert torch.equal(expected["index"], torch.arange(n))
        assert set(expected) == {"feats", "labels", "index", "video_vt", "text_vt"}
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"out.{rank}")[n]
            assert set(got) == set(expected)
            # Every clip once, in index order, on every rank.
            assert torch.equal(got["index"], expected["index"])
            assert torch.equal(got["labels"], expected["labels"])
            for k in ("feats", "video_vt", "text_vt"):
                assert got[k].shape == expected[k].shape, k
                torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, world", [(7, 2), (13, 2), (2, 4), (13, 3)])
def test_shards_are_equal_and_cover_every_clip(n, world):
    shards = [evaluate_module._shard(n, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert sorted(set(i for s in shards for i in s)) == list(range(n))


def test_a_video_of_several_views_is_embedded_as_the_mean_of_its_views(tmp_path):
    import json

    from scaling.data.encode import write_video

    for k in range(3):
        write_video(tmp_path / f"v{k}.mp4", seconds=3 + k, fps=10, size=(48, 32), audio=False)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video": f"v{k}.mp4", "label": k}) + "\n" for k in range(3)))
    data = ["data.source=manifest", f"data.path={manifest}", f"data.eval_path={manifest}", "data.frames=4",
            "data.resolution=32", "data.train_size=3", "data.decoder=pyav"]
    cfg = RunConfig.load(None, [*TINY, *data, "method=dino", "eval.temporal_views=3", "eval.spatial_views=2"])
    torch.manual_seed(0)
    model, objective = build_model(cfg), build_objective(cfg)
    views = build_dataset(cfg.data, "eval", modalities=("video",), views=(3, 2))
    pooled = embed(cfg, model, objective, views)
    assert pooled["feats"].shape[0] == 3 and pooled["index"].tolist() == [0, 1, 2]
    for k in range(3):
        clips = views[k]["video"]  # (6, 3, T, R, R)
        single = torch.stack([objective.encode(model, evaluate_module.eval_input(cfg, {"video": v[None]}, "cpu"))[0]
                              for v in clips])
        assert torch.allclose(pooled["feats"][k], single.mean(0), atol=1e-5)
        assert not torch.allclose(single[0], single[-1], atol=1e-3)  # the views do differ
