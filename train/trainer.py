"""The training loop, top to bottom: data, model, ProVQ schedule, losses, evaluation, checkpoints.

    provq-train --data sample --preset tiny --steps 300 --out runs/tiny          # one process
    torchrun --nproc-per-node 2 -m provq.train.cli --data DIR --out runs/ddp     # data-parallel

Each rank draws its own batches (``--batch-size`` per process); rank 0 alone evaluates and writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from provq.edge_runtime import console
from provq.edge_runtime.formats.files import write_json_atomic

from . import checkpoint, distributed, peer_quantizers, qat
from .data import check_crop
from .errors import ProvqError
from .evaluation import evaluate, rank_digests
from .int8_sim import int8_consistency
from .losses import (
    PatchDiscriminator,
    PerceptualLoss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    reconstruction_loss,
)
from .metrics import CodeUsage, psnr
from .model import Tokenizer
from .presets import ModelConfig, preset
from .qat import RANGES as QAT_RANGES
from .quantizer import margin_loss
from .schedule import Schedule
from .streaming import TrainingData

log = logging.getLogger(__name__)

# TrainConfig fields that TrainingData takes under the same names.
DATA_FIELDS = ("crop", "workers", "val_size", "val_fraction", "val_frames", "max_video_frames", "max_bad_fraction",
               "reindex")  # fmt: skip


@dataclass
class TrainConfig:
    """Everything one training run needs; the command line fills it, its defaults say what they mean."""

    data: str = "sample"  # folder, video file or "sample"
    out: str = "runs/provq"  # output folder: last.pt, metrics.json
    val: str | None = None  # separate validation source; default: hold out part of --data
    preset: str = "tiny"  # tiny, small or base (see presets.py)
    code_dim: int | None = None  # dimension of the codebook vectors; default: the preset's (8)
    steps: int = 1000  # total optimizer steps, warm-up and transition included
    schedule: str = "provq"  # provq or hard (baseline: random codebook, hard VQ from step 0)
    warmup_steps: int | None = None  # continuous warm-up; default 20% of --steps
    transition_steps: int | None = None  # continuous -> discrete blend; default 30% of --steps
    curve: str = "cosine"  # alpha(t) over the transition: cosine, linear or exponential
    lam: float = 0.5  # VQ-loss weight at the start of the transition
    batch_size: int = 16  # frames per step and process
    crop: int = 64  # training crops are crop x crop (a multiple of the downsample factor)
    lr: float = 1e-3  # AdamW peak learning rate (about 1e-4 suits small/base on GPUs)
    lr_warmup_steps: int = 50  # linear learning-rate warm-up, then cosine decay to 10% at --steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    recon_loss: str = "l2"  # l1, l2 or l1+l2
    perceptual_weights: str | None = None  # local torchvision-format VGG16 state dict enabling a perceptual loss
    lpips_weights: str | None = None  # optional LPIPS linear-layer weights (the lpips package's vgg.pth)
    perceptual_weight: float = 1.0
    gan_weight: float = 0.0  # PatchGAN hinge loss weight; 0 disables the discriminator
    gan_start: int = 0  # step at which the adversarial loss starts
    int8_weight: float = 0.0  # weight of ||z_int8 - z||^2 / h^2 (simulated INT8 encoder vs FP32, h: half code spacing)
    margin_weight: float = 0.0  # weight of the code-margin term once quantized (keeps INT8 ids equal to FP32 ids)
    margin: float = 0.5  # target depth of each latent in its code's cell (quantizer.code_depth: 1 at the code)
    restart_dead_codes_every: int = 0  # move codes unused for this many steps onto live latents; 0 = off
    qat: bool = False  # quantization-aware fine-tune of --resume's trained model (qat.py): steps count from 0 again
    qat_ranges: str = QAT_RANGES[0]  # how the QAT phase calibrates activation ranges (qat.RANGES, the default first)
    quantizer: str = "vq"  # vq (provq's own), or a study peer from vector-quantize-pytorch: vqtorch or fsq
    kmeans_points: int = 0  # latent vectors for the k-means init over all ranks; 0 = 20 x codebook size
    val_size: int = 256  # validation frames are centre-cropped to at most this size
    val_fraction: float = 0.15  # share of --data held out for validation when --val is not given
    val_frames: int = 256  # at most this many validation frames (spread evenly), decoded once and kept in memory
    max_video_frames: int = 300  # frames sampled evenly from each video
    workers: int | None = None  # DataLoader worker processes per rank; None: streaming.default_workers()
    index_cache: str | None = None  # folder for cached file indexes; None: file_index.default_cache_dir()
    reindex: bool = False  # rebuild the file index even if the cached one looks valid
    max_bad_fraction: float = 0.1  # stop once more than this share of decode attempts failed (after 100)
    eval_every: int = 100  # validation metrics every this many steps (and at the end)
    checkpoint_every: int = 500  # last.pt every this many steps (and at the end)
    max_nan_steps: int = 20  # stop after this many non-finite steps in a row
    seed: int = 0
    device: str = "auto"  # cpu, cuda or auto
    compile: bool = False  # torch.compile the model (GPU)
    resume: str | None = None  # checkpoint to continue from ("default" fine-tunes the shipped model)
    stop_at: int | None = None  # checkpoint and stop at this step (split a long run into jobs); resume later
    progress: bool = True  # show a progress bar on rank 0

    def make_schedule(self) -> Schedule:
        if self.schedule == "hard":
            return Schedule(kind="hard", curve=self.curve, lam=self.lam)
        warmup = round(0.2 * self.steps) if self.warmup_steps is None else self.warmup_steps
        transition = round(0.3 * self.steps) if self.transition_steps is None else self.transition_steps
        return Schedule(
            kind=self.schedule,
            warmup_steps=warmup,
            transition_steps=transition,
            curve=self.curve,
            lam=self.lam,
        )


class Stopped(console.Stopped):
    """Training was ended by SIGINT or SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        message = f"stopped by {signal.Signals(signum).name} at step {step}; resume with --resume {path}"
        super().__init__(message, signum)


