"""The example ledger MCP server, backed by a real SQLite file.

Run it over stdio (what ``examples/invoice-reconciliation.yaml`` declares)::

    python -m examples.mcp.ledger                  # stdio
    python -m examples.mcp.ledger --http 8765      # streamable HTTP on http://127.0.0.1:8765/mcp

The database is ``$LEDGER_DB`` (default ``ledger.sqlite3`` in the current directory),
created and seeded on first start with the same rows every time: account ``ACME-001``
has one day whose ledger total disagrees with the bank statement (2026-03-03), account
``CLEAN-001`` has none. Tools:

- ``list_transactions(account)`` — the ledger rows, ``[{date, amount, reference}]``, oldest
  first, sent as JSON text (a list cannot be structured content without being wrapped in
  ``{"result": ...}``, and the step's output should be the list itself);
- ``bank_statement(account)`` — ``{"account", "days": [{date, total}]}``, sent as
  structured content with its output schema.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from pathlib import Path
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from mcp.server.mcpserver import MCPServer

# (account, date, amount in cents, reference): the ledger side.
_LEDGER = [
    ("ACME-001", "2026-03-01", 12000, "INV-1001"), ("ACME-001", "2026-03-01", 3050, "INV-1002"),
    ("ACME-001", "2026-03-02", 9999, "INV-1003"),
    ("ACME-001", "2026-03-03", 45000, "INV-1004"), ("ACME-001", "2026-03-03", 1500, "INV-1005"),
    ("CLEAN-001", "2026-03-01", 2500, "INV-2001"), ("CLEAN-001", "2026-03-02", 7000, "INV-2002"),
]
# (account, date, total in cents): the bank side; ACME-001 on 2026-03-03 is 15.00 short.
_BANK = [
    ("ACME-001", "2026-03-01", 15050), ("ACME-001", "2026-03-02", 9999), ("ACME-001", "2026-03-03", 45000),
    ("CLEAN-001", "2026-03-01", 2500), ("CLEAN-001", "2026-03-02", 7000),
]


class Day(TypedDict):
    date: str
    total: float


class Statement(TypedDict):
    account: str
    days: list[Day]


def open_db(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (and on first use create and seed) the ledger database at ``path``."""
    db = sqlite3.connect(path, check_same_thread=False)  # tools may run in worker threads
    with db:  # one transaction: a second server starting at the same time sees all rows or none
        db.execute("CREATE TABLE IF NOT EXISTS ledger (account TEXT, date TEXT, cents INTEGER, reference TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS bank (account TEXT, date TEXT, cents INTEGER)")
        if db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 0:
            db.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)", _LEDGER)
            db.executemany("INSERT INTO bank VALUES (?, ?, ?)", _BANK)
    return db


def build(db_path: str | os.PathLike[str]) -> MCPServer:
    """The server, reading ``db_path``."""
    db = open_db(db_path)
    # WARNING: the SDK's INFO line per request would fill the host's log (stderr is passed through).
    server = MCPServer("ledger", instructions="A ledger and its bank statements, by account.",
                       log_level=os.environ.get("LEDGER_LOG_LEVEL", "WARNING"))  # type: ignore[arg-type]

    @server.tool(structured_output=False)
    def list_transactions(account: str) -> str:
        """The ledger rows of ``account`` as a JSON list of {date, amount, reference}, oldest first."""
        rows = db.execute("SELECT date, cents, reference FROM ledger WHERE account = ? ORDER BY date, reference",
                          (account,)).fetchall()  # a bound parameter: the account is data, never SQL
        return json.dumps([{"date": d, "amount": c / 100, "reference": r} for d, c, r in rows])

    @server.tool()
    def bank_statement(account: str) -> Statement:
        """The bank's total per day for ``account``."""
        rows = db.execute("SELECT date, SUM(cents) FROM bank WHERE account = ? GROUP BY date ORDER BY date",
                          (account,)).fetchall()
        return {"account": account, "days": [{"date": d, "total": c / 100} for d, c in rows]}

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.mcp.ledger", description=__doc__.split("\n")[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind with --http (default 127.0.0.1)")
    args = parser.parse_args(argv)
    server = build(Path(os.environ.get("LEDGER_DB", "ledger.sqlite3")))
    if args.http is None:
        server.run()
    else:
        server.run("streamable-http", host=args.host, port=args.http)


if __name__ == "__main__":
    main()
