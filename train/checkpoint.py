"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors:
    format "provq-checkpoint", version, preset, model_config (ModelConfig.to_dict), schedule (Schedule.to_dict),
    step, model (state dict), optimizer, discriminator / disc_optimizer (or None), train_config, rng, nan_steps,
    metrics, and qat (quantization-aware checkpoints only: qat.py). ``default`` names the tiny model shipped with provq.
"""

from __future__ import annotations

import pickle
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from provq.edge_runtime.formats.files import atomic_path

from . import qat
from .errors import ProvqError
from .model import Tokenizer
from .presets import ModelConfig

FORMAT = "provq-checkpoint"
VERSION = 1
DEFAULT_NAME = "default-tiny.pt"


def default_checkpoint() -> Path:
    """The shipped default model (tiny preset trained on the sample data; see train/assets/MODEL_CARD.md)."""
    return Path(str(resources.files("provq.train") / "assets" / DEFAULT_NAME))


def resolve(path: str | Path) -> Path:
    """``default`` -> the shipped checkpoint; anything else -> that path."""
    return default_checkpoint() if str(path) == "default" else Path(path).expanduser()


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load(path: str | Path) -> dict[str, Any]:
    """Read a provq checkpoint (weights only: no code in the file ever runs) or raise a one-line ProvqError."""
    path = resolve(path)
    if not path.is_file():
        hint = " (the package was installed without its default model)" if str(path).endswith(DEFAULT_NAME) else ""
        raise ProvqError(f"checkpoint {path} does not exist{hint}: pass a file written by provq-train or 'default'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
        raise ProvqError(
            f"{path} holds objects that safe (weights_only) loading refuses ({first[:120]}); "
            "only load checkpoints written by provq-train"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ProvqError(
            f"{path} is not a readable checkpoint ({type(err).__name__}): is it truncated or corrupt?"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ProvqError(f"{path} is not a provq checkpoint: pass a file written by provq-train or 'default'")
    if int(state.get("version", 0)) > VERSION:
        raise ProvqError(f"{path} has checkpoint version {state['version']}; this provq reads {VERSION}: upgrade provq")
    return state


def load_tokenizer(path: str | Path = "default", *, fake_quant: bool = True) -> Tokenizer:
    """A Tokenizer in eval mode rebuilt from a checkpoint's own model arguments (``default``: the shipped model).

    A quantization-aware checkpoint (``provq-train --qat``) gives its model of record: the fake-quantized network
    whose ``encode`` gives the deployed INT8 ids (``qat.py``); ``fake_quant=False`` gives the same weights without
    the quantizers (what the FP32 ONNX files compute).
    """
    state = load(path)
    model = Tokenizer(ModelConfig.from_dict(state["model_config"]))
    weights = state["model"]
    if state.get(qat.KEY) and fake_quant:
        qat.restore(model, state[qat.KEY])
    elif state.get(qat.KEY):
        weights = qat.without_quantizers(weights)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as err:
        raise ProvqError(
            f"{resolve(path)}: weights do not match its model arguments ({str(err).splitlines()[0][:120]})"
        ) from None
    return model.eval()
