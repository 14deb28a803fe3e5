"""Command line of dynlrp.

    python -m dynlrp new-rule SomeOpBackward0 [--family F] [--dry-run] [--force] [--root DIR]
    python -m dynlrp rules-doc [--check] [--output docs/rules.md]

``new-rule`` scaffolds a rule stub and its conformance test (:mod:`dynlrp.scaffold`); ``rules-doc``
writes, or with ``--check`` verifies, the rules reference generated from the registry
(:mod:`dynlrp.rulesdoc`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dynlrp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new-rule", help="scaffold a rule and its conformance test for a node type",
                         description="Append a rule stub for NODE_TYPE to dynlrp/rules/<family>.py and write"
                                     " tests/rules_new/test_rule_<op>.py; both fail until the formula is written.")
    new.add_argument("node_type", help="the autograd node type, as out.grad_fn.name() prints it")
    new.add_argument("--family", help="rule module of dynlrp/rules (a new name creates and registers one);"
                                      " default: chosen from the node type's name and shapes")
    new.add_argument("--dry-run", action="store_true", help="print the changes as a diff, write nothing")
    new.add_argument("--force", action="store_true", help="write a scaffolded (unwritten) rule and its test again")
    new.add_argument("--root", help="the checkout to write into (holds dynlrp/ and tests/); default: this package's")
    doc = sub.add_parser("rules-doc", help="write docs/rules.md from the rule registry",
                         description="Generate the rules reference (node types, rules, formulas, presets).")
    doc.add_argument("--check", action="store_true", help="exit 1 if the file differs from the live registry")
    doc.add_argument("--output", help="where the reference goes (default: docs/rules.md of this checkout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2: a usage error, 1: ``--check`` found a stale file)."""
    args = _parser().parse_args(argv)
    if args.command == "new-rule":
        from .scaffold import ScaffoldError, new_rule

        try:
            plan = new_rule(args.node_type, root=args.root, family=args.family, dry_run=args.dry_run,
                            force=args.force)
        except ScaffoldError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.dry_run:
            print("".join(change.diff(plan.root) for change in plan.changes), end="")
            print("(dry run: nothing written)")
        print(plan.summary())
        return 0
    from . import rulesdoc

    path = args.output or rulesdoc.DOC_PATH
    if args.check:
        problem = rulesdoc.check(path)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    print(f"wrote {rulesdoc.write(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
