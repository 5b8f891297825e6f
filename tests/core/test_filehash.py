"""Local file hashing: exact digests, PDQ in the reference bit order, and every failure reported."""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pdqhash import bindings as pdq_bindings
from PIL import Image, ImageDraw

from services.core.filehash import (
    ImageHashes,
    NotAnImage,
    Undecodable,
    Unreadable,
    digest_stream,
    hash_file,
    pdq_bytes_from_vector,
)

PDQ_MATCH_THRESHOLD = 31


def draw_test_image(seed: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A picture with enough edges and shapes that PDQ rates it well (quality >= 50)."""
    rng = random.Random(seed)
    width, height = size
    image = Image.linear_gradient("L").resize(size).rotate(rng.randrange(360)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(width // 8, width // 2)
        y1 = y0 + rng.randrange(height // 8, height // 2)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = rng.choice(("ellipse", "rectangle", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randrange(2, 9))
    return image


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def hashed(outcome: object) -> ImageHashes:
    assert isinstance(outcome, ImageHashes), outcome
    return outcome


# --- bit order ------------------------------------------------------------------------------------


def reference_format(words: list[int]) -> str:
    """The C++ `Hash256::format()`: `%04hx` of w[15] first, down to w[0]."""
    return "".join(f"{words[i]:04x}" for i in range(15, -1, -1))


@pytest.mark.parametrize(
    ("word", "value", "expected"),
    [
        (15, 0x8000, "8000" + "0" * 60),
        (15, 0x0001, "0001" + "0" * 60),
        (0, 0x0001, "0" * 60 + "0001"),
        (0, 0x8000, "0" * 60 + "8000"),
        (7, 0x1234, "0" * 32 + "1234" + "0" * 28),
    ],
)
def test_packed_vector_prints_like_the_reference(word: int, value: int, expected: str) -> None:
    words = [0] * 16
    words[word] = value
    assert reference_format(words) == expected
    assert pdq_bytes_from_vector(pdq_bindings.hash_to_vector(words)).hex() == expected


@given(st.lists(st.integers(0, 0xFFFF), min_size=16, max_size=16))
def test_any_words_pack_to_the_reference_hex(words: list[int]) -> None:
    vector = pdq_bindings.hash_to_vector(words)
    assert pdq_bytes_from_vector(vector).hex() == reference_format(words)


def dct_basis(u: int, v: int) -> np.typing.NDArray[np.float64]:
    """The 64x64 image whose PDQ DCT has energy only at output slot (u, v) (reference D matrix)."""
    k = np.arange(64)
    rows = np.cos(math.pi / 128 * (u + 1) * (2 * k + 1))
    cols = np.cos(math.pi / 128 * (v + 1) * (2 * k + 1))
    return np.outer(rows, cols)


def test_image_with_a_known_pdq_hashes_to_it(tmp_path: Path) -> None:
    """End to end against the reference definition, not against pdqhash itself.

    PDQ sets bit `i*16+j` when DCT slot (i, j) exceeds the median (pdqhashing.cpp); `setBit(k)`
    sets bit `k & 15` of word `k >> 4`; `format()` prints word 15 first. Each slot gets a strong
    positive or negative coefficient, exactly half positive, so the median splits them cleanly.
    A 64x64 image passes PDQ's blur and decimation unchanged.
    """
    rng = random.Random(7)
    set_bits = set(rng.sample(range(256), 128))
    pixels = np.full((64, 64), 128.0)
    for k in range(256):
        pixels += (3.0 if k in set_bits else -3.0) * dct_basis(k // 16, k % 16)
    assert pixels.min() > 0 and pixels.max() < 255
    path = save(Image.fromarray(np.rint(pixels).astype(np.uint8), "L"), tmp_path / "basis.png")
    words = [sum(1 << (k & 15) for k in set_bits if k >> 4 == w) for w in range(16)]

    assert hashed(hash_file(path)).pdq.hex() == reference_format(words)


def test_vector_of_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="256 bits"):
        pdq_bytes_from_vector([1, 0, 1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        pdq_bytes_from_vector([2] * 256)


# --- exact digests --------------------------------------------------------------------------------


@given(st.binary(max_size=5000), st.integers(1, 700))
def test_streamed_digests_equal_whole_digests(data: bytes, chunk: int) -> None:
    digests = digest_stream(io.BytesIO(data), chunk_bytes=chunk)
    assert digests.size_bytes == len(data)
    assert digests.md5 == hashlib.md5(data).digest()
    assert digests.sha1 == hashlib.sha1(data).digest()
    assert digests.sha256 == hashlib.sha256(data).digest()


def test_image_gets_digests_of_its_exact_bytes_and_a_good_pdq(tmp_path: Path) -> None:
    path = save(draw_test_image(1), tmp_path / "a.png")
    data = path.read_bytes()
    result = hashed(hash_file(path))
    assert result.path == path
    assert result.size_bytes == len(data)
    assert result.md5 == hashlib.md5(data).digest()
    assert result.sha1 == hashlib.sha1(data).digest()
    assert result.sha256 == hashlib.sha256(data).digest()
    assert len(result.pdq) == 32
    assert result.pdq_quality >= 50


# --- perceptual behaviour -------------------------------------------------------------------------


def test_reencoded_and_resized_copies_stay_within_the_match_threshold(tmp_path: Path) -> None:
    original = draw_test_image(2, (600, 480))
    base = hashed(hash_file(save(original, tmp_path / "original.png")))
    copies = [
        save(original, tmp_path / "q70.jpg", quality=70),
        save(original.resize((540, 432)), tmp_path / "smaller.png"),
        save(original.resize((300, 240)), tmp_path / "half.jpg", quality=85),
        save(original.convert("P"), tmp_path / "palette.gif"),
    ]
    for copy in copies:
        result = hashed(hash_file(copy))
        assert result.sha256 != base.sha256
        assert hamming(result.pdq, base.pdq) <= PDQ_MATCH_THRESHOLD, copy.name


def test_different_images_are_far_apart(tmp_path: Path) -> None:
    pdqs = [hashed(hash_file(save(draw_test_image(s), tmp_path / f"{s}.png"))).pdq for s in (3, 4)]
    assert hamming(pdqs[0], pdqs[1]) > 2 * PDQ_MATCH_THRESHOLD


def test_stored_pixels_are_hashed_without_exif_rotation(tmp_path: Path) -> None:
    image = draw_test_image(5)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    plain = hashed(hash_file(save(image, tmp_path / "plain.jpg", quality=95)))
    tagged = hashed(hash_file(save(image, tmp_path / "tagged.jpg", quality=95, exif=exif)))
    assert hamming(plain.pdq, tagged.pdq) <= 4


# --- what is not hashed ---------------------------------------------------------------------------


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("exhibit 4, folder listing\n")
    assert hash_file(path) == NotAnImage(path)


def test_empty_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert hash_file(path) == NotAnImage(path)


def test_directory_is_unreadable_with_the_os_reason(tmp_path: Path) -> None:
    assert hash_file(tmp_path) == Unreadable(tmp_path, "Is a directory")


def test_dangling_symlink_is_unreadable_with_the_os_reason(tmp_path: Path) -> None:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "deleted.jpg")
    assert hash_file(link) == Unreadable(link, "No such file or directory")


def test_fifo_is_reported_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert hash_file(fifo) == Unreadable(fifo, "not a regular file")


def test_a_truncated_image_keeps_its_exact_hashes(tmp_path: Path) -> None:
    """Exact hashes need no decoding: a damaged image still gets them, marked as not decoded."""
    whole = save(draw_test_image(6), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    cut = whole[: len(whole) // 2]
    path.write_bytes(cut)
    outcome = hash_file(path)
    assert isinstance(outcome, Undecodable)
    assert outcome.reason.startswith("damaged image (")
    assert outcome.digests.sha256 == hashlib.sha256(cut).digest()
    assert outcome.digests.md5 == hashlib.md5(cut).digest()
    assert outcome.digests.size_bytes == len(cut)


def test_decompression_bomb_is_reported_not_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(draw_test_image(7, (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10,000 pixels is over twice the limit
    outcome = hash_file(path)
    assert isinstance(outcome, Undecodable)
    assert outcome.reason.startswith("image too large to decode safely (")
    assert outcome.digests.sha1 == hashlib.sha1(path.read_bytes()).digest()
