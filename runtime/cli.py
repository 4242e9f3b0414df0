"""The ``sopflow`` command line.

SOP-only commands (``validate``, ``graph``, ``schema``) never import Ray; the
execution commands live in :mod:`runtime._cli_exec` and import it on demand.
"""

from __future__ import annotations

import json
import os
import sys

import click

from runtime._cli_sop import graph, schema, validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


main.add_command(validate)
main.add_command(graph)
main.add_command(schema)

from runtime._cli_exec import register_commands as _register_exec  # noqa: E402
from runtime._cli_log import register_commands as _register_log  # noqa: E402
from runtime._cli_store import register_commands as _register_store  # noqa: E402

_register_exec(main)
_register_log(main)
_register_store(main)


def _json_dump(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    main()
