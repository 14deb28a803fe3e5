"""Command line: ``python -m model_zoo list [--select SPEC] [--no-params]``.

``list`` prints one row per entry: name, family, modality, attention implementations, tags, parameter
counts (millions) of the tiny and full configurations and the paper's node count. Parameters are
counted on the meta device (no memory, no initialisation), so 46B-parameter configurations list in
well under a second each.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .registry import Entry, ModelUnavailableError, select


def _params(entry: Entry, size: str) -> str:
    try:
        n = entry.num_params(size)
    except ModelUnavailableError:
        return "n/a"
    return f"{n / 1e6:.3f}" if size == "tiny" else f"{n / 1e6:,.1f}"


def rows(spec: str, params: bool = True) -> list[list[str]]:
    """Table rows (header first) for the entries selected by ``spec``."""
    header = ["name", "family", "modality", "attn", "tags", "params tiny (M)", "params full (M)", "paper nodes"]
    table = [header]
    for entry in select(spec):
        extra_tags = [t for t in entry.tags if t not in (entry.family, entry.modality)]
        if not entry.available():
            extra_tags.append("needs " + ",".join(entry.missing()))
        table.append([
            entry.name, entry.family, entry.modality, ",".join(entry.attn) or "-", ",".join(extra_tags),
            _params(entry, "tiny") if params else "-", _params(entry, "full") if params else "-",
            str(entry.paper_nodes or ""),
        ])
    return table


def format_table(table: list[list[str]]) -> str:
    """A markdown table with padded columns."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_zoo", description="The dynlrp model zoo.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the entries")
    listing.add_argument("--select", default="all", help="'all', names and/or tags, comma-separated")
    listing.add_argument("--no-params", action="store_true", help="skip parameter counting")
    args = parser.parse_args(argv)
    if args.command == "list":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = rows(args.select, params=not args.no_params)
        print(format_table(table))
        print(f"\n{len(table) - 1} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
