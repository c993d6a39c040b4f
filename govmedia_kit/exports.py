"""Spreadsheet exports (CSV, XLSX) that cannot carry a formula (CSV injection, OWASP).

Cells of the exports hold text people typed (an account's name and handle, a responsible
person's name, a unit's name). A spreadsheet program treats a cell beginning with `=`, `+`,
`-` or `@` as a formula, and a tab or carriage return at the start lets one slip past a
naive check; such a formula can run commands (DDE) or send the sheet's contents away when
the regulator opens the file. So, per OWASP's CSV Injection guidance:

- CSV: a text cell beginning with one of those characters gets a leading apostrophe
  (`'=1+1`), which spreadsheet programs show as text and never evaluate. The apostrophe is
  visible to a program that reads the CSV as data: the export is meant for people.
- XLSX: every text cell is written as a string (openpyxl would make `=…` a formula) and one
  beginning with those characters carries the cell style's `quotePrefix`, Excel's own mark for
  "text that looks like a formula": the value stays exactly as typed, shown as text, and stays
  text when someone edits the cell.

Numbers and dates are written as they are (a negative number is not text). Every export of
the platform goes through `csv_rows`/`safe_cell` or `xlsx_append`.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_like(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_STARTS)


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: `'` before text that could start a formula."""
    return "'" + value if formula_like(value) else value


def csv_text(header: Iterable[Any], rows: Iterable[Iterable[Any]], bom: bool = True) -> str:
    """CSV with every cell neutralised (the header too), with a BOM so that spreadsheet
    software reads the Chinese as UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([safe_cell(v) for v in header])
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return ("\ufeff" if bom else "") + out.getvalue()


def xlsx_append(sheet, values: Iterable[Any]) -> None:
    """Append a row to an openpyxl worksheet: text as strings (never formulas), and text that
    looks like a formula marked with quotePrefix."""
    sheet.append(list(values))
    for cell in sheet[sheet.max_row]:
        if isinstance(cell.value, str):
            cell.data_type = "s"
            if formula_like(cell.value):
                cell.quotePrefix = True
