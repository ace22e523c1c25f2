"""Semantic models a proxy VM runs for its users' applications (pure, stdlib only).

`MODELS` maps the name an application installs to the model class. Each class has
`READS` (data types it needs), `SCHEMA` (metadata it emits) and `feed(record) -> [dict]`.
"""

from __future__ import annotations

from .base import Record
from .faces import FaceMatch
from .parknet import ParkNet
from .traffic import Traffic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MODELS: dict[str, Any] = {"parknet": ParkNet, "traffic": Traffic, "faces": FaceMatch}

__all__ = ["MODELS", "FaceMatch", "ParkNet", "Record", "Traffic"]
