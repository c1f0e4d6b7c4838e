"""Part of the `scaling` (one run) layer: the embedded default data set.
Owns SyntheticClips, procedural video+audio+caption clips that are a pure function of (seed, split, index)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from scaling.data.text import caption_ids
from scaling.validate import choice, integer, number

SHAPES = ("disk", "square", "ring", "cross", "diamond", "triangle")
DIRECTIONS = ("right", "up right", "up", "up left", "left", "down left", "down", "down right")
SPEED_BANDS = 3
PAIRS = len(SHAPES) * len(DIRECTIONS)
# Up to 48 classes, a class is a (shape, direction) pair and speed is nuisance; beyond 48 the speed
# band (slow, moderate, fast) joins the class, up to 144 look-alike classes that differ in one factor.
MAX_CLASSES = PAIRS * SPEED_BANDS

SHAPE_WORDS = {
    "disk": ("disk", "circle", "dot", "ball"),
    "square": ("square", "box", "block", "tile"),
    "ring": ("ring", "hoop", "donut", "annulus"),
    "cross": ("cross", "plus sign", "plus", "crosshair"),
    "diamond": ("diamond", "rhombus", "lozenge", "kite"),
    "triangle": ("triangle", "wedge", "pyramid", "arrowhead"),
}
DIRECTION_WORDS = {
    "right": ("right", "to the right", "rightwards", "east"),
    "up right": ("up and right", "up and to the right", "north east", "diagonally up right"),
    "up": ("up", "upwards", "north", "towards the top"),
    "up left": ("up and left", "up and to the left", "north west", "diagonally up left"),
    "left": ("left", "to the left", "leftwards", "west"),
    "down left": ("down and left", "down and to the left", "south west", "diagonally down left"),
    "down": ("down", "downwards", "south", "towards the bottom"),
    "down right": ("down and right", "down and to the right", "south east", "diagonally down right"),
}
SPEED_WORDS = (
    ("slowly", "gently", "at a slow pace"),
    ("steadily", "at a moderate pace", "at an even speed"),
    ("quickly", "rapidly", "fast"),
)
# Named foreground colours: captions can name them, and they are class-independent nuisance.
PALETTE = (
    (("red", "crimson"), (0.90, 0.10, 0.10)),
    (("green",), (0.10, 0.80, 0.20)),
    (("blue",), (0.10, 0.20, 0.90)),
    (("yellow",), (0.95, 0.90, 0.10)),
    (("cyan", "turquoise"), (0.10, 0.85, 0.90)),
    (("magenta",), (0.90, 0.10, 0.85)),
    (("orange",), (1.00, 0.55, 0.05)),
    (("purple", "violet"), (0.50, 0.10, 0.70)),
    (("white",), (0.95, 0.95, 0.95)),
    (("black", "dark"), (0.05, 0.05, 0.05)),
    (("grey", "gray"), (0.50, 0.50, 0.50)),
    (("brown",), (0.55, 0.30, 0.10)),
)
# Templates name shape, direction and (in most) speed; "{colour}" is either empty or a colour word
# plus a space. Colour is named only in a fraction `difficulty` of captions: at low difficulty the
# text carries the class and speed, and no colour shortcut for video-text matching.
TEMPLATES = (
    "a {colour}{shape} moving {motion} {speed}",
    "the {colour}{shape} drifts {motion}",
    "{speed} a {colour}{shape} travels {motion}",
    "a {colour}{shape} slides {motion} {speed}",
    "there is a {colour}{shape} heading {motion}",
    "{colour}{shape} going {motion} {speed}",
    "watch the {colour}{shape} move {motion} {speed}",
    "a {colour}{shape} glides {motion}",
)
# Class -> chord: the root note follows the shape, the chord quality follows the direction.
ROOT_HZ = (220.0, 246.9, 277.2, 293.7, 329.6, 370.0)
CHORD_SEMITONES = ((0, 4, 7), (0, 3, 7), (0, 5, 7), (0, 3, 6), (0, 4, 8), (0, 2, 7), (0, 7, 12), (0, 4, 11))

OBJECT_SCALE = 0.18  # the object's mean radius as a fraction of the frame
MAX_DISTRACTORS = 3
# Columns of the per-clip uniform table; every random choice of a clip reads one column.
POS_X, POS_Y, SPEED, SIZE, COLOUR, FG_JITTER, BG_JITTER = 0, 1, 2, 3, 4, 5, 8
TEX_FREQ, TEX_PHASE, NOISE_OFFSET, AUDIO_NOISE, DETUNE, AUDIO_PHASE = 11, 15, 17, 18, 19, 20
DISTRACTOR, PER_DISTRACTOR = 21, 8
CAPTION = DISTRACTOR + MAX_DISTRACTORS * PER_DISTRACTOR
PER_CAPTION = 6  # template (first caption only), shape, motion, colour, speed, colour named?

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SPLIT_CODES = {"train": 1, "eval": 2}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # A counter-based hash: clips need independent random numbers without a sequential RNG,
    # so any index (and any batch of indices) can be rendered alone and vectorised.
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _int_at_least(name: str, value, minimum: int = 1, maximum: int | None = None, note: str = "") -> int:
    """An int (a NumPy integer too) in [minimum, maximum]."""
    return integer(name, int(value) if isinstance(value, np.integer) else value, minimum=minimum, maximum=maximum,
                   note=note)


class SyntheticClips(torch.utils.data.Dataset):
    """Procedural clips whose class is a (shape, motion direction) pair, or, with more than 48
    classes, a (shape, direction, speed band) triple.

    Colour, background texture, start position, size and (up to 48 classes) speed are per-instance
    nuisance, and objects wrap around the frame edges, so no single pixel and no mean colour carries
    the class. With speed in the class, each class has look-alikes that differ from it in shape
    only, in direction only or in speed only: the hard negatives of instance discrimination.
    """

    def __init__(self, split, size, *, num_classes=10, frames=8, resolution=64, audio_samples=4096,
                 sample_rate=16000, captions=4, max_words=16, vocab_size=65536, difficulty=0.5, seed=0):
        self.split = choice("split", split, sorted(_SPLIT_CODES))
        self.size = _int_at_least("size", size, minimum=0)
        self.num_classes = _int_at_least("num_classes", num_classes, minimum=2, maximum=MAX_CLASSES,
                                         note=f"{len(SHAPES)} shapes x {len(DIRECTIONS)} directions x "
                                              f"{SPEED_BANDS} speed bands")
        self.frames = _int_at_least("frames", frames)
        self.resolution = _int_at_least("resolution", resolution, minimum=8)
        self.audio_samples = _int_at_least("audio_samples", audio_samples)
        self.sample_rate = _int_at_least("sample_rate", sample_rate)
        self.captions = _int_at_least("captions", captions)
        self.max_words = _int_at_least("max_words", max_words)
        self.vocab_size = _int_at_least("vocab_size", vocab_size, minimum=2)
        self.difficulty = number("difficulty", difficulty, minimum=0.0, maximum=1.0)
        self.seed = _int_at_least("seed", seed, minimum=0)

        # c = 6q + s -> shape s, direction (q + 3s) % 8: a bijection onto all 48 pairs in which
        # even the first 10 classes vary both shape and direction, so neither alone suffices.
        # Beyond 48 classes, class c has pair c % 48 in speed band c // 48 (band 0 is the slowest).
        classes = np.arange(self.num_classes)
        pairs = classes % PAIRS
        self.class_shape = pairs % len(SHAPES)
        self.class_direction = (pairs // len(SHAPES) + 3 * self.class_shape) % len(DIRECTIONS)
        self.speed_in_class = self.num_classes > PAIRS
        self.class_speed = classes // PAIRS if self.speed_in_class else None

        stream = (self.seed * 4 + _SPLIT_CODES[split]) % 2**64
        self._stream_key = _splitmix64(np.array([stream], dtype=np.uint64))[0]
        self._num_columns = CAPTION + PER_CAPTION * self.captions
        self.num_distractors = int(MAX_DISTRACTORS * self.difficulty + 0.5)
        self.pixel_noise = 0.1 * self.difficulty
        self.texture_amplitude = 0.05 + 0.2 * self.difficulty
        self.audio_noise = 0.3 * self.difficulty
        # Colour diversity grows with difficulty: one object colour at 0, the whole palette at 1,
        # and the background's offset from the object colour spreads from 0.1 to 0.3 per channel.
        # Few colours keep colour from being the easiest instance feature two crops (or a clip
        # and its caption) share, without tying colour to the class.
        self.num_colours = 1 + int(round((len(PALETTE) - 1) * self.difficulty))
        self.background_jitter = 0.1 + 0.2 * self.difficulty
        # Noise comes from banks drawn once from the seed, then indexed per clip: drawing fresh
        # Gaussian noise for every pixel would cost more than rendering the rest of the clip.
        bank_key = _splitmix64(np.array([self.seed % 2**64], dtype=np.uint64))[0] >> np.uint64(1)
        bank_gen = torch.Generator().manual_seed(int(bank_key))
        bank_frames = max(16, min(128, (1 << 22) // (self.resolution * self.resolution)))
        frames_bank = torch.randn(bank_frames, self.resolution, self.resolution, generator=bank_gen)
        audio_bank = torch.randn(1 << 16, generator=bank_gen)
        # Each bank is followed by a clip's length of its own start, so a window never wraps.
        self._noise_frames = frames_bank[torch.arange(bank_frames + self.frames) % bank_frames]
        self._noise_frames.mul_(self.pixel_noise)
        self._audio_bank = audio_bank[torch.arange(len(audio_bank) + self.audio_samples) % len(audio_bank)]
        self._audio_bank.mul_(self.audio_noise)

    def __len__(self) -> int:
        return self.size

    @property
    def class_names(self) -> list[str]:
        return [self.describe_class(c) for c in range(self.num_classes)]

    def describe_class(self, label: int) -> str:
        """'<shape> moving <direction>' (and ', <speed>' with speed in the class): the factors
        that define class `label`."""
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must be in [0, {self.num_classes}), got {label}")
        name = f"{SHAPES[self.class_shape[label]]} moving {DIRECTIONS[self.class_direction[label]]}"
        return f"{name}, {SPEED_WORDS[self.class_speed[label]][0]}" if self.speed_in_class else name

    # ---- randomness -------------------------------------------------------------------------

    def _check_indices(self, indices) -> np.ndarray:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        idx = np.where(idx < 0, idx + self.size, idx)
        bad = (idx < 0) | (idx >= self.size)
        if bad.any():
            raise IndexError(f"index {list(indices)[int(np.argmax(bad))]} out of range for "
                             f"SyntheticClips({self.split!r}) of size {self.size}")
        return idx

    def _uniforms(self, idx: np.ndarray) -> np.ndarray:
        """(B, columns) float64 in [0, 1): the clip's random choices, a hash of (seed, split, index)."""
        clip_keys = _splitmix64(self._stream_key ^ _splitmix64(idx.astype(np.uint64)))
        with np.errstate(over="ignore"):
            columns = np.arange(1, self._num_columns + 1, dtype=np.uint64) * _GOLDEN
            bits = _splitmix64(clip_keys[:, None] + columns[None, :]) >> np.uint64(11)
        return bits.astype(np.float64) * 2.0**-53

    def _class_uniforms(self, idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The clip's uniforms, with the speed column moved into the class's speed band when speed
        is part of the class: band k of 3 covers [k + 0.15, k + 0.85) / 3, so the bands leave gaps
        and a caption's speed word (a third of the range each) names the band."""
        u = self._uniforms(idx)
        if self.speed_in_class:
            u[:, SPEED] = (self.class_speed[labels] + 0.15 + 0.7 * u[:, SPEED]) / SPEED_BANDS
        return u

    def _labels(self, idx: np.ndarray) -> np.ndarray:
        # Consecutive indices cycle through the classes from a stream-specific offset, so any
        # num_classes consecutive clips (e.g. an unshuffled eval batch) are exactly balanced.
        return (idx + int(self._stream_key % np.uint64(self.num_classes))) % self.num_classes

    # ---- rendering --------------------------------------------------------------------------

    def _background(self, u: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W): a base colour far from the foreground plus a two-grating texture."""
        r = self.resolution
        # Per channel, (fg + 0.5 +- jitter/2) mod 1 stays at least 0.35 away from fg: always visible.
        j = self.background_jitter
        base = torch.remainder(fg + (0.5 - 0.5 * j) + j * u[:, BG_JITTER:BG_JITTER + 3], 1.0)
        coords = torch.arange(r, dtype=torch.float32) * (2 * math.pi / r)
        texture = torch.zeros(u.shape[0], r, r)
        for g in range(2):
            freq_x = torch.floor(u[:, TEX_FREQ + 2 * g] * 7) - 3  # integer cycles: tiles the torus
            freq_y = torch.floor(u[:, TEX_FREQ + 2 * g + 1] * 7) - 3
            phase = u[:, TEX_PHASE + g] * (2 * math.pi)
            # sin(a + b) = sin a cos b + cos a sin b keeps the grating an outer product of 1-D waves.
            a = freq_x[:, None] * coords + phase[:, None]
            b = freq_y[:, None] * coords
            texture += torch.sin(a)[:, None, :] * torch.cos(b)[:, :, None]
            texture += torch.cos(a)[:, None, :] * torch.sin(b)[:, :, None]
        bg = base[:, :, None, None] + (0.5 * self.texture_amplitude) * texture[:, None]
        return bg.clamp_(0.0, 1.0)

    def _offsets(self, start_x, start_y, speed, angle):
        """Wrapped pixel offsets (B, T, W) and (B, T, H) from a moving centre; edges wrap (torus)."""
        r, t = self.resolution, torch.arange(self.frames, dtype=torch.float32)
        centre_x = start_x[:, None] + (speed * torch.cos(angle))[:, None] * t
        centre_y = start_y[:, None] - (speed * torch.sin(angle))[:, None] * t  # image y points down
        pixels = torch.arange(r, dtype=torch.float32) + 0.5
        dx = torch.remainder(pixels - centre_x[..., None] + r / 2, r) - r / 2
        dy = torch.remainder(pixels - centre_y[..., None] + r / 2, r) - r / 2
        return dx, dy

    @staticmethod
    def _shape_coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Pixel coverage in [0, 1]: signed distance to the edge in pixels (> 0 inside) + 0.5, clamped.

        Every shape has area ~ pi * s^2, so area says nothing about the class. Each formula makes
        one full-size tensor and then works in place: allocations, not arithmetic, dominate here.
        """
        if shape in ("disk", "ring"):
            dist = torch.add(dx * dx, dy * dy).sqrt_()
            if shape == "disk":
                margin = dist.neg_().add_(s + 0.5)
            else:  # annulus from 0.75 s to 1.25 s
                margin = dist.sub_(s).abs_().neg_().add_(0.25 * s + 0.5)
        elif shape == "square":
            margin = torch.maximum(dx.abs(), dy.abs()).neg_().add_(0.886 * s + 0.5)
        elif shape == "diamond":  # |dx| + |dy| <= 1.253 s, distance measured along the edge normal
            margin = torch.add(dx.abs(), dy.abs()).neg_().add_(1.253 * s).mul_(0.7071).add_(0.5)
        elif shape == "cross":  # two bars of half-length 1.2 s and half-width 0.38 s
            ax, ay, arm, half_width = dx.abs(), dy.abs(), 1.2 * s + 0.5, 0.38 * s + 0.5
            margin = torch.minimum(half_width - ax, arm - ay)
            torch.maximum(margin, torch.minimum(half_width - ay, arm - ax), out=margin)
        else:  # triangle, apex up, centred on its centroid: base half-width b, height h, area b * h
            b, h = 1.347 * s, 2.333 * s
            margin = (dy + 2 * h / 3).mul(0.866 * b / h).sub(0.866 * dx.abs()).add_(0.5)
            torch.minimum(margin, h / 3 + 0.5 - dy, out=margin)
        return margin.clamp_(0.0, 1.0)

    def _object_mask(self, u: torch.Tensor, shape_id: np.ndarray, direction_id: np.ndarray) -> torch.Tensor:
        """(B, T, H, W) coverage in [0, 1] of the class object and its same-coloured distractors."""
        n, r, frames = u.shape[0], self.resolution, self.frames
        # Fast enough that direction shows inside one 4-frame voxel (4-7 px at 32 px).
        # With speed in the class, a wider range (0.024-0.096 of the frame per frame, in three
        # separated bands) keeps the bands apart at 32 px.
        speed = r * ((0.02 + 0.08 * u[:, SPEED]) if self.speed_in_class else (0.04 + 0.03 * u[:, SPEED]))
        angle = torch.from_numpy(direction_id).float() * (math.pi / 4)
        dx, dy = self._offsets(u[:, POS_X] * r, u[:, POS_Y] * r, speed, angle)
        # Radius ~ a third of the 16-px voxel at 32 px, so the silhouette spans several pixels.
        scale = r * OBJECT_SCALE * (0.85 + 0.3 * u[:, SIZE])
        mask = torch.empty(n, frames, r, r)
        # Grouping by shape renders each clip once with its own formula: a loop over six shapes,
        # never over clips or pixels.
        for s, shape in enumerate(SHAPES):
            rows = torch.from_numpy(np.flatnonzero(shape_id == s))
            if len(rows):
                coverage = self._shape_coverage(shape, dx[rows][:, :, None, :], dy[rows][:, :, :, None],
                                                scale[rows][:, None, None, None])
                mask.index_copy_(0, rows, coverage)
        # Distractors are small boxes moving in random directions, drawn in the object's own
        # colour so that they cannot be dismissed by colour: only size, shape and motion tell.
        box = torch.empty(n, frames, r, r) if self.num_distractors else None
        for d in range(self.num_distractors):
            c = DISTRACTOR + d * PER_DISTRACTOR
            dx, dy = self._offsets(u[:, c] * r, u[:, c + 1] * r, r * (0.01 + 0.04 * u[:, c + 2]),
                                   u[:, c + 3] * (2 * math.pi))
            half = ((0.03 + 0.02 * u[:, c + 4]) * r + 0.5)[:, None, None]
            box_x = (half - dx.abs()).clamp_(0.0, 1.0)
            box_y = (half - dy.abs()).clamp_(0.0, 1.0)
            torch.mul(box_y[:, :, :, None], box_x[:, :, None, :], out=box)
            torch.maximum(mask, box, out=mask)
        return mask

    def _video(self, u: torch.Tensor, shape_id: np.ndarray, direction_id: np.ndarray,
               colour_id: np.ndarray) -> torch.Tensor:
        n, r, frames = u.shape[0], self.resolution, self.frames
        palette = torch.tensor([rgb for _, rgb in PALETTE])
        fg = (palette[torch.from_numpy(colour_id)] + 0.12 * (u[:, FG_JITTER:FG_JITTER + 3] - 0.5)).clamp_(0.0, 1.0)
        bg = self._background(u, fg)
        mask = self._object_mask(u, shape_id, direction_id)
        noise = None
        if self.pixel_noise > 0:
            # Each clip reads a window of consecutive bank frames starting at a hashed offset.
            first = torch.floor(u[:, NOISE_OFFSET] * (len(self._noise_frames) - frames + 1)).long()
            rows = (first[:, None] + torch.arange(frames)).reshape(-1)
            noise = self._noise_frames.index_select(0, rows).view(n, frames, r, r)
        video = torch.empty(n, 3, frames, r, r)
        # video = bg + noise + mask * (fg - bg), written one channel at a time straight into the
        # output: memory traffic, not arithmetic, bounds the speed, so no full-size temporaries.
        noisy_bg = None if noise is None else torch.empty_like(noise)
        for ch in range(3):
            bg_ch = bg[:, ch, None]
            diff = fg[:, ch, None, None, None] - bg_ch
            under = bg_ch if noise is None else torch.add(noise, bg_ch, out=noisy_bg)
            torch.addcmul(under, mask, diff, out=video[:, ch])
        if noise is not None:
            video.clamp_(0.0, 1.0)  # without noise the blend is convex and already in [0, 1]
        return video

    def _audio(self, u64: np.ndarray, shape_id: np.ndarray, direction_id: np.ndarray) -> torch.Tensor:
        """(B, S) in [-1, 1]: a class chord pulsing at a rate set by the clip's speed, plus noise."""
        u = torch.from_numpy(np.minimum(u64, 1.0 - 2.0**-24).astype(np.float32))
        t = torch.arange(self.audio_samples, dtype=torch.float32)[None, :] / self.sample_rate
        root = torch.tensor(ROOT_HZ)[torch.from_numpy(shape_id)]
        # Instance detune (well under a semitone) and start phase grow with difficulty: at 0 every clip
        # of a class plays the same waveform up to its rhythm and loudness, so the chord is easy to hear.
        root = root * (1.0 + 0.03 * self.difficulty * (u[:, DETUNE] - 0.5))
        semitones = torch.tensor(CHORD_SEMITONES, dtype=torch.float32)[torch.from_numpy(direction_id)]
        omega = (2 * math.pi) * root[:, None] * torch.pow(2.0, semitones / 12.0)
        phase = u[:, AUDIO_PHASE, None] * (2 * math.pi * self.difficulty)
        tone = torch.zeros(len(u), self.audio_samples)
        scratch = torch.empty_like(tone)
        for k in range(omega.shape[1]):
            tone += torch.addcmul((k + 1) * phase, omega[:, k, None], t, out=scratch).sin_()
        # Rhythm ties audio to the video's speed: faster objects pulse faster (2..12 Hz).
        pulse = (2 * math.pi) * (2.0 + 10.0 * u[:, SPEED, None])
        envelope = torch.addcmul(phase, pulse, t, out=scratch).cos_().mul_(0.5).add_(0.5)
        loudness = 0.2 + 0.1 * u[:, SIZE, None]  # bigger objects sound louder; 3 tones stay <= 0.9
        audio = tone.mul_(envelope).mul_(loudness)
        if self.audio_noise > 0:
            windows = self._audio_bank.unfold(0, self.audio_samples, 1)  # row i = bank[i : i + S]
            start = torch.floor(u[:, AUDIO_NOISE] * len(windows)).long().clamp_(max=len(windows) - 1)
            audio += windows.index_select(0, start)
        return audio.clamp_(-1.0, 1.0)

    def caption_texts(self, indices) -> list[list[str]]:
        """The caption strings behind `text` for the clips at `indices` (for inspection and demos)."""
        idx = self._check_indices(indices)
        labels = self._labels(idx)
        return self._caption_texts(self._class_uniforms(idx, labels), self.class_shape[labels],
                                   self.class_direction[labels])

    def _caption_texts(self, u: np.ndarray, shape_id: np.ndarray, direction_id: np.ndarray) -> list[list[str]]:
        """`captions` different descriptions per clip: templates rotate, synonyms are drawn."""
        texts = []
        for row, s, d in zip(u, shape_id, direction_id):
            colour_words = PALETTE[int(row[COLOUR] * self.num_colours)][0]  # the video picks the same colour
            speed_words = SPEED_WORDS[int(row[SPEED] * 3)]
            first_template = int(row[CAPTION] * len(TEMPLATES))
            clip = []
            for k in range(self.captions):
                c = CAPTION + k * PER_CAPTION
                # Synonym diversity grows with difficulty: the first `1 + difficulty * (n - 1)` words.
                pick = lambda words, col, row=row, c=c: words[int(row[c + col] * (1 + round(self.difficulty * (len(words) - 1))))]  # noqa: E731
                clip.append(TEMPLATES[(first_template + k) % len(TEMPLATES)].format(
                    shape=pick(SHAPE_WORDS[SHAPES[s]], 1), motion=pick(DIRECTION_WORDS[DIRECTIONS[d]], 2),
                    colour=pick(colour_words, 3) + " " if row[c + 5] < self.difficulty else "",
                    speed=pick(speed_words, 4)))
            texts.append(clip)
        return texts

    # ---- access -----------------------------------------------------------------------------

    def __getitems__(self, indices) -> dict:
        """The clips at `indices`, rendered together and stacked along a new batch dim."""
        idx = self._check_indices(indices)
        labels = self._labels(idx)
        u64 = self._class_uniforms(idx, labels)
        shape_id, direction_id = self.class_shape[labels], self.class_direction[labels]
        texts = self._caption_texts(u64, shape_id, direction_id)
        # Discrete picks come from the float64 table so video and captions agree on the colour;
        # the float32 copy is capped below 1 because rounding could otherwise reach 1.0.
        colour_id = (u64[:, COLOUR] * self.num_colours).astype(np.int64)
        u32 = torch.from_numpy(np.minimum(u64, 1.0 - 2.0**-24).astype(np.float32))
        text = torch.tensor([[caption_ids(c, self.max_words, self.vocab_size) for c in clip] for clip in texts],
                            dtype=torch.int64).reshape(len(idx), self.captions, self.max_words)
        return {
            "video": self._video(u32, shape_id, direction_id, colour_id),
            "audio": self._audio(u64, shape_id, direction_id),
            "text": text,
            "label": torch.from_numpy(labels),
            "index": torch.from_numpy(idx),
        }

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        one = {key: value[0] for key, value in batch.items()}
        one["index"] = int(one["index"])
        return one


def measure_throughput(dataset, batch_size: int = 64, seconds: float = 2.0) -> float:
    """Clips per second fetched in batches of `batch_size` (through __getitems__ where it exists)."""
    if len(dataset) == 0:
        raise ValueError("measure_throughput needs a non-empty dataset")
    fetch = getattr(dataset, "__getitems__", None) or (lambda ids: [dataset[i] for i in ids])
    clips, start, next_index = 0, time.perf_counter(), 0
    while True:
        fetch([(next_index + k) % len(dataset) for k in range(batch_size)])
        next_index, clips = (next_index + batch_size) % len(dataset), clips + batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return clips / elapsed
