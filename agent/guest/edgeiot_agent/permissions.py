"""Which data types a semantic model may read: granted at install, enforced on every record.

Why: an application installs its model into its users' proxy VMs together with the data
types it may read. A model that declares it reads a type it was not granted is refused at
install; at run time the model is fed only records of types both declared and granted, so
even a model that changes its mind never sees anything else.
"""

from __future__ import annotations

from .classify import DATA_TYPES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class PermissionDenied(Exception):
    """A model asked for a data type it was not granted (or an unknown type)."""


def check_grants(model: str, reads: Iterable[str], grants: Iterable[str]) -> frozenset[str]:
    """The types the model may see; raises PermissionDenied if it reads beyond its grants."""
    granted = frozenset(grants)
    unknown = sorted(granted - DATA_TYPES)
    if unknown:
        raise PermissionDenied(f"unknown data type(s) granted: {', '.join(unknown)}")
    wanted = frozenset(reads)
    missing = sorted(wanted - granted)
    if missing:
        raise PermissionDenied(f"model {model!r} reads {', '.join(missing)}, "
                               f"which the application was not granted")
    return wanted & granted


class Gate:
    """Per-installed-model filter applied before every `feed`."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self.refused = 0

    def admits(self, dtype: str) -> bool:
        if dtype in self.allowed:
            return True
        self.refused += 1
        return False
