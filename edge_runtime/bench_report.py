"""How a ``provq-bench`` report (see bench.py) is shown: a table on screen, Markdown, and a PNG plot.

Table columns (one line per backend x precision; rows that did not run list their reason below the table)::

    backend  precision  status  enc ms  dec ms  rt ms  ±IQR  fps  PSNR dB  SSIM  agree  B/frame  plain  x fp32

ms are per-call medians, ±IQR the interquartile range of the round-trip times, B/frame the token stream's
previous-frame-coded bytes per frame (plain: every frame a keyframe), x fp32 the round-trip speed-up over the same
backend's FP32 row. The codec table shows JPEG and WebP (and H.264 on videos; quality = kbit/s) at the quality
matching the tokenizer's bytes per frame. On videos a rate-distortion table lists the tokenizer's settings (zlib and
ctx codings of the same ids, stable tokens) each beside H.264 at its bytes per frame; the plot draws both curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROW_HEADERS = ("backend", "precision", "status", "enc ms", "dec ms", "rt ms", "±IQR", "fps", "PSNR dB", "SSIM",
               "agree", "B/frame", "plain", "x fp32")  # fmt: skip
CODEC_HEADERS = ("codec", "quality", "B/frame", "x target", "PSNR dB", "SSIM", "enc ms", "dec ms")
RD_HEADERS = ("tokenizer", "B/frame", "PSNR dB", "SSIM", "changed ids", "write ms", "read ms", "H.264 B/frame",
              "H.264 PSNR dB")  # fmt: skip


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _stage(row: dict[str, Any], stage: str) -> float | None:
    block = row.get(stage)
    return None if block is None else block["latency_ms_p50"]


def row_cells(report: dict[str, Any]) -> list[list[str]]:
    """The rows table as strings, one list per row, in ROW_HEADERS order."""
    cells = []
    for row in report["rows"]:
        cells.append([
            row["backend"], row["precision"], row["status"].split(":", 1)[0],
            _fmt(_stage(row, "encoder"), ".2f"), _fmt(_stage(row, "decoder"), ".2f"),
            _fmt(row["latency_ms_p50"], ".2f"), _fmt(row["latency_ms_iqr"], ".2f"), _fmt(row["fps"], ".1f"),
            _fmt(row["psnr_db"], ".2f"), _fmt(row["ssim"], ".4f"), _fmt(row["token_agreement"], ".4f"),
            _fmt(row["bytes_per_frame"], ".0f"), _fmt(row["bytes_per_frame_plain"], ".0f"),
            _fmt(row["speedup_vs_fp32"], ".2f"),
        ])  # fmt: skip
    return cells


def codec_cells(report: dict[str, Any]) -> list[list[str]]:
    """The codec baselines as strings, in CODEC_HEADERS order (a codec that could not run: its reason)."""
    cells = []
    for c in report["codecs"]:
        if c["status"] != "ok":
            cells.append([c["codec"], c["status"], *["-"] * (len(CODEC_HEADERS) - 2)])
            continue
        cells.append([
            c["codec"], str(c["quality"]), _fmt(c["bytes_per_frame"], ".0f"), _fmt(c["bytes_ratio"], ".2f"),
            _fmt(c["psnr_db"], ".2f"), _fmt(c["ssim"], ".4f"), _fmt(c["encode_ms"], ".2f"),
            _fmt(c["decode_ms"], ".2f"),
        ])  # fmt: skip
    return cells


def rd_cells(report: dict[str, Any]) -> list[list[str]]:
    """The rate-distortion points (video inputs), each with H.264 at its size, in RD_HEADERS order."""
    video = report.get("video")
    if not video:
        return []
    cells = []
    for p, h in zip(video["points"], video["h264"], strict=True):
        ok = h["status"] == "ok"
        cells.append([
            p["setting"], _fmt(p["bytes_per_frame"], ".0f"), _fmt(p["psnr_db"], ".2f"), _fmt(p["ssim"], ".4f"),
            _fmt(p["changed_ids_per_frame"], ".0f"), _fmt(p["write_ms"], ".1f"), _fmt(p["read_ms"], ".1f"),
            _fmt(h["bytes_per_frame"], ".0f") if ok else h["status"],
            _fmt(h["psnr_db"], ".2f") if ok else "-",
        ])  # fmt: skip
    return cells


def _text_table(headers: Sequence[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _markdown_table(headers: Sequence[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
    return "\n".join(lines)


def reasons(report: dict[str, Any]) -> list[str]:
    """``tensorrt/fp32: unavailable: tensorrt not installed`` for every row that did not run."""
    return [f"{r['backend']}/{r['precision']}: {r['status']}" for r in report["rows"] if r["status"] != "ok"]


def setup_line(report: dict[str, Any]) -> str:
    """What was measured: model, input, frames, size, batch, warm-up."""
    c = report["config"]
    return (
        f"model {c['model']} | input {c['input']} | {c['frames']} frames {c['model_size'][0]}x{c['model_size'][1]} "
        f"(grid {c['grid'][0]}x{c['grid'][1]}, K={c['codebook_size']}) | batch {c['batch']} | warm-up {c['warmup']}"
    )


def environment_lines(report: dict[str, Any]) -> list[str]:
    """Where it was measured, one fact a line."""
    e = report["environment"]
    versions = ", ".join(f"{k} {v if v is not None else '-'}" for k, v in e["versions"].items())
    threads = e["threads"] if e["threads"] is not None else "backend default"
    peak = report["peak_rss_mb"]
    return [
        f"CPU: {e['cpu']} ({e['machine']}), {e['cores']} cores, threads {threads}",
        f"GPU: {', '.join(e['gpu']) if e['gpu'] else 'none'}" + (f" | Jetson: {e['jetson']}" if e["jetson"] else ""),
        f"versions: {versions}",
        f"ONNX Runtime providers: {', '.join(e['onnxruntime_providers'])}",
        f"peak RSS {_fmt(peak, '.0f')} MiB | {e['date']}",
    ]


def format_text(report: dict[str, Any]) -> str:
    """The whole report for the terminal."""
    parts = [setup_line(report), "", _text_table(ROW_HEADERS, row_cells(report))]
    if reasons(report):
        parts += ["", *reasons(report)]
    if report["codecs"]:
        target = report["codecs"][0]["target_bytes_per_frame"]
        parts += ["", f"codecs at the bytes per frame of {report['codec_target']} ({target:.0f} B):"]
        parts.append(_text_table(CODEC_HEADERS, codec_cells(report)))
    if rd_cells(report):
        parts += ["", "rate-distortion (ONNX Runtime FP32, bytes per frame of the token stream's chunks):"]
        parts.append(_text_table(RD_HEADERS, rd_cells(report)))
    return "\n".join([*parts, "", *environment_lines(report)])


def format_markdown(report: dict[str, Any]) -> str:
    """The same tables in Markdown, with the setup and the environment."""
    parts = ["# provq-bench", "", setup_line(report), "", _markdown_table(ROW_HEADERS, row_cells(report))]
    if reasons(report):
        parts += ["", *[f"- {line}" for line in reasons(report)]]
    if report["codecs"]:
        target = report["codecs"][0]["target_bytes_per_frame"]
        parts += ["", f"Codecs at the bytes per frame of {report['codec_target']} ({target:.0f} B):", ""]
        parts.append(_markdown_table(CODEC_HEADERS, codec_cells(report)))
    if rd_cells(report):
        parts += ["", "Rate-distortion (ONNX Runtime FP32, bytes per frame of the token stream's chunks):", ""]
        parts.append(_markdown_table(RD_HEADERS, rd_cells(report)))
    parts += ["", "Environment:", "", *[f"- {line}" for line in environment_lines(report)]]
    return "\n".join(parts) + "\n"


def write_plot(report: dict[str, Any], path: Path) -> None:
    """PNG: PSNR against bytes per frame (rows and codecs), and round-trip latency (encoder + decoder) per row."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8))
    rate, speed = fig.subplots(1, 2)
    ran = [r for r in report["rows"] if r["status"] == "ok"]
    for r in ran:
        rate.scatter(r["bytes_per_frame"], r["psnr_db"], marker="o", s=50, label=f"{r['backend']}/{r['precision']}")
    for c in report["codecs"]:
        if c["status"] == "ok":
            rate.scatter(c["bytes_per_frame"], c["psnr_db"], marker="s", s=50, label=f"{c['codec']} q{c['quality']}")
    video = report.get("video")
    if video:
        points = video["points"]
        rate.plot([p["bytes_per_frame"] for p in points], [p["psnr_db"] for p in points], "k.-", label="tokenizer")
        for p in points:
            rate.annotate(p["setting"], (p["bytes_per_frame"], p["psnr_db"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")  # fmt: skip
        h264 = sorted((h for h in video["h264"] if h["status"] == "ok"), key=lambda h: h["bytes_per_frame"])
        if h264:
            rate.plot([h["bytes_per_frame"] for h in h264], [h["psnr_db"] for h in h264], "r^--", label="H.264")
    rate.set_xlabel("bytes per frame (token stream: previous-frame coded)")
    rate.set_ylabel("PSNR (dB)")
    rate.set_title("quality against size")
    rate.grid(alpha=0.3)
    if ran or report["codecs"]:
        rate.legend(fontsize=8)
    names = [f"{r['backend']}/{r['precision']}" for r in ran]
    encoder = [r["encoder"]["latency_ms_p50"] for r in ran]
    decoder = [r["decoder"]["latency_ms_p50"] for r in ran]
    spread = [r["latency_ms_iqr"] for r in ran]
    speed.barh(names, encoder, label="encoder")
    speed.barh(names, decoder, left=encoder, xerr=spread, capsize=3, label="decoder (error bar: round-trip IQR)")
    speed.set_xlabel("median ms per call")
    speed.set_title("round-trip latency")
    speed.invert_yaxis()
    if ran:
        speed.legend(fontsize=8)
    else:
        speed.text(0.5, 0.5, "no row ran", ha="center", va="center", transform=speed.transAxes)
    e = report["environment"]
    fig.suptitle(f"provq-bench | {setup_line(report).split(' | ', 2)[2]} | {e['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
