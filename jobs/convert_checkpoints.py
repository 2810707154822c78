"""Convert the Deep SAD checkpoints of run folders made before safetensors (deepsad.pt, a pickle) once.

Entry point for `python jobs/convert_checkpoints.py` and `ray job submit -- python jobs/convert_checkpoints.py`; the
code and its options: kka_ray/commands/convert_checkpoints.py (`--help`).
"""

from kka_ray.commands.convert_checkpoints import main

if __name__ == "__main__":
    main()
