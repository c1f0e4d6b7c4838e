"""Benchmark 7: decoding real files. torchcodec against PyAV on generated H.264/AAC mp4s, side by side
in one process:

1. clips/s per core: `ManifestClips.load` (the training path: random window, decode, resize, centre
   crop, audio, captions) over a manifest of Kinetics-like files (320x240, 25 fps, 10 s, x264 with
   ffmpeg's default GOP, AAC mono 44.1 kHz), one torch thread, decoder threads 1, at the demo
   geometry (DataConfig's defaults) and at VATT's (32 frames at 10 fps, 224^2, 3.2 s of 48 kHz
   audio). Every round gives each case new windows, the same for both decoders (a window is a
   function of (seed, epoch, index)); the cases are timed interleaved, in this process's CPU seconds
   (what a core spends, however busy the machine), and the decoders' ratio is the median of the
   per-round ratios. Opening a file is timed on its own too. A few more windows are decoded by both and compared: the frame
   picked (read from the frame-index band `write_video(pattern="texture")` draws) against the one
   shown at each instant, pixels, and audio (its lag, in samples at the target rate, and the
   difference once aligned: the two resample from differently anchored sample grids).
2. seek cost: one long file (64 s, keyframe every 2 s); a window 0.5 s after the first keyframe and
   one 0.5 s after the last keyframe it fits behind, each a manifest segment exactly one window long
   (so `ManifestClips.load` decodes exactly it); the median over rounds of end / start (CPU seconds).
3. cores per GPU for VATT-Base at 32x224^2, DropToken 0.5, at 40% of H100 bf16 dense peak:
   GPU clips/s = 0.4 x 989e12 / flops_per_sample (`scaling describe`: training FLOPs per sample),
   cores = GPU clips/s / clips/s per core of the faster decoder at VATT's geometry. Decoding only:
   the workers' augmentation is not in it.
4. torchcodec's CUDA decoder (NVDEC) against the same code on the CPU, video only, VATT geometry,
   when a GPU is there.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import data_budget
from benchmarks.core import Result, check_scale, interleaved
from scaling.data.budget import PLANNED_MFU, PLANNED_PEAK_TFLOPS

NAME = "data_real"
TITLE = "Real files: torchcodec vs PyAV clips/s per core, seek cost, cores per GPU"
SEEK_GOAL = 1.2
GOAL = (f"both decoders give equal output; seek cost end/start <= {SEEK_GOAL} at the same distance from the "
        f"keyframe, for both; some named configuration needs <= {data_budget.CORES_GOAL} CPU cores per GPU for "
        "VATT-Base, DropToken 0.5, 32x224^2 at 40% H100 MFU (clips/s per core, the decoders' ratio, manifest vs "
        "shards: measured)")
DECODERS = ("torchcodec", "pyav")
MFU, PEAK_FLOPS = PLANNED_MFU, PLANNED_PEAK_TFLOPS * 1e12  # 40% of H100 SXM bf16 dense peak
VATT_BASE = ["method=vatt", "size=base", "drop_rate=0.5", "data.frames=32", "data.resolution=224", "data.fps=10",
             "data.audio_samples=153600", "data.sample_rate=48000", "steps=1"]
# Equal output: the same frames, pixels within these levels (the decoders run different FFmpeg
# versions' colour conversion), audio within a sample's lag and this much once aligned.
MAX_PIXEL_DIFF, MEAN_PIXEL_DIFF, MAX_AUDIO_LAG, MAX_AUDIO_DIFF = 8, 0.5, 1.0, 0.02

COLUMNS = ["decoder", "geometry", "case", "clips/s per core", "wall clips/s", "torchcodec / PyAV", "frames same", "max Δ px",
           "audio lag (samples)", "audio Δ aligned", "equal output", "seek start s", "seek end s",
           "seek end / start", f"seek <= {SEEK_GOAL}", "cores per GPU", "CUDA clips/s", "CUDA / CPU"]


def geometries(scale: str) -> dict[str, dict[str, Any]]:
    from scaling.config import DataConfig

    d = DataConfig()
    demo = dict(frames=d.frames, fps=d.fps, resolution=d.resolution, audio_samples=d.audio_samples,
                sample_rate=d.sample_rate)
    vatt = dict(frames=32, fps=10.0, resolution=224, audio_samples=153600, sample_rate=48000)
    if scale == "smoke":
        demo, vatt = dict(demo, frames=4, resolution=32), dict(vatt, frames=8, resolution=48, audio_samples=19200)
    return {"demo": demo, "vatt": vatt}


def label(geometry: dict[str, Any]) -> str:
    return (f"{geometry['frames']}x{geometry['resolution']}^2 @ {geometry['fps']:g} fps, "
            f"{geometry['audio_samples'] / geometry['sample_rate']:g} s @ {geometry['sample_rate'] // 1000} kHz")


PLAN = {  # files, seconds, size, long file s, long keyint s, clips per timed call, rounds, seek rounds, checks
    "full": dict(files=8, seconds=10, size=(320, 240), long_s=64, keyint_s=2, batch=6, reps=20, seek_reps=15, checks=6),
    "smoke": dict(files=2, seconds=2, size=(64, 48), long_s=4, keyint_s=1, batch=1, reps=1, seek_reps=1, checks=1),
}
FPS, AUDIO_RATE, SEEK_OFFSET_S = 25, 44100, 0.5


# ----------------------------------------------------------------------------- corpus
def write_corpus(root: Path, plan: dict) -> dict[str, Any]:
    from scaling.data.encode import write_video

    lines = []
    for k in range(plan["files"]):
        name = f"clip{k}.mp4"
        write_video(root / name, seconds=plan["seconds"], fps=FPS, size=plan["size"], audio=True,
                    sample_rate=AUDIO_RATE, lossless=False, pattern="texture")
        lines.append({"video": name, "captions": [f"clip {k}"], "label": k % 4})
    (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_video(root / "long.mp4", seconds=plan["long_s"], fps=FPS, size=plan["size"], keyint=plan["keyint_s"] * FPS,
                audio=True, sample_rate=AUDIO_RATE, lossless=False, pattern="texture")
    return {"manifest": root / "train.jsonl", "long": root / "long.mp4",
            "videos": [root / line["video"] for line in lines]}


def stream_facts(path: Path) -> dict[str, Any]:
    """Bit rates and keyframe times of a file, from its packets."""
    import av

    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        keyframes, vbytes, abytes = [], 0, 0
        for packet in container.demux(video, audio):
            if packet.stream is video:
                vbytes += packet.size
                if packet.is_keyframe and packet.pts is not None:
                    keyframes.append(float(packet.pts * packet.time_base))
            else:
                abytes += packet.size
        seconds = float(video.duration * video.time_base)
        return {"seconds": seconds, "video_kbps": vbytes * 8 / seconds / 1e3, "audio_kbps": abytes * 8 / seconds / 1e3,
                "keyframes": sorted(keyframes), "profile": video.codec_context.profile}


def timed(cases: dict, reps: int, warmup: int = 1) -> dict:
    """Each case's CPU and wall seconds of every timed call, in round order (`interleaved`'s rounds).
    CPU seconds are this process's: what a core spends on the call, whatever else the machine runs."""
    cpu: dict = {k: [] for k in cases}
    wall: dict = {k: [] for k in cases}

    def wrap(key, fn):
        def run():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            wall[key].append(time.perf_counter() - w0)
            cpu[key].append(time.process_time() - c0)
        return run

    interleaved({k: wrap(k, fn) for k, fn in cases.items()}, reps=reps, warmup=warmup)
    return {k: {"cpu": cpu[k][warmup:], "wall": wall[k][warmup:]} for k in cases}


