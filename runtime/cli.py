"""The ``sopflow`` command line.

SOP-only commands (``validate``, ``graph``, ``schema``) never import Ray; the
execution commands live in :mod:`runtime._cli_exec` and import it on demand. A
command imports only the module that defines it (see ``_COMMANDS``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import click


_COMMANDS = {
    **dict.fromkeys(("validate", "graph", "schema"), "runtime._cli_sop"),
    **dict.fromkeys(("run", "status", "wait", "result", "cancel", "pause", "resume", "list"), "runtime._cli_exec"),
    **dict.fromkeys(("history", "export", "import", "replay", "recover", "decide"), "runtime._cli_log"),
    **dict.fromkeys(("backup", "check"), "runtime._cli_store"),
    "metrics": "runtime._cli_metrics",
    "compare": "runtime._cli_compare",
    "logs": "runtime._cli_logs",
    **dict.fromkeys(("deploy", "undeploy", "emit", "triggers"), "runtime._cli_triggers"),
    "batch": "runtime._cli_batch",
    "suggest": "runtime._cli_suggest",
    "resources": "runtime._cli_resources",
}
"""Which module defines each command: a command imports only its own module, so ``sopflow status``
does not pay for the SOP model (pydantic, YAML, jinja2) it never uses."""


class _LazyGroup(click.Group):
    """A group that imports a command's module when the command is asked for.

    A name missing from ``_COMMANDS`` (a command added without an entry there) loads every
    module, so it is found anyway, only slower; ``--help`` loads them all to list them.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in dict.fromkeys(_COMMANDS.values()):
            self._load(module)
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            for module in [_COMMANDS[name]] if name in _COMMANDS else dict.fromkeys(_COMMANDS.values()):
                self._load(module)
        return self.commands.get(name)

    def _load(self, module_name: str) -> None:
        if module_name in self._loaded:
            return
        self._loaded.add(module_name)
        module = importlib.import_module(module_name)
        if hasattr(module, "register_commands"):
            module.register_commands(self)
        else:  # runtime._cli_sop: its commands are module attributes
            for name, owner in _COMMANDS.items():
                if owner == module_name:
                    self.add_command(getattr(module, name))

    @property
    def _loaded(self) -> set[str]:
        return self.__dict__.setdefault("_loaded_modules", set())


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sopflow")
@click.option("--verbose", "-v", is_flag=True,
              help="Also show Ray's own messages (worker logs, raylet warnings such as 'A worker died').")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Run standard operating procedures (SOPs) on Ray."""
    ctx.obj = {"verbose": verbose}
    # Like `python -m`, resolve `python:<module>:<function>` handlers from the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _json_dump(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    main()
