"""Controls for the invoice-reconciliation example."""

from __future__ import annotations


def check_totals(rows: list[dict], statement: dict) -> dict:
    """Compare ledger rows with the bank statement's total; count the mismatching days."""
    ledger_by_day: dict[str, float] = {}
    for row in rows:
        ledger_by_day[row["date"]] = ledger_by_day.get(row["date"], 0.0) + float(row["amount"])
    bank_by_day = {d["date"]: float(d["total"]) for d in statement.get("days", [])}
    days = sorted(set(ledger_by_day) | set(bank_by_day))
    mismatched = [d for d in days if abs(ledger_by_day.get(d, 0.0) - bank_by_day.get(d, 0.0)) > 0.005]
    return {"days": len(days), "mismatches": len(mismatched), "mismatched_days": mismatched}
