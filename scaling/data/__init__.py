"""Part of the `scaling` (one run) layer: the data sets a run trains and evaluates on.
Owns the public data API: synthetic and file-backed clips, caption encoding and the sharded loader."""

from scaling.data.files import ImageFolderDataset, ManifestClips
from scaling.data.loader import ShardedEpochSampler, build_dataset, build_loader, collate_batch
from scaling.data.synthetic import SyntheticClips, measure_throughput
from scaling.data.text import PAD_ID, encode_caption, word_id

__all__ = [
    "PAD_ID",
    "ImageFolderDataset",
    "ManifestClips",
    "ShardedEpochSampler",
    "SyntheticClips",
    "build_dataset",
    "build_loader",
    "collate_batch",
    "encode_caption",
    "measure_throughput",
    "word_id",
]
