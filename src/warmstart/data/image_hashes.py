"""Image fingerprints for the leakage checks (:mod:`warmstart.data.leakage`): a hash of the decoded pixels (exact
copies) and a 64-bit difference hash (near copies: grey levels at 9 x 8, each bit whether a cell is brighter than its
left neighbour, which a re-saved JPEG or a brightness change keeps), and the search for hashes a few bits apart."""

from __future__ import annotations

import hashlib

import datasets
import numpy as np
from datasets import DatasetDict
from PIL import Image

from warmstart.data.decoding import DECODE_ERRORS, load_image

HASH_RADIUS = 4  # difference-hash bits two near-duplicate images may differ in
RADIUS_PAIRS_BUDGET = 5_000_000  # hash comparisons the radius search may make


def image_keys(
    splits: DatasetDict, column: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each split's exact keys (pixel hashes) and near keys (difference hashes) as ids shared across splits (-1: an
    image that cannot be read, which :func:`~warmstart.data.leakage.check_splits` reports as ``unreadable``; for near
    keys also a flat image), and the difference hashes themselves (``uint64``; 0 where there is none)."""
    exact, near, valid, flat = {}, {}, {}, {}
    for name, data in splits.items():
        raw = data.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        pixel_hashes = np.zeros(len(data), dtype=np.uint64)
        thumbs = np.zeros((len(data), 8, 9), dtype=np.float32)
        readable = np.ones(len(data), dtype=bool)
        for start in range(0, len(raw), 256):
            for offset, value in enumerate(raw[start : start + 256][column]):
                row = start + offset
                try:
                    image = load_image(value)
                except DECODE_ERRORS:
                    readable[row] = False
                    continue
                digest = hashlib.blake2b(f"{image.size}".encode() + image.tobytes(), digest_size=8).digest()
                pixel_hashes[row] = np.frombuffer(digest, dtype=np.uint64)[0]
                grey = image.convert("L").convert("F").resize((9, 8), Image.Resampling.BOX)
                thumbs[row] = np.asarray(grey, dtype=np.float32)
        bits = np.packbits(thumbs[:, :, 1:] > thumbs[:, :, :-1], axis=-1).reshape(len(data), 8)
        near[name] = bits.view(">u8").reshape(-1).astype(np.uint64)
        exact[name], valid[name] = pixel_hashes, readable
        flat[name] = thumbs.max(axis=(1, 2)) - thumbs.min(axis=(1, 2)) < 1e-3
    near_valid = {name: valid[name] & ~flat[name] for name in splits}
    return dense_ids(exact, valid), dense_ids(near, near_valid), {n: np.where(near_valid[n], near[n], 0) for n in near}


def dense_ids(keys: dict[str, np.ndarray], valid: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hashes as ids shared across splits (-1 where not ``valid``)."""
    _, ids = np.unique(np.concatenate(list(keys.values())), return_inverse=True)
    ids = np.where(np.concatenate(list(valid.values())), ids.reshape(-1), -1)
    return dict(zip(keys, np.split(ids, np.cumsum([len(k) for k in keys.values()])[:-1])))


def hamming_matches(train: np.ndarray, hashes: np.ndarray, wanted: np.ndarray, radius: int) -> np.ndarray | None:
    """For each wanted hash, the first train row whose hash is at most ``radius`` bits away (-1: none); ``None`` when
    the search would compare more than :data:`RADIUS_PAIRS_BUDGET` pairs. A hash of 0 (no hash) is never compared."""
    found = np.full(len(hashes), -1)
    train_rows, rows = np.flatnonzero(train != 0), np.flatnonzero(wanted & (hashes != 0))
    if not len(train_rows) or not len(rows):
        return found
    bands = np.array_split(np.arange(64), radius + 1)
    keyed = []
    for band in bands:
        shift, mask = np.uint64(band[0]), np.uint64((1 << len(band)) - 1)
        train_band, band_keys = (train[train_rows] >> shift) & mask, (hashes[rows] >> shift) & mask
        order = np.argsort(train_band, kind="stable")
        lo = np.searchsorted(train_band[order], band_keys, "left")
        hi = np.searchsorted(train_band[order], band_keys, "right")
        keyed.append((order, lo, hi))
    if sum(int((hi - lo).sum()) for _, lo, hi in keyed) > RADIUS_PAIRS_BUDGET:
        return None
    best = np.full(len(rows), np.iinfo(np.int64).max)
    for order, lo, hi in keyed:
        counts = hi - lo
        which = np.repeat(np.arange(len(rows)), counts)
        step = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        candidates = train_rows[order[np.repeat(lo, counts) + step]]
        close = popcount(train[candidates] ^ hashes[rows[which]]) <= radius
        np.minimum.at(best, which[close], candidates[close])
    hit = best < np.iinfo(np.int64).max
    found[rows[hit]] = best[hit]
    return found


def popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
