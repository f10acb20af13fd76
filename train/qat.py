"""Quantization-aware training: the fake-quantized network is the model of record (``provq-train --qat``).

NVIDIA Model Optimizer (``modelopt.torch.quantization``) inserts its fake quantizers into the tokenizer's Conv2d
modules, matching the INT8 that provq deploys (ONNX QuantizeLinear / DequantizeLinear, TensorRT explicit
quantization): per-output-channel symmetric weights (axis 0), per-tensor symmetric inputs and outputs, zero point
0, round half to even (``torch.round``), ``narrow_range`` off; activations 8 bits (codes in [-128, 127], scale =
amax / 127), weights ``WEIGHT_BITS`` = 7 (codes in [-64, 63], scale = amax / 63). Quantizing each Conv's output
(after its bias, which ``snap_biases`` keeps on the int32 grid, before the activation) and the 7-bit weights are
what let ONNX Runtime run the CPU files through its fast integer convolution (QLinearConv, uint8 activations x int8
weights) with the trained network's exact sums on x86 CPUs with or without VNNI: with 8-bit weights that kernel's
int16 pair sums saturate on x86 CPUs without VNNI (ONNX Runtime's ``reduce_range`` advice), and the exact
alternatives run no faster than FP32 (docs/INT8.md). Gradients pass straight through the rounding.
Activation amax comes from calibration on training crops (``RANGES``) and then stays fixed;
each weight's per-channel amax is set by the same calibration and stays fixed too, so a weight trained beyond it is
clipped. Which Convs stay FP32 is ``formats.int8_rules.keep_fp32`` (the rule provq-calibrate applies), read on the
modules in execution order; the nearest-code search, the projections into and out of the code space and the
codebook lookup are never quantized.

A QAT checkpoint holds ``state["qat"]`` (``qat_state``): ModelOpt's own state (``mto.modelopt_state``: the quantizer
config), the per-module amax (also in the model's state dict as ``*_quantizer._amax``), the FP32 Convs with their
reasons and how the ranges were calibrated. ``checkpoint.load_tokenizer`` rebuilds the fake-quantized model from it.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from provq.edge_runtime.formats.int8_rules import keep_fp32

from . import stems
from .errors import ProvqError
from .model import Tokenizer

log = logging.getLogger(__name__)

KEY = "qat"  # the checkpoint entry
VERSION = 2  # 2: Conv outputs quantized, 7-bit weights (version 1 states: inputs, 8-bit weights; they still load)
WEIGHT_BITS = 7  # u8 x s7 pair sums, 2 x 255 x 64, fit the int16 of ONNX Runtime's x86 kernels without VNNI
AMAX = "_amax"  # TensorQuantizer's buffer name in the state dict
CALIBRATION_BATCHES = 16  # batches of training crops the activation ranges are calibrated on
RANGES = ("percentile", "max")  # activation ranges, the default first: ModelOpt's histogram percentile, or the largest
# magnitude (percentile gives finer INT8 steps and less id flicker on static cameras: docs/INT8.md)
PERCENTILE = 99.99  # of the activation magnitudes: finer INT8 steps than max, rare outliers clipped
# Modules that compute a convolution, in the sense of the exported graph's Conv nodes (fixed-weight ones included)
CONV_MODULES = (nn.Conv2d, stems.HaarAnalysis, stems.HaarHead, stems.DownShortcut, stems.UpShortcut)
ROLES = ("input_quantizer", "weight_quantizer", "output_quantizer")  # a quantized Conv's ModelOpt quantizers
ACTIVATIONS = (ROLES[0], ROLES[2])
INSTALL = "quantization-aware models need NVIDIA ModelOpt: pip install 'provq[train]' (nvidia-modelopt)"


def _mtq() -> Any:
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as err:
        raise ProvqError(f"{INSTALL} ({err})") from None
    return mtq


def conv_order(model: Tokenizer) -> dict[str, list[str]]:
    """{part: names of the convolution modules in execution order}: encoder = image -> latents, decoder = codes ->
    image, as the exported encoder and decoder graphs order their Conv nodes. Found by one small forward pass."""
    seen: list[str] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
        for name, module in model.named_modules()
        if isinstance(module, CONV_MODULES) and not _inside_haar_head(model, name)
    ]
    try:
        with torch.no_grad():
            ds = model.downsample
            z = model.latents(torch.zeros(1, 3, 2 * ds, 2 * ds, device=model.quant_proj.weight.device))
            encoder = list(seen)
            model.decode_latents(z)
    finally:
        for hook in hooks:
            hook.remove()
    return {"encoder": encoder, "decoder": seen[len(encoder) :]}


def _inside_haar_head(model: Tokenizer, name: str) -> bool:
    """A HaarHead's own Conv2d never runs its forward (the head folds the inverse transform into its weights)."""
    parent = name.rpartition(".")[0]
    return bool(parent) and isinstance(model.get_submodule(parent), stems.HaarHead)


