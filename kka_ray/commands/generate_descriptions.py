"""Run KKA's knowledge stage alone: representative normals -> LLM-written anomaly descriptions (+ rejects).

    python jobs/generate_descriptions.py --config configs/knowledge/fmnist_shirt.yaml [--set generate.lm.batch_size=32]
"""

from kka_ray.cli import parse_config, parser
from kka_ray.knowledge import KnowledgeConfig, report, run_knowledge


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], KnowledgeConfig).parse_args(argv)
    cfg = parse_config(KnowledgeConfig, args)
    print(report(run_knowledge(cfg)))
