"""Users: each has a proxy VM (its own by default; users who trust each other may share).

Why separate from proxies.py: adding a user is a record; giving it a proxy VM is a VM
lifecycle operation that needs a fleet. `orchestrator user add NAME --node fog1` does both.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import UserError
from orchestrator.store import Store

USER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def validate_user(name: str) -> str:
    if not USER_NAME.match(name):
        raise UserError(f"invalid user name {name!r}: 1-31 of [a-z0-9-], letter first")
    return name


def proxy_name(user: str) -> str:
    return f"px-{user}"


class UserRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str, share_with: str | None = None) -> dict[str, Any]:
        """Record a user; with `share_with`, it uses that (trusted) user's proxy VM."""
        validate_user(name)
        if self.store.user(name) is not None:
            raise UserError(f"user {name!r} already exists")
        proxy = None
        if share_with is not None:
            other = self.store.user(share_with)
            if other is None:
                raise UserError(f"unknown user {share_with!r} to share a proxy with")
            proxy = other["proxy_vm"] or proxy_name(share_with)
        self.store.add_user(name, proxy)
        return {"name": name, "proxy_vm": proxy}

    def require(self, name: str) -> dict[str, Any]:
        user = self.store.user(name)
        if user is None:
            raise UserError(f"unknown user {name!r}")
        return user
