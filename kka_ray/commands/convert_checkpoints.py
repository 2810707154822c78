"""Convert the Deep SAD checkpoints of run folders made before safetensors (deepsad.pt, a pickle) once.

    python jobs/convert_checkpoints.py RUN_FOLDER [RUN_FOLDER ...]
Only if you trust where the folders came from: the old files are read with torch's weights_only loader
(tensors and plain values), rewritten as deepsad.safetensors, and removed.
"""

import sys

from kka_ray.detectors.deepsad.checkpoint import convert


def main(argv: list[str] | None = None) -> None:
    roots = sys.argv[1:] if argv is None else argv
    if not roots or roots[0].startswith("-"):
        sys.exit(__doc__)
    for root in roots:
        print(f"{root}: converted {len(convert(root))} checkpoint(s)")
