"""``sopflow compare``: run one SOP in both modes and say whether the runs came to the same result.

Exit 0 when they are equivalent, 1 when they differ (the diff is printed) or a run
did not end in time, 2 when the SOP, its inputs or its modes make a comparison
impossible (nothing is submitted then).
"""

from __future__ import annotations

import json
import sys

import click

from runtime._console import console

_ADDRESS_HELP = "Ray cluster to use (host:port or ray://host:10001); default $RAY_ADDRESS, else this machine's."


def register_commands(main: click.Group) -> None:
    @main.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=VALUE", help="An SOP input (repeatable).")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--timeout", type=float, default=None, help="Give up waiting for the two runs after this many "
                                                                "seconds (exit 1; they keep running).")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def compare(file: str, inputs: tuple[str, ...], address: str | None, timeout: float | None, fmt: str) -> None:
        """Run an SOP once as a System Design Run and once as an Agent Centric Run; compare them.

        Equivalent means the same execution status, equal SOP outputs, every step ended the same
        way (an agent's skip and a false `when` are both `skipped`) and equal outputs of the steps
        that succeeded. Exits 0 when equivalent, 1 when not (the differences are printed), 2 when
        the SOP cannot run in both modes or does not validate.
        """
        import runtime._cli_exec as cli_exec
        from runtime._cli_sop import print_problems
        from runtime.compare import check_both_modes
        from runtime.errors import SubmissionError
        from runtime.registry import Registry
        from sop import check_file
        from sop.errors import SopflowError, SopValidationError

        report = check_file(file, handlers=Registry())
        if not report.ok or report.sop is None:
            print_problems(report, console(stderr=True))
            sys.exit(2)
        try:
            check_both_modes(report.sop, file)  # before a cluster starts: nothing to run
        except SubmissionError as e:
            raise click.UsageError(str(e)) from None
        pairs = cli_exec._parse_inputs(inputs)
        engine, temporary = cli_exec._connect(address, start_if_missing=True)
        err = console(stderr=True)
        err.print(f"running {report.sop.sop} once in each mode" + (" on a temporary local Ray cluster" if temporary
                                                                  else ""))
        try:
            comparison = engine.compare(file, pairs, timeout=timeout, inputs_from_text=True)
        except SubmissionError as e:  # inputs that do not fit: nothing was submitted
            raise click.UsageError(str(e)) from None
        except SopValidationError as e:  # the file changed since it was checked
            raise click.UsageError(str(e)) from None
        except SopflowError as e:  # a run did not end in time, the engine failed: no verdict
            raise click.ClickException(str(e)) from None
        if fmt == "json":
            click.echo(json.dumps(comparison.to_dict(), indent=2, default=str))
        else:
            click.echo(str(comparison))
        sys.exit(0 if comparison.equivalent else 1)
