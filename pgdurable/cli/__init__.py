"""The `pgdurable` command.

Exit status: 0 done; 1 `doctor` found a problem, or a confirmation was
declined; 2 bad usage or input, or a schema newer than this library; 3
the run, event or step is not found; 4 the database cannot be used
(unreachable, not migrated).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import click

from ..errors import (
    ConfigurationError,
    DurableError,
    InvalidEventError,
    NewerSchemaError,
    NotFoundError,
)
from .admin import migrate, prune, roles, schema, worker
from .events import events
from .runs import runs
from .status import dashboard, doctor, functions, workers

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              default=os.environ.get("PGDURABLE_LOG_LEVEL", "INFO").upper(), show_default=True)
def cli(log_level: str) -> None:
    """pgdurable: durable execution on your own PostgreSQL."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (migrate, roles, schema, prune, worker, runs, events, functions, workers, doctor,
                dashboard):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv); return the exit status."""
    try:
        status = cli.main(args=None if argv is None else list(argv), prog_name="pgdurable",
                          standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted: nothing done", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except NotFoundError as exc:
        return _fail(exc, 3)
    except (ConfigurationError, InvalidEventError, NewerSchemaError) as exc:
        return _fail(exc, 2)
    except DurableError as exc:
        return _fail(exc, 4)
    return status if isinstance(status, int) else 0


def _fail(exc: DurableError, status: int) -> int:
    print(f"pgdurable: {exc}", file=sys.stderr)
    return status
