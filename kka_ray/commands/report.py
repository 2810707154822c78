"""Print the end-of-run report of a KKA run folder (its report.md); --html (re)writes its viewer, report.html.

    kka report RUN [--html]
"""

import argparse
import sys

from kka_ray.loop import STATE
from kka_ray.store import RunStore
from kka_ray.viewer import write_viewer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a KKA run folder")
    p.add_argument("--html", action="store_true", help="write the run's self-contained viewer (report.html) from "
                   "its finished iterations, and print its path")
    args = p.parse_args(argv)
    store = RunStore(args.run)
    if args.html:
        if not store.exists(STATE):
            sys.exit(f"error: {args.run} has no {STATE} (not a KKA run folder, or no iteration finished)")
        state = store.read_state(STATE)
        print(write_viewer(store, args.run.rstrip("/").rsplit("/", 1)[-1], state["rows"], state["baseline"]))
        return
    if not store.exists("report.md"):
        sys.exit(f"error: {args.run} has no report.md (not a KKA run folder, or the run has not finished; resume it "
                 f"with: kka resume {args.run})")
    print(store.read_text("report.md"))
