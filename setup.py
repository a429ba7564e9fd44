"""The metadata is in setup.cfg; this adds the keeper's native spawner, an optional extension:
without a C compiler the package installs without it and the keeper spawns from Python."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("suite_agent.keeper._spawn", ["suite-agent/suite_agent/keeper/_spawn.c"],
                             optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra"])])
