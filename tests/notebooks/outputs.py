"""Reading an executed notebook's outputs, and running headless chromium on a page."""

from __future__ import annotations

import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

def cell(nb, tag: str):
    """The one code cell tagged ``tag``."""
    [found] = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    return found


def html_outputs(nb_cell) -> list[str]:
    return [o["data"]["text/html"] for o in nb_cell.outputs if "text/html" in o.get("data", {})]


def stream(nb_cell) -> str:
    return "".join(o["text"] for o in nb_cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")


class _Tables(HTMLParser):
    """Every <table> of an HTML text as rows of cell texts (header row included), browser-lenient."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def frame_rows(html: str) -> tuple[list[str], list[list[str]]]:
    """A pandas DataFrame's HTML as (columns, rows), the index column dropped."""
    [table] = tables(html)
    head, *rows = table
    return head[1:], [r[1:] for r in rows]


def run_chromium(binary: str, page: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Headless chromium on a local file, with a profile of its own (parallel runs do not share one)."""
    with tempfile.TemporaryDirectory(prefix="sopflow-chromium-") as profile:
        return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--no-first-run",
                               *args, page.as_uri()],
                              capture_output=True, text=True, timeout=timeout)