def paired(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """(median, min, max) over rounds of the per-round ratio (both cases ran the same work in a round)."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(ratios), min(ratios), max(ratios)


# ----------------------------------------------------------------------------- 1. clips/s and equal output
def datasets(manifest: Path, geometry: dict[str, Any]) -> dict[str, Any]:
    from scaling.data.files import ManifestClips

    return {d: ManifestClips(manifest, decoder=d, **geometry) for d in DECODERS}


def loader_case(clips, batch: int):
    """Each call loads the next `batch` windows; every case walks the same sequence of (epoch, index)."""
    state = {"next": 0}

    def run():
        for w in range(state["next"], state["next"] + batch):
            epoch, index = divmod(w, len(clips))
            clips.load(index, epoch)
        state["next"] += batch
    return run


def open_case(path: Path, decoder: str):
    """Opening and closing a file with `open_media` (what every window pays before decoding)."""
    from scaling.data.decode import open_media

    def run():
        with open_media(path, decoder):
            pass
    return run


def window_times(clips, index: int, epoch: int) -> list[float]:
    """The instants `ManifestClips.load(index, epoch)` decodes (its training window, in the file)."""
    from scaling.data import windows
    from scaling.data.decode import probe

    entry = clips.entries[index]
    duration = entry.duration or probe(entry.video).duration
    seg_start, seg_end = windows.segment_bounds(entry.start, entry.end, duration)
    start = windows.train_start(clips.seed, epoch, index, seg_start, seg_end, clips.window_s)
    return windows.frame_times(start, clips.frames, clips.fps, seg_start, seg_end)


def band_indices(video: torch.Tensor, resolution: int, height: int) -> list[int]:
    """The frame index each frame of a (3, T, R, R) clip shows, read from the texture's top band
    (minus its last, blurred row after the resize; the crop keeps the top rows: height is the short side)."""
    from scaling.data.encode import BAND_ROWS, frame_index

    rows = max(1, math.floor(BAND_ROWS * resolution / height) - 1)
    return [frame_index(video[:, t, :rows].numpy()) for t in range(video.shape[1])]


def audio_alignment(a: np.ndarray, b: np.ndarray, span: int = 16384, edge: int = 256) -> tuple[float, float]:
    """(lag, residual) over the middle `span` samples: the fractional lag of `b` behind `a` (samples,
    within +-2, to 0.05) that best aligns them, and the largest difference left once `b` is shifted
    by it (FFT shift; `edge` samples at each end left out, where the circular shift rings)."""
    middle = max(0, (len(a) - span) // 2)
    a, b = a[middle:middle + span].astype(np.float64), b[middle:middle + span].astype(np.float64)
    n = len(a)
    edge = min(edge, n // 4)
    freqs, spectrum = np.fft.rfftfreq(n), np.fft.rfft(b)
    best = (math.inf, 0.0)
    for lag in np.arange(-2.0, 2.0001, 0.05):
        shifted = np.fft.irfft(spectrum * np.exp(2j * np.pi * freqs * lag), n)
        best = min(best, (float(np.abs(a[edge:n - edge] - shifted[edge:n - edge]).max()), round(float(lag), 2)))
    return best[1], best[0]


def compare(sets: dict[str, Any], geometry: dict[str, Any], checks: int, height: int, fps: int) -> dict[str, Any]:
    """Windows decoded by both decoders (epochs the timing does not use), compared."""
    from scaling.data.decode import TIME_TOLERANCE_S

    same = max_px = mean_px = max_lag = max_audio = 0.0
    clips = sets["pyav"]
    for w in range(checks):
        epoch, index = divmod(w, len(clips))
        epoch += 1000
        out = {d: sets[d].load(index, epoch) for d in DECODERS}
        expected = [math.floor((t + TIME_TOLERANCE_S) * fps) for t in window_times(clips, index, epoch)]
        picked = {d: band_indices(out[d]["video"], geometry["resolution"], height) for d in DECODERS}
        same += picked["torchcodec"] == picked["pyav"] == expected
        diff = (out["torchcodec"]["video"].int() - out["pyav"]["video"].int()).abs()
        max_px, mean_px = max(max_px, int(diff.max())), max(mean_px, float(diff.float().mean()))
        lag, residual = audio_alignment(out["torchcodec"]["audio"].numpy(), out["pyav"]["audio"].numpy())
        max_lag, max_audio = max(max_lag, abs(lag)), max(max_audio, residual)
    equal = (same == checks and max_px <= MAX_PIXEL_DIFF and mean_px <= MEAN_PIXEL_DIFF
             and max_lag <= MAX_AUDIO_LAG and max_audio <= MAX_AUDIO_DIFF)
    return {"frames same": f"{int(same)}/{checks}", "max Δ px": int(max_px), "mean px": mean_px,
            "audio lag (samples)": max_lag, "audio Δ aligned": max_audio, "equal output": equal}


# ----------------------------------------------------------------------------- 2. seek cost
def seek_manifest(root: Path, long: Path, geometry: dict[str, Any], long_s: float, keyint_s: float) -> tuple[Path, float, float]:
    """Two segments of exactly one window: SEEK_OFFSET_S after the first keyframe and after the
    last keyframe the window fits behind."""
    window_s = geometry["frames"] / geometry["fps"]
    start = SEEK_OFFSET_S
    end = max(start, math.floor((long_s - window_s - SEEK_OFFSET_S - 0.1) / keyint_s) * keyint_s + SEEK_OFFSET_S)
    path = root / f"seek_{geometry['resolution']}.jsonl"
    path.write_text("".join(json.dumps({"video": str(long), "start": s, "end": s + window_s, "captions": ["x"]}) + "\n"
                            for s in (start, end)))
    return path, start, end


# ----------------------------------------------------------------------------- 3. cores per GPU
def vatt_flops(scale: str) -> tuple[float, list[str]]:
    """VATT-Base's training FLOPs per sample at 32x224^2, DropToken 0.5 (smoke: VATT-nano, quicker to count)."""
    from scaling.config import RunConfig
    from scaling.describe import describe

    overrides = VATT_BASE if scale == "full" else [o if not o.startswith("size=") else "size=nano" for o in VATT_BASE]
    cfg = RunConfig.load(None, overrides)
    return float(describe(cfg)["flops_per_sample"]), overrides


# ----------------------------------------------------------------------------- 4. CUDA
def torchcodec_clip(path: Path, times: list[float], resolution: int, device: str) -> torch.Tensor:
    """(3, T, R, R) uint8 with torchcodec on `device`: the decode API's torchcodec path (times
    clamped into the stream, short-side resize, centre crop), video only."""
    from torchcodec.decoders import VideoDecoder
    from torchvision.transforms.v2.functional import resize

    from scaling.data.decode import TIME_TOLERANCE_S, short_side_size

    kwargs = {"num_ffmpeg_threads": 1} if device == "cpu" else {}
    decoder = VideoDecoder(str(path), seek_mode="approximate", device=device, **kwargs)
    meta = decoder.metadata
    begin, end = meta.begin_stream_seconds or 0.0, meta.end_stream_seconds or meta.duration_seconds
    last = max(begin, end - TIME_TOLERANCE_S)
    frames = decoder.get_frames_played_at([min(max(t + TIME_TOLERANCE_S, begin), last) for t in times]).data
    width, height = short_side_size(frames.shape[-1], frames.shape[-2], resolution)
    frames = resize(frames, [height, width], antialias=True)
    top, left = (height - resolution) // 2, (width - resolution) // 2
    return frames[:, :, top:top + resolution, left:left + resolution].permute(1, 0, 2, 3).contiguous()


def cuda_vs_cpu(clips, geometry: dict[str, Any], batch: int, reps: int) -> tuple[dict[str, float] | None, str]:
    if not torch.cuda.is_available():
        return None, "4. CUDA decode: skipped (no GPU)"
    keys = [divmod(w, len(clips)) for w in range(batch * (reps + 1))]
    windows = [(clips.entries[i].video, window_times(clips, i, e)) for e, i in keys]
    try:
        clip = {d: torchcodec_clip(windows[0][0], windows[0][1], geometry["resolution"], d) for d in ("cpu", "cuda")}
        diff = (clip["cpu"].int() - clip["cuda"].cpu().int()).abs().float().mean().item()

        def case(device: str):
            state = {"next": 0}

            def run():
                for path, times in windows[state["next"]:state["next"] + batch]:
                    torchcodec_clip(path, times, geometry["resolution"], device)
                state["next"] = (state["next"] + batch) % len(windows)
            return run

        times = interleaved({"cpu": case("cpu"), "cuda": case("cuda")}, reps=reps, warmup=1, sync=torch.cuda.synchronize)
    except Exception as err:  # no NVDEC in this FFmpeg/torchcodec build, etc.: say so, keep the rest
        return None, f"4. CUDA decode: failed ({type(err).__name__}: {err})"
    rates = {d: batch / times[d]["median"] for d in times}
    return rates, (f"4. CUDA decode ({torch.cuda.get_device_name(0)}), video only, {label(geometry)}: "
                   f"{rates['cuda']:.1f} clips/s vs {rates['cpu']:.1f} on one CPU core ({rates['cuda'] / rates['cpu']:.2f}x); "
                   f"mean |Δ| vs the CPU decode {diff:.2f} levels (NVDEC's colour conversion)")


# ----------------------------------------------------------------------------- run
def default_fit(rows: list[dict], frames: int) -> str:
    """scaling.data.budget's default cost model, C / repeats + frames x F, fitted to the as-shipped rows
    of repeats 1 and 4 (C: per clip: open, seek, audio; F: per output frame)."""
    cost = {r["case"].rsplit("=", 1)[1]: 1 / r["clips/s per core"] for r in rows if "as shipped" in r["case"]}
    per_clip = (cost["1"] - cost["4"]) * 4 / 3
    per_frame = (cost["1"] - per_clip) / frames
    return (f"Default cost model (scaling.data.budget, no probe): C / repeats + frames x F, fitted to the as-shipped "
            f"repeats 1 and 4: C = {per_clip * 1e3:.1f} ms per clip, F = {per_frame * 1e3:.2f} ms per frame.")


def versions() -> str:
    import av
    import torchcodec
    from torchcodec._core import get_ffmpeg_library_versions

    system = get_ffmpeg_library_versions().get("ffmpeg_version", "?")
    return (f"torchcodec {torchcodec.__version__} on FFmpeg {system} (the system's libraries); "
            f"PyAV {av.__version__} on its bundled FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}")


def run(scale: str) -> Result:
    """See the module docstring; what the columns mean is in BENCHMARKS.md ("How the benchmarks measure")."""
    check_scale(scale)
    from scaling.data.decode import require

    for decoder in DECODERS:
        require(decoder)
    plan, geoms = PLAN[scale], geometries(scale)
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="data_real_"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus = write_corpus(root, plan)
        facts = [stream_facts(p) for p in corpus["videos"]]
        long_facts = stream_facts(corpus["long"])
        rows, notes, rates = [], [], {}
        sets = {g: datasets(corpus["manifest"], geom) for g, geom in geoms.items()}
        cases = {(d, g): loader_case(sets[g][d], plan["batch"]) for g in geoms for d in DECODERS}
        clip_times = timed(cases, reps=plan["reps"])
        # Every round draws new windows (their cost varies with the distance to the keyframe): the
        # rate is over all of them; the decoders' ratio pairs the rounds, where both decoded the same.
        rates = {key: plan["batch"] * len(t["cpu"]) / sum(t["cpu"]) for key, t in clip_times.items()}
        wall_rates = {key: plan["batch"] * len(t["wall"]) / sum(t["wall"]) for key, t in clip_times.items()}
        versus = {g: paired(clip_times[("pyav", g)]["cpu"], clip_times[("torchcodec", g)]["cpu"]) for g in geoms}
        opening = timed({d: open_case(corpus["videos"][0], d) for d in DECODERS}, reps=plan["seek_reps"] * 2)
        checks = {g: compare(sets[g], geom, plan["checks"], plan["size"][1], FPS) for g, geom in geoms.items()}

        seek: dict[tuple[str, str], dict[str, float]] = {}
        for g, geom in geoms.items():
            manifest, start, end = seek_manifest(root, corpus["long"], geom, plan["long_s"], plan["keyint_s"])
            seek_sets = datasets(manifest, geom)
            seek_cases = {(d, pos): (lambda c=seek_sets[d], i=i: c.load(i, 0))
                          for d in DECODERS for i, pos in enumerate(("start", "end"))}
            t = timed(seek_cases, reps=plan["seek_reps"])
            for d in DECODERS:
                seek[(d, g)] = {"start": statistics.median(t[(d, "start")]["cpu"]),
                                "end": statistics.median(t[(d, "end")]["cpu"]), "at": (start, end),
                                "ratio": paired(t[(d, "end")]["cpu"], t[(d, "start")]["cpu"]),
                                "wall ratio": paired(t[(d, "end")]["wall"], t[(d, "start")]["wall"])[0]}

        flops, overrides = vatt_flops(scale)
        size = next(o for o in overrides if o.startswith("size=")).split("=")[1]
        gpu_rate = MFU * PEAK_FLOPS / flops
        faster = max(DECODERS, key=lambda d: rates[(d, "vatt")])
        cuda_rates, cuda_note = cuda_vs_cpu(sets["vatt"]["torchcodec"], geoms["vatt"], plan["batch"], plan["reps"])

        for g, geom in geoms.items():
            for d in DECODERS:
                s = seek[(d, g)]
                row = {"decoder": d, "geometry": f"{g}: {label(geom)}", "clips/s per core": rates[(d, g)],
                       "wall clips/s": wall_rates[(d, g)],
                       "torchcodec / PyAV": versus[g][0] if d == "torchcodec" else None,
                       **{k: v for k, v in checks[g].items() if k in COLUMNS},
                       "seek start s": s["start"], "seek end s": s["end"], "seek end / start": s["ratio"][0],
                       f"seek <= {SEEK_GOAL}": s["ratio"][0] <= SEEK_GOAL}
                if g == "vatt":
                    row["cores per GPU"] = gpu_rate / rates[(d, g)]
                    if d == "torchcodec" and cuda_rates:
                        row["CUDA clips/s"] = cuda_rates["cuda"]
                        row["CUDA / CPU"] = cuda_rates["cuda"] / cuda_rates["cpu"]
                    elif d == "torchcodec":
                        row["CUDA clips/s"] = "skipped (no GPU)" if not torch.cuda.is_available() else "failed"
                rows.append(row)

        kf = [np.diff(f["keyframes"] + [f["seconds"]]).mean() for f in facts]
        notes += [
            f"Versions: {versions()}.",
            f"Corpus: {plan['files']} files of {plan['seconds']} s, {plan['size'][0]}x{plan['size'][1]} at {FPS} fps, "
            f"H.264 {facts[0]['profile']} (x264 veryfast, CRF 23, ffmpeg's default GOP: keyint 250 with scene cuts; "
            f"mean keyframe interval {np.mean(kf):.1f} s), video {np.mean([f['video_kbps'] for f in facts]):.0f} kbit/s, "
            f"AAC mono {AUDIO_RATE} Hz {np.mean([f['audio_kbps'] for f in facts]):.0f} kbit/s.",
            f"1. Clips/s: {plan['reps']} rounds (+1 warm-up) of the 4 cases interleaved, each case "
            f"{plan['batch']} new random training windows a round, the same for both decoders; clips/s per core = "
            "windows / this process's CPU seconds over all rounds (wall clips/s: / wall seconds, lower when the "
            "machine is shared); one process, torch threads 1, decoder threads 1. torchcodec / PyAV = median over "
            "rounds of the per-round ratio (" + ", ".join(f"{g} {v[0]:.3f}, rounds {v[1]:.3f}-{v[2]:.3f}"
                                                          for g, v in versus.items()) + "). Opening a file "
            "(open_media, each window does once; its audio opens the file again in torchcodec): "
            + ", ".join(f"{d} {1e3 * statistics.median(t['cpu']):.1f} ms" for d, t in opening.items()) + " CPU.",
            "Equal output: " + "; ".join(
                f"{g}: {c['frames same']} windows with the frames shown at the instants from both, max |Δ| "
                f"{c['max Δ px']} levels (mean {c['mean px']:.3f}), audio lag <= {c['audio lag (samples)']:g} "
                f"samples, aligned |Δ| <= {c['audio Δ aligned']:.4f}" for g, c in checks.items())
            + f" (limits: max |Δ| <= {MAX_PIXEL_DIFF}, mean <= {MEAN_PIXEL_DIFF}, lag <= {MAX_AUDIO_LAG:g}, "
              f"aligned |Δ| <= {MAX_AUDIO_DIFF}).",
            f"2. Seek: {long_facts['seconds']:.0f} s file, keyframe every {plan['keyint_s']} s "
            f"({len(long_facts['keyframes'])} keyframes, video {long_facts['video_kbps']:.0f} kbit/s); windows at "
            + ", ".join(f"{g} {seek[('pyav', g)]['at'][0]:g} s and {seek[('pyav', g)]['at'][1]:g} s" for g in geoms)
            + f" ({SEEK_OFFSET_S} s after a keyframe), each a one-window manifest segment through ManifestClips.load "
              f"(open, seek, decode video and audio); {plan['seek_reps']} interleaved rounds: median CPU seconds, "
              "and the median over rounds of the per-round ratio end / start (range over rounds; wall-clock ratio): "
              + ", ".join(f"{d} {g} {seek[(d, g)]['ratio'][1]:.2f}-{seek[(d, g)]['ratio'][2]:.2f}; "
                          f"{seek[(d, g)]['wall ratio']:.2f}" for g in geoms for d in DECODERS) + ".",
            f"3. Cores per GPU: VATT-{size}, 32x224^2, DropToken 0.5: flops_per_sample {flops:.4g} (scaling describe "
            f"{' '.join(overrides)}); GPU clips/s = {MFU} x {PEAK_FLOPS:.3g} / {flops:.4g} = {gpu_rate:.1f}; "
            f"cores = {gpu_rate:.1f} / {rates[(faster, 'vatt')]:.2f} clips/s per core ({faster}, the faster at VATT's "
            f"geometry) = {gpu_rate / rates[(faster, 'vatt')]:.1f}. Decoding only (no augmentation in the workers).",
            cuda_note,
        ]
        io_rows, io_notes = data_budget.manifest_vs_shards(root / "io", data_budget.PLAN[scale], geoms["demo"],
                                                           f"demo: {label(geoms['demo'])}", AUDIO_RATE)
        rep_rows, rep_notes, cores_met = data_budget.repeated_sampling(
            root, data_budget.PLAN[scale], geoms["vatt"], f"vatt: {label(geoms['vatt'])}", flops, size, timed,
            AUDIO_RATE)
        decoders_met = all(r[f"seek <= {SEEK_GOAL}"] and r["equal output"] for r in rows)
        rows += io_rows + rep_rows
        notes += io_notes + rep_notes + [default_fit(rep_rows, geoms["vatt"]["frames"]),
            f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"]
        met = None
        if scale == "full":
            met = decoders_met and cores_met
        return Result(NAME, TITLE, GOAL, COLUMNS, rows, met=met, notes=notes)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
