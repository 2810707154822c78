"""Text side of KKA: the sentence encoder and the cleaning of language-model output into anomaly descriptions."""

from kka_ray.text.clean import REASONS, CleanConfig, clean, line_key, restates_class, split_sentences
from kka_ray.text.encoder import SentenceEncoder, offline_model_dir
from kka_ray.text.synonyms import SYNONYMS

__all__ = [
    "REASONS",
    "SYNONYMS",
    "CleanConfig",
    "SentenceEncoder",
    "clean",
    "line_key",
    "offline_model_dir",
    "restates_class",
    "split_sentences",
]
