"""Run KKA's knowledge stage alone: representative normals -> LLM-written anomaly descriptions (+ rejects).

Entry point for `python jobs/generate_descriptions.py` and `ray job submit -- python jobs/generate_descriptions.py`;
the code and its options: kka_ray/commands/generate_descriptions.py (`--help`).
"""

from kka_ray.commands.generate_descriptions import main

if __name__ == "__main__":
    main()
