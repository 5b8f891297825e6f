"""Synthetic test images for the demo, tests and benchmarks: deterministic per seed, with enough
structure that PDQ reports a high quality, plus the edits an offender's re-share typically applies.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = (320, 240)


def synthetic_image(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A picture of gradients and shapes; different seeds give unrelated PDQ hashes."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    for y in range(height):
        mix = y / max(1, height - 1)
        colour = tuple(int(a + (b - a) * mix) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (width, y)], fill=colour)
    for _ in range(rng.randrange(16, 28)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = min(width, x0 + rng.randrange(10, width // 3))
        y1 = min(height, y0 + rng.randrange(10, height // 3))
        fill = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice((draw.rectangle, draw.ellipse))
        shape([x0, y0, x1, y1], fill=fill)
    return image.filter(ImageFilter.GaussianBlur(1))


def resized(image: Image.Image, factor: float = 0.75) -> Image.Image:
    width, height = image.size
    return image.resize((max(1, int(width * factor)), max(1, int(height * factor))))


def cropped(image: Image.Image, fraction: float = 0.01) -> Image.Image:
    width, height = image.size
    dx, dy = int(width * fraction), int(height * fraction)
    return image.crop((dx, dy, width - dx, height - dy))


def save_images(folder: Path, seeds: Iterable[int], edit: str = "") -> Path:
    """The images of `seeds` written into `folder`: PNG as drawn, or a lossy JPEG re-share
    ("resized" or "cropped")."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        image = synthetic_image(seed)
        if edit == "resized":
            resized(image).save(folder / f"resized-{seed:03d}.jpg", quality=40)
        elif edit == "cropped":
            cropped(image).save(folder / f"cropped-{seed:03d}.jpg", quality=40)
        else:
            image.save(folder / f"img{seed:03d}.png")
    return folder
