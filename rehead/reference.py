"""The input alone, as a reference for how well a source model reads the data.

auto's probe measures how well the source's features fit the labels (a linear probe per cut). A
probe's accuracy says little on its own: scikit-learn's digits probe 0.88-0.93 at Lite2's top
(skill 0.87, "similar" by the threshold) while a logistic regression on their 64 raw pixels gives
0.98 (``bench/digits_large.py``). So the same linear probe runs on the input itself, made small:

- images: each decoded to RGB and averaged down to ``PIXELS`` x ``PIXELS`` (768 numbers);
- text: TF-IDF of words and word pairs (the ``TEXT_FEATURES`` most frequent in the training texts);
- tables: the raw columns (missing values filled with the training mean).

When that reads the labels better than the source's best cut (by auto's ``margin``), the source
reads this data worse than its own input does: the data is *different* from the source, whatever
the probe's skill.
"""
from __future__ import annotations

import json

import numpy as np

PIXELS = 16            # images: averaged down to PIXELS x PIXELS RGB
# text: TF-IDF columns (words and word pairs seen in >= 2 training texts). The probe's solver costs
# grow with the square of the width: on rt_polarity's 4,000-text subset 4,096 columns took 51-71 s
# (accuracy 0.728), 2,048 took 8.5 s (0.714), 1,024 2.4 s (0.696); a weaker reference only makes
# "the input reads better" rarer.
TEXT_FEATURES = 2048


def scaling(modality: str) -> str:
    """The probe's feature scaling: TF-IDF rows are already normalised, and one scale for every
    column keeps rare words' weights small (and is one cross-validation instead of two)."""
    return "global" if modality == "text" else "auto"


def describe(modality: str) -> str:
    return {"image": f"{PIXELS}x{PIXELS} pixels", "text": "TF-IDF of words and pairs",
            "tabular": "the raw columns"}.get(modality, modality)


def input_features(modality: str, backbone, train_items: list, val_items: list,
                   cache=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) float32 matrices of the input itself, made as the module says; the text
    vocabulary and the tables' fill values come from the training items only. ``cache``: a
    feature store that keeps the images' pixels, so a warm run decodes none of them."""
    if modality == "image":
        return _cached_pixels(train_items, cache), _cached_pixels(val_items, cache)
    if modality == "text":
        return _tfidf(train_items, val_items)
    if modality == "tabular":
        return _columns(backbone, train_items, val_items)
    raise ValueError(f"no input reference for {modality} data")


def sampled(modality: str, backbone, items: dict, ys: dict, cap: int, seed: int = 0, cache=None) -> tuple:
    """``(xtr, ytr, xva, yva)``: the input features of at most ``cap`` samples of each split (a
    seeded stratified subset, the one auto's probe uses for its cuts), with their labels."""
    from .auto import _stratified_subset
    ytr, yva = np.asarray(ys["train"]), np.asarray(ys["val"])
    tr, va = _stratified_subset(ytr, cap, seed), _stratified_subset(yva, cap, seed)
    xtr, xva = input_features(modality, backbone, [items["train"][i] for i in tr], [items["val"][i] for i in va],
                              cache)
    return xtr, ytr[tr], xva, yva[va]


# The pixels' entry in the feature store: what makes them (a change here is a new entry).
PIXELS_KEY = f"reference:pixels|{PIXELS}x{PIXELS}|decode min_side {2 * PIXELS}|BOX|/255"


def pixels_key(cache) -> str:
    """The pixels' model key in the feature store (its decoding rules included)."""
    from .data.images import DECODE
    mkey = cache.key(PIXELS_KEY, "-", 0, json.dumps(DECODE, sort_keys=True))
    cache.names[mkey] = f"the input itself: {PIXELS}x{PIXELS} pixels (auto's and probe's reference)"
    return mkey


def _cached_pixels(items: list, cache) -> np.ndarray:
    """``_pixels`` through the feature store, keyed by each image's content like its features: up
    to ``auto.PROBE_MAX`` decodes a split (~1.3 ms a photo) that a warm fit or probe skips."""
    if cache is None or not items:
        return _pixels(items)
    from .data import images
    from .store import CacheError
    try:
        keys = images.sample_keys(items, cache, None)
        mkey = pixels_key(cache)
        rows, ok = cache.read(mkey, keys)
        cache.flush()  # the digests just computed
    except CacheError:  # an unusable store costs the decodes, never the reference
        return _pixels(items)
    out = rows if rows is not None else np.zeros((len(items), PIXELS * PIXELS * 3), np.float32)
    todo = np.flatnonzero(~ok)
    if len(todo):
        fresh, read = _pixels([items[i] for i in todo], with_read=True)
        out[todo] = fresh
        try:  # an image that could not be read (black here) is not kept: it is tried again next time
            cache.put_many(mkey, [keys[i] for i, r in zip(todo, read) if r], fresh[read])
        except CacheError:
            pass
    return out


def _pixels(items: list, with_read: bool = False):
    """Each image averaged down to PIXELS x PIXELS RGB in [0, 1]; with ``with_read``, also which
    ones could be read."""
    from PIL import Image
    from .data.images import UnreadableImage, decode
    out = np.zeros((len(items), PIXELS * PIXELS * 3), np.float32)
    read = np.zeros(len(items), bool)
    for i, p in enumerate(items):
        try:  # the items were read once already (extraction); one that fails now reads as black
            im = decode(p, min_side=2 * PIXELS)  # JPEGs decode at a reduced scale: cheap
        except UnreadableImage:
            continue
        out[i] = np.asarray(im.resize((PIXELS, PIXELS), Image.BOX), np.float32).reshape(-1) / 255
        read[i] = True
    return (out, read) if with_read else out


def _tfidf(train_items: list, val_items: list) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from .data.text import resolve
    tr, va = [resolve(t) for t in train_items], [resolve(t) for t in val_items]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(tr) > 50 else 1, max_features=TEXT_FEATURES,
                          sublinear_tf=True, dtype=np.float32)
    try:
        xtr = vec.fit_transform(tr)
    except ValueError:  # no word at all (e.g. only numbers and punctuation): nothing to read
        return np.zeros((len(tr), 1), np.float32), np.zeros((len(va), 1), np.float32)
    return xtr.toarray(), vec.transform(va).toarray()


def _columns(backbone, train_items: list, val_items: list) -> tuple[np.ndarray, np.ndarray]:
    from .data.tabular import rows_of
    cols = backbone.data_config["columns"]
    xtr, xva = rows_of(train_items, cols), rows_of(val_items, cols)
    with np.errstate(all="ignore"):
        fill = np.nan_to_num(np.nanmean(xtr, axis=0)) if len(xtr) else np.zeros(len(cols), np.float32)
    for x in (xtr, xva):
        bad = ~np.isfinite(x)
        x[bad] = np.broadcast_to(fill, x.shape)[bad]
    return xtr, xva
