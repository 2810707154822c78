"""kka-ray: Key Knowledge Augmentation for one-class anomaly detection, on Ray."""

import logging

__version__ = "0.1.0"


class _KnownNotices(logging.Filter):
    """transformers warns, on every import of a diffusers pipeline, that CLIP/SigLIP image processors fall back to
    PIL without torchvision: the project's pipelines use neither (no safety checker, no image encoder)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_KnownNotices())
