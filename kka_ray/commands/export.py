"""Export a run's anomaly set A_t as an anomalib Folder layout or this project's image_folder layout.

    kka export RUN DEST --format anomalib|image_folder [--iteration T] [--hard-only]
"""

import argparse

from kka_ray.export import export_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a KKA run folder")
    p.add_argument("dest", help="a new folder to write (must not exist)")
    p.add_argument("--format", required=True, choices=["anomalib", "image_folder"])
    p.add_argument("--iteration", type=int, default=None, help="t of A_t (default: the last finished)")
    p.add_argument("--hard-only", action="store_true", help="only the anomalies judged hard when they entered A_t")
    args = p.parse_args(argv)
    manifest = export_run(args.run, args.dest, args.format, args.iteration, args.hard_only)
    print(f"{args.dest}: A_{manifest['iteration']} of {args.run} as {args.format} ({manifest['counts']})")
