"""Hash one file on the investigator's machine: exact digests of its bytes and PDQ of its pixels.

Images never leave the machine; only these values do. Every failure becomes an outcome value rather
than an exception, because one damaged or hostile file in a seizure of a million must not stop the
run, and the investigator must learn which files were not hashed and why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image, UnidentifiedImageError

# Big enough to keep syscalls rare, small enough that a 50 GB video never sits in memory.
CHUNK_BYTES = 1 << 20
# Meta's reference hashers shrink larger images to at most 512 px a side before PDQ (the Python
# one with `thumbnail`, as here); PDQ itself works on a 64x64 reduction, so this loses nothing
# and keeps memory flat however large the picture.
PDQ_MAX_SIDE = 512
PDQ_BITS = 256


@dataclass(frozen=True)
class ImageHashes:
    """A decodable image: the digests of its exact bytes and the PDQ of its pixels as stored."""

    path: Path
    size_bytes: int
    md5: bytes
    sha1: bytes
    sha256: bytes
    pdq: bytes
    pdq_quality: int


@dataclass(frozen=True)
class NotAnImage:
    """No image format Pillow knows; left out rather than hashed so the output lists images only."""

    path: Path


@dataclass(frozen=True)
class Unreadable:
    """The file could not be read or decoded; `reason` is the OS's or the decoder's own words."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Undecodable:
    """An image the decoder cannot decode (damaged, truncated, too large to decode safely):
    its exact hashes need no decoding and are kept; it has no PDQ. `reason` says why."""

    path: Path
    reason: str
    digests: Digests


HashOutcome = ImageHashes | Undecodable | NotAnImage | Unreadable


@dataclass(frozen=True)
class Digests:
    size_bytes: int
    md5: bytes
    sha1: bytes
    sha256: bytes


def hash_file(path: Path) -> HashOutcome:
    """Hash `path` if it is a readable image; never raises for anything the file itself causes.

    The file is opened once and both the decoder and the digests read that one descriptor, so the
    PDQ and the exact hashes describe the same file even if the path is swapped meanwhile.
    """
    try:
        stream = _open_regular_file(path)
    except OSError as exc:
        return Unreadable(path, _os_reason(exc))
    with stream:
        decoded: tuple[bytes, int] | None = None
        failure = ""
        try:
            decoded = _pdq_of_stream(stream)
        except UnidentifiedImageError:
            return NotAnImage(path)
        except Image.DecompressionBombError as exc:
            failure = f"image too large to decode safely ({exc})"
        except OSError as exc:
            if exc.errno is not None:
                return Unreadable(path, _os_reason(exc))
            failure = f"damaged image ({exc})"
        except Exception as exc:
            # Decoders raise many types on crafted input (ValueError, EOFError, struct.error...).
            failure = f"damaged image ({type(exc).__name__}: {exc})"
        try:
            stream.seek(0)
            digests = digest_stream(stream)
        except OSError as exc:
            return Unreadable(path, _os_reason(exc))
    if decoded is None:  # exact hashes need no decoding
        return Undecodable(path, failure, digests)
    pdq, quality = decoded
    return ImageHashes(
        path, digests.size_bytes, digests.md5, digests.sha1, digests.sha256, pdq, quality
    )


def _open_regular_file(path: Path) -> BinaryIO:
    """Open for reading without blocking: a FIFO planted in a seized tree would hang `open()`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def digest_stream(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Digests:
    """MD5, SHA-1 and SHA-256 in one pass over the stream, in fixed-size chunks.

    MD5 and SHA-1 identify files that partners already catalogue under them; they protect nothing,
    hence `usedforsecurity=False` (which also lets them run on FIPS-mode workstations).
    """
    md5 = hashlib.md5(usedforsecurity=False)
    sha1 = hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()
    size = 0
    while chunk := stream.read(chunk_bytes):
        md5.update(chunk)
        sha1.update(chunk)
        sha256.update(chunk)
        size += len(chunk)
    return Digests(size, md5.digest(), sha1.digest(), sha256.digest())


def _pdq_of_stream(stream: BinaryIO) -> tuple[bytes, int]:
    # Image.open reads only the header; the decompression-bomb guard runs here, before any pixels.
    # Decoder warnings about odd files would only scribble over the progress bar: silence them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(stream) as image:
            return pdq_of_image(image)


def pdq_of_image(image: Image.Image) -> tuple[bytes, int]:
    """PDQ hash (32 bytes, reference bit order) and quality 0-100 of the pixels as stored.

    EXIF orientation is deliberately not applied: partners hash the stored pixels too, and PDQ's
    dihedral variants are the place to match rotations.
    """
    image.thumbnail((PDQ_MAX_SIDE, PDQ_MAX_SIDE))
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    vector, quality = pdqhash.compute(rgb)
    return pdq_bytes_from_vector(vector), int(quality)


def pdq_bytes_from_vector(vector: Sequence[int] | npt.NDArray[np.integer]) -> bytes:
    """The reference byte form of pdqhash's 256-element bit vector.

    pdqhash builds the vector from the C++ `Hash256` words as bit k of the hash at index 255 - k,
    and the C++ `Hash256::format()` prints word 15 first; so packing the vector most significant
    bit first yields exactly the reference hex (checked in tests/core/test_filehash.py).
    """
    bits = np.asarray(vector, dtype=np.uint8)
    if bits.shape != (PDQ_BITS,):
        raise ValueError(f"a PDQ vector has {PDQ_BITS} bits, got shape {bits.shape}")
    if np.any(bits > 1):
        raise ValueError("a PDQ vector holds only 0 and 1")
    return np.packbits(bits, bitorder="big").tobytes()