def kept_fp32(model: Tokenizer) -> dict[str, str]:
    """{module name: why} of the convolution modules that stay FP32 (``int8_rules.keep_fp32``); a kept HaarHead is
    named by its Conv2d."""
    order = conv_order(model)
    keep = keep_fp32(order["encoder"], order["decoder"], model.config.stem)
    out = {}
    for nodes in keep.values():
        for name, why in nodes.items():
            module = model.get_submodule(name)
            out[f"{name}.conv" if isinstance(module, stems.HaarHead) else name] = why
    return out


def quant_config(kept: Iterable[str]) -> dict[str, Any]:
    """ModelOpt's INT8 default config (per-channel weights, per-tensor inputs, 8 bits, max calibration) with
    WEIGHT_BITS weights, per-tensor output quantizers added and the ``kept`` modules' quantizers disabled."""
    cfg = copy.deepcopy(_mtq().INT8_DEFAULT_CFG)
    weights = next(e for e in cfg["quant_cfg"] if e["quantizer_name"] == "*weight_quantizer")
    weights["cfg"]["num_bits"] = WEIGHT_BITS
    at = next(i for i, e in enumerate(cfg["quant_cfg"]) if e["quantizer_name"] == "*input_quantizer") + 1
    cfg["quant_cfg"].insert(at, {"quantizer_name": "*output_quantizer", "cfg": {"num_bits": 8, "axis": None}})
    cfg["quant_cfg"] += [{"quantizer_name": f"{name}.*", "enable": False} for name in kept]
    return cfg


def default_exclusions(names: Iterable[str]) -> dict[str, str]:
    """{module: pattern} for modules that ModelOpt's INT8 default config skips by name (its patterns for language
    models: ``*lm_head*``, ``*proj_out.*``, ``output.*``...)."""
    patterns = [
        e["quantizer_name"]
        for e in _mtq().INT8_DEFAULT_CFG["quant_cfg"]
        if e.get("enable") is False and e["quantizer_name"] != "*" and e.get("parent_class") is None
    ]
    hits = {}
    for name in names:
        for quantizer in ROLES:
            for pattern in patterns:
                if fnmatch.fnmatch(f"{name}.{quantizer}", pattern):
                    hits[name] = pattern
    return hits


def quantized_modules(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"input": amax (scalar), "weight": amax (out channels), "weight_bound": 2^(bits - 1) - 1
    (scalar)[, "output": amax (scalar)]}} of the Convs with enabled input and weight quantizers; "output" where the
    Conv's output is quantized too (QAT version 2)."""
    out = {}
    for name, module in model.named_modules():
        inq, wq = getattr(module, "input_quantizer", None), getattr(module, "weight_quantizer", None)
        if inq is not None and wq is not None and inq.is_enabled and wq.is_enabled:
            out[name] = {
                "input": inq.amax.detach().float().reshape(()),
                "weight": wq.amax.detach().float().flatten(),
                "weight_bound": torch.tensor(float(2 ** (wq.num_bits - 1) - 1), device=wq.amax.device),
            }
            outq = getattr(module, "output_quantizer", None)
            if outq is not None and outq.is_enabled:
                out[name]["output"] = outq.amax.detach().float().reshape(())
    return out


