"""Print the end-of-run report of a KKA run folder (its report.md).

    kka report RUN
"""

import argparse
import sys

from kka_ray.store import RunStore


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a KKA run folder")
    args = p.parse_args(argv)
    store = RunStore(args.run)
    if not store.exists("report.md"):
        sys.exit(f"error: {args.run} has no report.md (not a KKA run folder, or the run has not finished; resume it "
                 f"with: kka resume {args.run})")
    print(store.read_text("report.md"))
