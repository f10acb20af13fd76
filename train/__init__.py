"""provq.train: the tokenizer model, the ProVQ schedule and the trainer (needs torch).

from provq.train import Tokenizer, load_tokenizer
tok = load_tokenizer("default")             # the shipped tiny model
ids = tok.encode(images)                    # B x 3 x H x W in [-1, 1] -> B x H/8 x W/8 int32
images = tok.decode(ids)
"""

from __future__ import annotations

from .checkpoint import load_tokenizer
from .model import Tokenizer
from .presets import PRESETS, ModelConfig
from .schedule import Schedule

__all__ = ["PRESETS", "ModelConfig", "Schedule", "Tokenizer", "load_tokenizer"]