def quantize(model: Tokenizer, batches: Iterable[torch.Tensor], ranges: str = RANGES[0]) -> dict[str, Any]:
    """Insert ModelOpt's fake quantizers into ``model`` (in place) and calibrate them on ``batches`` (B x 3 x H x W
    training crops in [-1, 1]): weights by max, activations by ``ranges`` (RANGES); returns the QAT state."""
    mtq = _mtq()
    if ranges not in RANGES:
        raise ProvqError(f"unknown --qat-ranges {ranges!r}: use one of {', '.join(RANGES)}")
    batches = list(batches)
    kept = kept_fp32(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    skipped = {n: p for n, p in default_exclusions(convs).items() if n not in kept}
    if skipped:
        raise ProvqError(f"ModelOpt's INT8 default config would skip {skipped}: rename the modules")
    frames = sum(x.shape[0] for x in batches)

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for x in batches:
                m.decode(m.encode(x))

    mtq.quantize(model, quant_config(kept), forward_loop=forward_loop)
    if ranges == "percentile":
        _percentile_ranges(model, forward_loop)
    snap_biases(model)
    quantized = quantized_modules(model)
    expected = {n for n in convs if n not in kept and not _inside_haar_head(model, n)}
    if set(quantized) != expected:
        raise ProvqError(f"quantizers landed on {sorted(quantized)}, expected {sorted(expected)}: report it")
    log.info("QAT: %d Convs fake-quantized INT8 (%s), %d kept FP32 (%s); ranges calibrated (%s) on %d crops",
             len(quantized), ", ".join(quantized), len(kept), ", ".join(kept), ranges, frames)  # fmt: skip
    method = {"weights": "max", "activations": ranges} | ({"percentile": PERCENTILE} if ranges == "percentile" else {})
    return {"version": VERSION, "kept_fp32": kept, "quantized": sorted(quantized),
            "calibration": {**method, "crops": frames}, "modelopt_state": _modelopt_state(model)}  # fmt: skip


def _percentile_ranges(model: nn.Module, forward_loop: Any) -> None:
    """Replace the input and output quantizers' max ranges by the PERCENTILE-th percentile of |x| (ModelOpt's
    HistogramCalibrator, 2048 bins) over the same calibration crops."""
    from modelopt.torch.quantization.calib import HistogramCalibrator

    inputs = [q for n, q in model.named_modules() if n.endswith(ACTIVATIONS) and q.is_enabled]
    for q in inputs:
        q._calibrator = HistogramCalibrator(num_bits=8, axis=None, unsigned=False)
        q.disable_quant()
        q.enable_calib()
    forward_loop(model)
    for q in inputs:
        q.load_calib_amax("percentile", percentile=PERCENTILE)
        q.disable_calib()
        q.enable_quant()


def _modelopt_state(model: nn.Module) -> dict[str, Any]:
    import modelopt.torch.opt as mto

    return mto.modelopt_state(model)


def restore(model: Tokenizer, state: dict[str, Any]) -> None:
    """Re-insert the quantizers a QAT checkpoint's ``state`` describes (their amax comes with the state dict)."""
    _mtq()
    import modelopt.torch.opt as mto

    if int(state.get("version", 0)) > VERSION:
        raise ProvqError(f"QAT state version {state.get('version')}; this provq reads {VERSION}: upgrade provq")
    mto.restore_from_modelopt_state(model, state["modelopt_state"])


def scales(amax: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 scales of one ``quantized_modules`` entry, the exported graphs' values: ``input`` and ``output``
    = amax / 127, ``weight`` = amax / (2^(bits - 1) - 1) per output channel (1 / that bound where amax is 0: TensorRT
    needs positive scales), and ``accumulator`` = input * weight, the value of one unit of the int32 sum."""
    live = amax["weight"] > 1.0 / (1 << 24)
    weight = torch.where(live, amax["weight"], torch.ones_like(amax["weight"])) / amax["weight_bound"]
    out = {"input": amax["input"] / 127.0, "weight": weight}
    out["accumulator"] = out["input"] * out["weight"]
    if "output" in amax:
        out["output"] = amax["output"] / 127.0
    return out


def snap_biases(model: nn.Module) -> None:
    """Round, in place, the bias of every Conv whose output is quantized to its int32 accumulator grid: per output
    channel b = round(b / s) * s, s = ``scales(...)["accumulator"]``. The requantizing INT8 convolution (ONNX
    Runtime's QLinearConv, TensorRT) adds its bias in those units, so the fake-quantized network then computes what
    the deployed one does (ModelOpt quantizes no biases). The trainer calls it after calibration and after every
    optimizer step; a version 1 state (no output quantizers) is left alone."""
    with torch.no_grad():
        for name, amax in quantized_modules(model).items():
            bias = model.get_submodule(name).bias
            if "output" in amax and bias is not None:
                step = scales(amax)["accumulator"].double()
                bias.copy_(torch.round(bias.double() / step) * step)


def without_quantizers(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A QAT state dict less its quantizer buffers: the same weights for the plain (FP32) Tokenizer."""
    return {k: v for k, v in weights.items() if "_quantizer." not in k}


def int8_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What the exported INT8 graphs need, per fake-quantized Conv module (numpy arrays, float32 ``scales``):
    ``input_scale`` (scalar), ``weight_scale`` (out channels), ``output_scale`` (scalar; only where the output is
    quantized) and ``weight_int8`` (out x in x kh x kw int8): the integer weights exactly as ModelOpt rounds them
    (round(w / weight scale), half to even, clamped to [-bound - 1, bound], bound = 2^(bits - 1) - 1; 0 where amax
    is 0, which gives the same zero output)."""
    out = {}
    for name, found in quantized_modules(model).items():
        weight = model.get_submodule(name).weight.detach().float().cpu()
        amax = {k: v.cpu() for k, v in found.items()}
        bound = amax["weight_bound"]
        live = (amax["weight"] > 1.0 / (1 << 24)).reshape(-1, 1, 1, 1)
        codes = torch.where(live, weight * (bound / amax["weight"]).reshape(-1, 1, 1, 1), torch.zeros_like(weight))
        out[name] = {f"{k}_scale": v.numpy().astype("float32") for k, v in scales(amax).items() if k != "accumulator"}
        out[name]["weight_int8"] = torch.clamp(codes.round(), -bound - 1, bound).numpy().astype("int8")
    return out
