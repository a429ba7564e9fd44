"""The keeper: a small standard-library process that holds the services and their pipes.

It is the parent (and child subreaper) of every service, writes their output to log files, keeps
their recent lines, reaps and records every exit, and answers requests on a unix socket in its
state directory. It decides nothing: the agent (the brain) asks it to spawn, signal and forget.
The agent can die, or re-execute itself, and find everything where it left it. See docs/keeper.md.

Nothing here may import anything but the standard library and this package: the keeper must stay
small (its resident size is part of what it promises), so this file imports nothing either.
"""
