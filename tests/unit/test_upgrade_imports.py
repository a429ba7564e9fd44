"""SIGUSR2 checks that the installed code starts by importing cli.RUN_MODULES in a new
interpreter: the list must name every module `suite-agent run` imports itself."""

from __future__ import annotations

import ast
import importlib
import inspect

from suite_agent import cli


def test_the_upgrade_check_imports_every_module_run_imports() -> None:
    tree = ast.parse(inspect.getsource(cli.cmd_run))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("suite_agent"):
            for alias in node.names:  # `from suite_agent.core import carried` imports a module
                try:
                    imported.add(importlib.import_module(f"{node.module}.{alias.name}").__name__)
                except ModuleNotFoundError:  # a name in node.module
                    imported.add(node.module)
    assert imported, "cmd_run imports its parts inside the function"
    assert imported <= set(cli.RUN_MODULES), imported - set(cli.RUN_MODULES)