class Diverged(ProvqError):
    """Too many non-finite losses in a row."""


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 10% of it at cfg.steps."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    frac = min(1.0, (step - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


class Trainer:
    """Holds the state of one run; ``run()`` trains to ``cfg.steps`` and returns the final metrics."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.started = time.perf_counter()
        self.cfg = cfg
        self.ctx = distributed.setup(cfg.device)
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "last.pt"
        state = checkpoint.load(cfg.resume) if cfg.resume else None
        self.qat_state = state.get(qat.KEY) if state is not None else None
        start_qat = cfg.qat and self.qat_state is None  # a new QAT phase: fresh optimizer, steps from 0, hard VQ
        if start_qat and (state is None or not bool(state["model"].get("quantizer.initialized", False))):
            raise ProvqError(
                "--qat fine-tunes a trained model: pass --resume with a provq-train checkpoint past its codebook "
                "initialisation (or 'default')"
            )
        if state is None and self.ckpt_path.exists():
            raise ProvqError(
                f"{self.ckpt_path} already exists: pass --resume {self.ckpt_path} to continue, or choose another --out"
            )
        if state is not None:
            self.model_cfg = ModelConfig.from_dict(state["model_config"])
            self.preset = state["preset"]
            self.step = 0 if start_qat else int(state["step"])
            hard = Schedule(kind="hard", curve=cfg.curve, lam=cfg.lam)
            self.schedule = hard if start_qat else Schedule.from_dict(state["schedule"])
            self.seed = int(state.get("train_config", {}).get("seed", cfg.seed))
            self.quantizer_kind = str(state.get("train_config", {}).get("quantizer", "vq"))
        else:
            self.quantizer_kind = cfg.quantizer
            self.model_cfg = preset(cfg.preset)
            if cfg.code_dim is not None:
                if cfg.code_dim < 1:
                    raise ProvqError(f"--code-dim must be a positive integer, got {cfg.code_dim}")
                self.model_cfg = replace(self.model_cfg, code_dim=cfg.code_dim)
            if cfg.quantizer != "vq":
                self.model_cfg = peer_quantizers.fit_model_config(cfg.quantizer, self.model_cfg)
            self.preset = cfg.preset
            self.schedule = cfg.make_schedule()
            self.step = 0
            self.seed = cfg.seed
        if self.schedule.hard_from > cfg.steps:
            raise ProvqError(
                f"warm-up ({self.schedule.warmup_steps}) + transition ({self.schedule.transition_steps}) steps exceed "
                f"--steps {cfg.steps}: raise --steps or shorten them"
            )
        if self.quantizer_kind != "vq" and (
            self.schedule.kind != "hard" or cfg.restart_dead_codes_every or cfg.margin_weight or cfg.int8_weight
        ):
            raise ProvqError(
                f"the {self.quantizer_kind} quantizer trains hard from step 0 with its own codebook upkeep: "
                "use the hard schedule without dead-code restarts or a margin term"
            )
        if cfg.margin_weight < 0 or cfg.int8_weight < 0 or not 0.0 < cfg.margin <= 1.0:
            raise ProvqError(
                f"--margin-weight and --int8-weight must be >= 0 and --margin in (0, 1], got {cfg.margin_weight}, "
                f"{cfg.int8_weight} and {cfg.margin}"
            )
        torch.manual_seed(self.seed)
        check_crop(cfg.crop, self.model_cfg.downsample)
        self.data = TrainingData(
            cfg.data,
            cfg.val,
            multiple=self.model_cfg.downsample,
            seed=self.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            cache_dir=Path(cfg.index_cache) if cfg.index_cache else None,
            **{name: getattr(cfg, name) for name in DATA_FIELDS},
        )
        self.val_frames = self.data.val_frames
        peer = None if self.quantizer_kind == "vq" else peer_quantizers.build(self.quantizer_kind, self.model_cfg)
        self.model = Tokenizer(
            self.model_cfg, restart_dead_codes_every=cfg.restart_dead_codes_every, quantizer=peer
        ).to(self.ctx.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
        )
        self.perceptual = self._perceptual_loss()
        self.disc = PatchDiscriminator().to(self.ctx.device) if cfg.gan_weight > 0 else None
        self.disc_optimizer = (
            torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) if self.disc is not None else None
        )
        self.nan_steps = 0
        self.history: list[dict[str, float]] = []
        if state is not None:
            self._restore(state, start_qat)
        elif self.schedule.kmeans_step is None:
            self.model.quantizer.initialized.fill_(True)  # the hard baseline trains its random codebook
        self.train_model: torch.nn.Module = self.model
        self.train_disc = self.disc
        if self.ctx.world_size > 1:
            # The codebook is unused during the warm-up, hence find_unused_parameters.
            self.train_model = DistributedDataParallel(self.model, find_unused_parameters=True)
            if self.disc is not None:
                self.train_disc = DistributedDataParallel(self.disc)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def _perceptual_loss(self) -> PerceptualLoss | None:
        if not self.cfg.perceptual_weights:
            return None
        try:
            return PerceptualLoss(self.cfg.perceptual_weights, lpips_weights=self.cfg.lpips_weights).to(self.ctx.device)
        except ValueError as err:
            raise ProvqError(str(err)) from None

    def _restore(self, state: dict[str, Any], start_qat: bool) -> None:
        if self.qat_state is not None:
            qat.restore(self.model, self.qat_state)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ProvqError(
                f"checkpoint weights do not fit the {self.preset} model: {str(err).splitlines()[0]}"
            ) from None
        if start_qat:  # calibrate the INT8 ranges on training crops, then train the fake-quantized network
            crops = self.data.batches(0, 32, stream=2, stop=qat.CALIBRATION_BATCHES, device=self.ctx.device)
            self.qat_state = qat.quantize(self.model, crops, self.cfg.qat_ranges)
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=self.cfg.lr, betas=(0.9, 0.95), weight_decay=self.cfg.weight_decay
            )
            return
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.disc is not None and state.get("discriminator") is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        if "rng" in state:
            torch.set_rng_state(state["rng"]["torch"])
        self.nan_steps = int(state.get("nan_steps", 0))
        self.history = list(state.get("history", []))

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: everything needed to rebuild the model and continue the same run."""
        return {
            "format": checkpoint.FORMAT,
            "version": checkpoint.VERSION,
            "preset": self.preset,
            "model_config": self.model_cfg.to_dict(),
            "schedule": self.schedule.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "discriminator": self.disc.state_dict() if self.disc is not None else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            "train_config": {**asdict(self.cfg), "seed": self.seed},
            "rng": {"torch": torch.get_rng_state()},
            "nan_steps": self.nan_steps,
            "history": self.history,
            qat.KEY: self.qat_state,
        }

    def save(self) -> None:
        if self.ctx.is_main:
            checkpoint.save_atomic(self.state_dict(), self.ckpt_path)

    @torch.no_grad()
    def init_codebook(self) -> None:
        """k-means on warmed-up latents of fresh training crops, gathered over all ranks."""
        k = self.model_cfg.codebook_size
        total = self.cfg.kmeans_points or 20 * k
        per_rank = -(-total // self.ctx.world_size)
        chunks, have = [], 0
        # batches of at least 32 crops: few forward passes even at a small --batch-size
        crops_per_batch = max(32, self.cfg.batch_size)
        latents_per_batch = crops_per_batch * (self.cfg.crop // self.model_cfg.downsample) ** 2
        batches = self.data.batches(
            0, crops_per_batch, stream=1, stop=-(-per_rank // latents_per_batch), device=self.ctx.device
        )
        for x in batches:
            self._check_data()
            z = self.model.latents(x).float().permute(0, 2, 3, 1).reshape(-1, self.model_cfg.code_dim)
            chunks.append(z)
            have += z.shape[0]
        latents = torch.cat(chunks)[:per_rank]
        self.model.quantizer.init_from_latents(latents, seed=self.seed)
        log.info("codebook initialised by k-means on %d warmed-up latents", latents.shape[0] * self.ctx.world_size)

    def _check_data(self) -> None:
        """Stop every rank with the one-line reason when any rank's data crossed the bad-file thresholds."""
        if distributed.any_rank(self.data.error is not None, self.ctx.device):
            raise ProvqError(self.data.error or "another process stopped on unreadable training data (see its message)")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.ctx.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x: torch.Tensor) -> dict[str, Any] | None:
        """One optimizer step on a B x 3 x crop x crop batch in [-1, 1]; None if skipped for non-finite values."""
        cfg, step = self.cfg, self.step
        alpha, weight = self.schedule.alpha(step), self.schedule.loss_weight(step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        use_gan = self.disc is not None and step >= cfg.gan_start
        with self._autocast():
            out = self.train_model(x, alpha)
            recon = out.reconstruction.float()
            rec_loss = reconstruction_loss(recon, x, cfg.recon_loss)
            vq_loss = weight * (out.codebook_loss + self.model_cfg.beta * out.commitment_loss)
            loss = rec_loss + vq_loss
            if cfg.int8_weight and out.ids is not None:
                loss = loss + cfg.int8_weight * int8_consistency(self.model, x, out.latents, out.ids)
            if cfg.margin_weight and out.ids is not None:
                z = out.latents.float().permute(0, 2, 3, 1).reshape(-1, self.model_cfg.code_dim)
                codebook = self.model.quantizer.codebook
                loss = loss + cfg.margin_weight * margin_loss(z, codebook, out.ids.flatten(), cfg.margin)
            if self.perceptual is not None:
                loss = loss + cfg.perceptual_weight * self.perceptual(recon, x)
            if use_gan:
                loss = loss + cfg.gan_weight * generator_adversarial_loss(self.train_disc(recon))
        if distributed.any_rank(not torch.isfinite(loss).item(), self.ctx.device):
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        if distributed.any_rank(not torch.isfinite(grad_norm).item(), self.ctx.device):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        if self.qat_state is not None:
            qat.snap_biases(self.model)  # the deployed INT8 adds int32 biases
        if use_gan:
            with self._autocast():
                d_loss = hinge_discriminator_loss(self.train_disc(x), self.train_disc(recon.detach()))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
        if cfg.restart_dead_codes_every and out.ids is not None and (step + 1) % cfg.restart_dead_codes_every == 0:
            flat = out.latents.detach().float().permute(0, 2, 3, 1).reshape(-1, self.model_cfg.code_dim)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            self.model.quantizer.restart_dead_codes(flat, generator=generator)
        return {
            "loss": float(loss.detach()),
            "psnr": float(psnr(recon.detach().clamp(-1, 1), x).mean()),
            "ids": out.ids,
        }

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.perf_counter()
        usage = CodeUsage(self.model_cfg.codebook_size)
        in_a_row = 0
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.ctx.is_main),
            desc=f"provq-train {self.preset}",
            mininterval=1.0,
            file=sys.stderr,
        )
        stop = min(cfg.steps, cfg.stop_at or cfg.steps)
        batches = self.data.batches(self.step, cfg.batch_size, stop=stop, device=self.ctx.device)
        first_step = self.step
        with console.stop_on_signals(second_interrupt=False) as received, contextlib.closing(batches):
            while self.step < stop:
                if distributed.any_rank(bool(received), self.ctx.device):
                    self.save()
                    signum = signal.Signals[received[0]] if received else signal.SIGTERM
                    raise Stopped(signum, self.step, self.ckpt_path)
                if self.step == self.schedule.kmeans_step and not bool(self.model.quantizer.initialized):
                    self.init_codebook()
                x = next(batches)
                self._check_data()
                result = self.train_step(x)
                if self.step == first_step and self.ctx.is_main:
                    log.info(
                        "first optimizer step done %.1f s after the trainer started", time.perf_counter() - self.started
                    )
                if result is None:
                    self.nan_steps += 1
                    in_a_row += 1
                    if in_a_row >= cfg.max_nan_steps:
                        self.save()
                        raise Diverged(
                            f"training diverged: {in_a_row} steps in a row gave non-finite losses (step {self.step}); "
                            "lower --lr or check the data"
                        )
                else:
                    in_a_row = 0
                    if result["ids"] is not None:
                        usage.update(result["ids"])
                self.step += 1
                bar.update(1)
                if result is not None:
                    bar.set_postfix(
                        phase=self.schedule.phase(self.step - 1),
                        loss=f"{result['loss']:.4f}",
                        psnr=f"{result['psnr']:.2f}",
                        usage=f"{usage.usage():.2f}",
                        refresh=False,
                    )
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    usage.all_reduce()  # codes used by any rank since the last evaluation
                    self._evaluate()["train_codebook_usage"] = usage.usage()
                    usage.reset()
                if self.step % cfg.checkpoint_every == 0 or self.step in (cfg.steps, cfg.stop_at):
                    self.save()
        bar.close()
        data_report = self._data_report()
        seconds = time.perf_counter() - started
        final = self.history[-1] if self.history and self.history[-1]["step"] == self.step else self._evaluate()
        metrics = {
            **{k: v for k, v in final.items() if k != "step"},
            "steps": self.step,
            "seconds": round(seconds, 2),
            "preset": self.preset,
            "schedule": self.schedule.to_dict(),
            "world_size": self.ctx.world_size,
            "nan_steps_skipped": self.nan_steps,
            "rank_sha256": rank_digests(self.model, self.ctx),
            "rank_data": data_report,
            "history": self.history,
        }
        if self.ctx.is_main:
            write_json_atomic(self.out / "metrics.json", metrics)
        distributed.barrier()
        return metrics

    def _data_report(self) -> list[dict[str, Any]]:
        """Every rank's data report (streaming.TrainingData.report), with one summary line per rank if it skipped or
        upscaled files."""
        if (line := self.data.summary()) is not None:
            log.warning("%s%s", f"rank {self.ctx.rank}: " if self.ctx.world_size > 1 else "", line)
        reports: list[Any] = [self.data.report()]
        if distributed.is_distributed():
            reports = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(reports, self.data.report())
        return reports

    def _evaluate(self) -> dict[str, float]:
        """Validation metrics computed on rank 0, shared with every rank and appended to the history."""
        result: list[dict[str, float] | None] = [None]
        if self.ctx.is_main:
            metrics = evaluate(self.model, self.val_frames, size=self.cfg.val_size, device=self.ctx.device)
            result[0] = {"step": self.step, **metrics}
        if distributed.is_distributed():
            torch.distributed.broadcast_object_list(result, src=0)
        self.history.append(result[0])
        return result[0]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one tokenizer as ``cfg`` says and return its final metrics (see metrics.json)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        distributed.teardown()


__all__ = ["Diverged", "Stopped", "TrainConfig", "Trainer", "learning_rate", "train"]
