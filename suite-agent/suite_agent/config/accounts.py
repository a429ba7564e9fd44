"""Users and groups that services name but this host lacks.

Not a reason to reject a file: the account may be created later (by the same Ansible run, say),
and only that service fails, when it spawns. `validate` reports them; the agent logs them.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable, Mapping
from typing import Any

from .merge import Problem, Version

_LOOKUPS: tuple[tuple[str, Callable[[str], Any]], ...] = (("user", pwd.getpwnam), ("group", grp.getgrnam))


def missing_accounts(versions: Mapping[str, Version]) -> dict[str, list[Problem]]:
    """file -> a problem for each user or group name (not number) that does not exist here."""
    found: dict[str, list[Problem]] = {}
    for file, version in versions.items():
        for name, spec in version.config.services.items():
            for key, lookup in _LOOKUPS:
                account = getattr(spec, key)
                if not isinstance(account, str):
                    continue
                try:
                    lookup(account)
                except KeyError:
                    # The words the service's spawn error uses, so both read the same.
                    message = (
                        f"services.{name}.{key}: no such {key} {account!r} on this host; "
                        "the service cannot start until it exists"
                    )
                    found.setdefault(file, []).append(Problem(file, version.lines.value(name, key), message))
    return found
