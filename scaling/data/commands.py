"""One-run layer's data commands: `scaling data index DIR`, `scaling data check MANIFEST`,
`scaling data shard MANIFEST --out DIR` and `scaling data probe PATH`.

Thin: parse, call scaling.data.corpus, print the counts. Importing this module loads no torch (the
entry point imports it to list the commands); the scans import it when they start.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scaling.config import DECODERS
from scaling.data.corpus import LAYOUTS, VIDEO_EXTENSIONS

# Files named one by one in the summary; the rest are counted, and listed in the written files.
SHOWN = 10


def _names(items, shown: int = SHOWN) -> list[str]:
    items = list(items)
    return [f"  {item}" for item in items[:shown]] + ([f"  ... and {len(items) - shown} more"] if len(items) > shown else [])


def cmd_index(args: argparse.Namespace) -> int:
    from scaling.data.corpus import index_corpus

    report = index_corpus(args.dir, args.out, layout=args.layout, decoder=args.decoder, workers=args.workers,
                          force=args.force)
    classes = f", {len(report.classes)} classes" if args.layout == "kinetics" else ""
    print(f"indexed {report.indexed} files{classes} -> {report.manifest}")
    if report.empty_classes:
        print(f"note: {len(report.empty_classes)} class folder(s) hold no video that could be indexed; "
              "their labels are kept, so the labels of two splits with the same class folders agree:")
        print("\n".join(_names(report.empty_classes)))
    if report.stray:
        print(f"note: {len(report.stray)} video(s) directly in {args.dir} are in no class folder, skipped:")
        print("\n".join(_names(report.stray)))
    if report.without_audio:
        print(f"note: {len(report.without_audio)} file(s) have no audio track; VATT needs audio "
              "(`scaling data check` counts them as bad for method=vatt; DINO reads them):")
        print("\n".join(_names(report.without_audio)))
    else:
        print("every file has an audio track")
    if report.bad:
        print(f"could not probe {len(report.bad)} file(s), left out of the manifest -> {report.bad_list}:")
        print("\n".join(_names(f"{path}: {why}" for path, why in report.bad)))
    else:
        print("every file could be probed")
    return 0


def _run_config(config: str | None, overrides: list[str]):
    """The RunConfig whose method and data.* the check decodes with (how long a run trains does not
    matter here: without steps or samples it has RunConfig's default)."""
    from scaling.config import RunConfig

    return RunConfig.load(config, overrides)


def cmd_check(args: argparse.Namespace) -> int:
    from scaling.data.corpus import check_manifest
    from scaling.objectives import dataset_options

    cfg = _run_config(args.config, args.overrides)
    data, modalities = cfg.data, dataset_options(cfg, evaluation=False)["modalities"]
    report = check_manifest(
        args.manifest, out_dir=args.out_dir, workers=args.workers, frames=data.frames, resolution=data.resolution,
        audio_samples=data.audio_samples, sample_rate=data.sample_rate, fps=data.fps, captions=data.captions,
        max_words=data.max_words, vocab_size=data.vocab_size, decoder=args.decoder or data.decoder, seed=data.seed,
        modalities=modalities)
    audio = f", {data.audio_samples} audio samples at {data.sample_rate} Hz" if "audio" in modalities else ""
    print(f"checked {report.total} entries of {report.manifest} ({cfg.method}: {', '.join(modalities)}; "
          f"{data.frames} frames at {data.fps:g} fps, {data.resolution}px{audio}): "
          f"{report.good} good, {len(report.bad)} bad")
    if cfg.method == "vatt" and cfg.vatt.vt_weight > 0 and report.uncaptioned:
        print(f"note: {report.uncaptioned} entries have no captions; VATT's video-text loss needs them "
              "(set vatt.vt_weight=0 to train on video and audio only)")
    print(f"clean manifest ({report.good} lines) -> {report.clean}")
    print(f"bad list ({len(report.bad)} lines) -> {report.bad_list}")
    if report.bad:
        print("\n".join(_names(f"line {line}: {error}" for line, _, error in report.bad)))
    return 1 if report.bad else 0


def cmd_shard(args: argparse.Namespace) -> int:
    import shlex

    from scaling.data.shards import parse_size, write_shards

    report = write_shards(args.manifest, args.out, shard_size_bytes=parse_size(args.shard_size), prefix=args.prefix,
                          force=args.force)
    if report.removed:
        print(f"replaced the prior {args.prefix!r} set in {args.out} ({len(report.removed)} file(s))")
    print(f"sharded {report.samples} samples of {report.manifest} into {len(report.shards)} shard(s) "
          f"({report.size}) -> {Path(args.out) / report.pattern}")
    print(f"shard index (samples per shard) -> {report.sidecar}")
    print(f"data.path={shlex.quote(report.data_path)}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from scaling.config import ConfigError
    from scaling.data.budget import decode_budget, measure, probe_file, write_probe
    from scaling.data.loader import check_dataset
    from scaling.describe import describe
    from scaling.objectives import dataset_options

    source = "webdataset" if args.path.endswith((".tar", "}", "-shards.json")) else "manifest"
    cfg = _run_config(args.config, [f"data.source={source}", f"data.path={args.path}", *args.overrides])
    if cfg.data.source not in ("manifest", "webdataset"):
        raise ConfigError("data.source", f"a probe decodes videos: got {cfg.data.source!r}; allowed: 'manifest', 'webdataset'")
    if args.windows < 1:
        raise ConfigError("--windows", f"got {args.windows}; must be at least 1")
    # Before anything is timed: the path exists, reads, and its first entry decodes.
    check_dataset(cfg.data, "train", check_size=False, **dataset_options(cfg, evaluation=False))
    out = Path(args.out) if args.out else probe_file(cfg.data.path)
    if not out.parent.is_dir():
        raise ConfigError("--out", f"{out.parent} is not a folder")
    probe = measure(cfg, args.windows)
    probe["command"] = "scaling data probe " + " ".join([args.path, *args.overrides])
    d = cfg.data
    print(f"probed {probe['windows']} windows ({probe['clips']} clips x data.repeats={d.repeats}) of {d.path} for "
          f"{cfg.method}: {d.frames} frames at {d.fps:g} fps, {d.resolution}px, {d.decoder}: "
          f"{probe['cpu_s_per_window'] * 1e3:.1f} ms of CPU per window (wall {probe['wall_s_per_window'] * 1e3:.1f} ms)"
          f", {probe['failed']} failed; one core decodes {1 / probe['cpu_s_per_window']:.1f} windows/s")
    try:
        write_probe(out, probe)
    except OSError as err:
        print(f"could not write the probe to {out}: {err}; pass --out FILE in a writable folder "
              "(describe and sweep plan read it beside data.path)")
        return 1
    print(f"probe -> {out}")
    budget = decode_budget(cfg, describe(cfg, "cuda")["flops_per_sample"]) if out == probe_file(d.path) else None
    if budget is not None:
        print(budget.text())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="real video corpora: index a folder into a manifest, check that every entry decodes",
                       description="From a folder of videos to a manifest a run can read: `index` it, then `check` it "
                                   "(then, for a cluster's file system, `shard` it into tar files).")
    data = p.add_subparsers(dest="data_command", required=True, metavar="{index,check,shard,probe}")

    p = data.add_parser(
        "index", help="write the JSONL manifest of a folder of videos (labels, durations, streams)",
        description="Walk DIR for videos (" + " ".join(VIDEO_EXTENSIONS) + ") and write one manifest line per file: "
                    "its path (relative to the manifest's folder when inside it), its label and class with "
                    "--layout kinetics (DIR/<class>/<video>; sorted class names are labels 0..C-1), its duration "
                    "and streams (read from the headers only: cheap). Files that cannot be probed go to "
                    "<out stem>.unreadable.jsonl, not to the manifest. Exit code 0; 2 when DIR or --out is refused "
                    "(nothing is written then).")
    p.add_argument("dir", metavar="DIR", help="the corpus folder")
    p.add_argument("--layout", required=True, choices=LAYOUTS,
                   help="kinetics: DIR/<class>/<video>, labelled by class folder; flat: every video under DIR, unlabelled")
    p.add_argument("--out", required=True, help="the manifest to write (e.g. DIR/../train.jsonl)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--decoder", choices=DECODERS, default="pyav", help="the library that reads the headers (default: pyav)")
    p.add_argument("--workers", type=int, help="processes probing files (default: every core this process may use)")
    p.set_defaults(func=cmd_index)

    p = data.add_parser(
        "check", help="decode every manifest entry once; write the bad list and a cleaned manifest",
        description="Decode every entry's training window once (epoch 0) with the run's geometry and modalities "
                    "(data.frames, data.fps, data.resolution, data.audio_samples, data.sample_rate; VATT decodes "
                    "audio, DINO only video: give method=dino), from RunConfig's defaults, --config and key=value "
                    "overrides. Writes <stem>.bad.jsonl (line, video, error of each bad entry) and <stem>.clean.jsonl "
                    "(the good lines, verbatim and in order; in another --out-dir their relative paths are made "
                    "absolute). Exit code 0 when every entry decodes, 1 when some do not, 2 when the manifest "
                    "cannot be read.")
    p.add_argument("manifest", metavar="MANIFEST", help="a JSONL manifest (e.g. from `scaling data index`)")
    # As scaling.commands.config_args names a RunConfig (importing it from there would be a cycle).
    p.add_argument("--config", "-c", help="RunConfig YAML file (its data.* and method give the geometry)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. method=dino data.frames=32 data.resolution=224")
    p.add_argument("--out-dir", help="where the two files go (default: the manifest's folder)")
    p.add_argument("--decoder", choices=DECODERS, help="override data.decoder (default: the config's, torchcodec)")
    p.add_argument("--workers", type=int, help="processes decoding (default: every core this process may use)")
    p.set_defaults(func=cmd_check)

    p = data.add_parser(
        "shard", help="pack a manifest's files into WebDataset tar shards (video2dataset's layout) and their index",
        description="Write DIR/PREFIX-000000.tar, ... in manifest order, each at most --shard-size (a sample larger "
                    "than that is a shard of its own): per entry KEY.mp4 (the video's bytes, unchanged, "
                    "whatever the container: .mkv and .webm too), KEY.json (captions, start, end, label, class, "
                    "duration, streams, source, line), KEY.txt (the first caption), KEY.cls (the label) and "
                    "KEY.wav/KEY.m4a/... (a separate audio file, unchanged). DIR/PREFIX-shards.json records the "
                    "brace pattern and each shard's sample count; the last line printed is the data.path to use. "
                    "Exit code 0; 2 when the manifest cannot be read, an entry's file is missing, DIR is not empty "
                    "(without --force) or a value is refused: nothing is written then (the shards are moved into DIR "
                    "only when all are complete).")
    p.add_argument("manifest", metavar="MANIFEST", help="a JSONL manifest (e.g. the clean one `scaling data check` wrote)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder of the shards (created if missing; must be "
                                                              "empty without --force)")
    p.add_argument("--shard-size", default="1GB", metavar="SIZE",
                   help="the largest shard: 500MB, 1GB (powers of 1000), 1.5GiB (of 1024) or bytes (default: 1GB)")
    p.add_argument("--prefix", default="train", help="the shards' name: PREFIX-000000.tar (default: train)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty DIR: replaces the prior PREFIX-<digits>.tar shards and PREFIX-shards.json "
                        "there (once the new set is complete) and leaves every other file alone, so another split "
                        "(--prefix val) can join the same folder")
    p.set_defaults(func=cmd_shard)

    p = data.add_parser(
        "probe", help="measure the CPU cost of decoding a training window of your files (for describe and sweep plan)",
        description="Decode about --windows training windows of PATH (a manifest, or shards: a brace pattern or "
                    "PREFIX-shards.json) at the run's geometry (method, data.frames, data.fps, data.resolution, audio, "
                    "data.decoder, data.repeats: from --config and key=value overrides), one thread, as a loader worker "
                    "does, and cache the CPU seconds per window beside PATH (train.jsonl -> train.probe.json; shards -> "
                    "PREFIX-probe.json), one entry per geometry. `scaling describe` and `scaling sweep plan` read it to "
                    "print the CPU cores one GPU needs. Exit code 0; 1 when the cache cannot be written; 2 when PATH or "
                    "a value is refused (nothing is decoded then).")
    p.add_argument("path", metavar="PATH", help="the train split: a manifest .jsonl, a shard brace pattern or -shards.json")
    p.add_argument("--config", "-c", help="RunConfig YAML file (its method and data.* give the geometry)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. method=vatt data.frames=32 data.resolution=224 data.repeats=2")
    p.add_argument("--windows", type=int, default=32, help="windows to time (default: 32)")
    p.add_argument("--out", help="the cache file (default: beside PATH, where describe and sweep plan look)")
    p.set_defaults(func=cmd_probe)
