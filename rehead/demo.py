"""``rehead demo``: the main job on a built-in default, offline.

Transfer the default backbone (the packaged ImageNet EfficientNet-Lite2) to scikit-learn's handwritten digits
(UCI optical digits, shipped inside scikit-learn): 50 images per class, 8x8 pixels
upscaled, an 80/20 stratified split, extract strategy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path, per_class: int = 50, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = rng.choice(np.flatnonzero(d.target == c), per_class, replace=False)
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in idx:
            digit_image(d.images[i]).save(root / str(c) / f"{i}.png")
    return root


def digit_image(pixels: np.ndarray) -> Image.Image:
    """One of scikit-learn's 8x8 digits (values 0-16) as a 64x64 RGB image."""
    return Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((64, 64), Image.NEAREST).convert("RGB")


def run_demo(out: str = "runs/demo", overwrite: bool | None = None, echo=print):
    """``overwrite``: replace ``out``; None: only when it holds an earlier demo run (the demo is run
    twice; another run there is the user's, kept unless they say so)."""
    from .config import DEFAULT_MODEL
    from .features import default_cache_dir
    from .fit import fit
    from .rundir import RunDir
    data = default_cache_dir() / "demo" / "digits"
    if overwrite is None:
        overwrite = _is_demo_run(Path(out), data)
    RunDir.check_free(out, overwrite)  # a folder of the user's is refused before the digits are written
    if not data.exists():
        echo(f"writing scikit-learn's digits as images to {data}")
        write_digits(data)
    echo(f"fitting a new head on {DEFAULT_MODEL} (ImageNet) for 10-class digits")
    return fit(str(data), model=DEFAULT_MODEL, out=out, strategy="extract", overwrite=overwrite,
               echo=echo)


def _is_demo_run(out: Path, data: Path) -> bool:
    import yaml
    try:
        said = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("data")
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return bool(said) and Path(str(said)).resolve() == data.resolve()
