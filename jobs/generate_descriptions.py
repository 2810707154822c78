"""Run KKA's knowledge stage alone: representative normals -> LLM-written anomaly descriptions (+ rejects).

    python jobs/generate_descriptions.py --config configs/knowledge/fmnist_shirt.yaml [--set generate.lm.batch_size=32]
"""

from kka_ray.cli import parse_config, parser
from kka_ray.knowledge import KnowledgeConfig, report, run_knowledge


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    cfg = parse_config(KnowledgeConfig, args)
    print(report(run_knowledge(cfg)))


if __name__ == "__main__":
    main()
