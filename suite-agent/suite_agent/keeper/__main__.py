"""``python -m suite_agent.keeper --state-dir DIR [--stop-timeout SECONDS]``: run the keeper.

It runs until the brain asks it to shut down (and its last child is gone) or, with no brain
connected, until SIGTERM; exit status 3 means another keeper already holds DIR. Normally the brain
starts it with :func:`suite_agent.keeper.client.start_keeper`.
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m suite_agent.keeper --state-dir DIR [--stop-timeout SECONDS]"


def main(argv: list[str]) -> int:
    # argparse would cost the keeper more memory than all of this module: two options are
    # parsed by hand.
    options: dict[str, str] = {}
    args = list(argv)
    while args:
        name = args.pop(0)
        if name in ("-h", "--help"):
            print(USAGE)
            return 0
        key, _, value = name.partition("=")
        if key not in ("--state-dir", "--stop-timeout"):
            print(f"{USAGE}\nunknown option {name!r}", file=sys.stderr)
            return 2
        if not value:
            if not args:
                print(f"{USAGE}\n{key} needs a value", file=sys.stderr)
                return 2
            value = args.pop(0)
        options[key] = value
    if "--state-dir" not in options:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        stop_timeout = float(options.get("--stop-timeout", "10"))
    except ValueError:
        stop_timeout = -1
    if not stop_timeout >= 0:
        print(f"{USAGE}\n--stop-timeout must be a number of seconds >= 0", file=sys.stderr)
        return 2

    from .server import Keeper

    return Keeper(options["--state-dir"], stop_timeout).run()


def run() -> None:
    """Run the keeper with this process's arguments and exit with its status."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
