"""The emulated world, deterministic from a seed: a street of parking spots, a grid of
traffic areas with their speeds, faces (one of them the missing child), heart rates.

Why pure and shared: the emulator draws its streams from it and writes down what it drew
(the ground truth), and tests compute the answers the applications must give from the
same functions, so "answers match the emulated data" is checked exactly.
"""

from __future__ import annotations

import math
import random

SPOT_DEG = 1e-4
AREA_DEG = 0.01
FACE_SIDE = 32
FACE_BLOCKS = 8


def spot_position(street_lat: float, start_lon: float, index: int) -> tuple[float, float]:
    """Centre of the index-th kerbside spot along a street running east."""
    return round(street_lat, 4), round(start_lon + index * SPOT_DEG, 4)


def occupancy(seed: int, spots: int) -> list[bool]:
    """True = occupied; deterministic per seed, never all free or all occupied."""
    rng = random.Random(seed)
    taken = [rng.random() < 0.5 for _ in range(spots)]
    if spots > 1:
        taken[0], taken[-1] = True, False
    return taken


def area_name(row: int, col: int) -> str:
    return f"A{row}_{col}"


def area_centre(row: int, col: int) -> tuple[float, float]:
    return (row + 0.5) * AREA_DEG, (col + 0.5) * AREA_DEG


def face_pattern(seed: int) -> list[int]:
    """8x8 grey levels of one person's face (a stand-in for real features)."""
    rng = random.Random(f"face-{seed}")
    return [rng.randrange(30, 226) for _ in range(FACE_BLOCKS * FACE_BLOCKS)]


def face_image(seed: int, variant: int, noise: int = 14, side: int = FACE_SIDE) -> bytes:
    """A side x side grey frame of face `seed`, upscaled, shifted in brightness and noised
    differently for each `variant` (another camera, another moment)."""
    pattern = face_pattern(seed)
    rng = random.Random(f"shot-{seed}-{variant}")
    shift = rng.randrange(-10, 11)
    cell = side // FACE_BLOCKS
    out = bytearray(side * side)
    for y in range(side):
        for x in range(side):
            level = pattern[(y // cell) * FACE_BLOCKS + x // cell] + shift
            out[y * side + x] = max(0, min(255, level + rng.randint(-noise, noise)))
    return bytes(out)


def to_pgm(px: bytes, side: int = FACE_SIDE) -> bytes:
    return f"P5\n{side} {side}\n255\n".encode() + px


def heart_rate(t: float, rest: float = 68.0) -> float:
    return round(rest + 6.0 * math.sin(t / 7.0), 1)
