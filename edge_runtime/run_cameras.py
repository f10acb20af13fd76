"""``provq-run --input URI --input URI ...``: several cameras (or files) through one model (cameras.py).

    provq-run --input rtsp://cam0/live --input rtsp://cam1/live --tokens 'cams/{i}.ptok' --json cams.json
    provq-run --input a.mp4 --input b.mp4 --tokens 'out/{name}.ptok' --output 'out/{name}.mkv'

``--tokens`` and ``--output`` are templates: ``{i}`` is the input's 0-based index in the command line, ``{name}``
the input's file or path name without its extension (``cam0`` for rtsp://host/cam0, ``a`` for a.mp4). With several
inputs a template must contain one of them, and no two inputs may map to one file. The other options (model,
backend, sizes, codec, ...) apply to every input.
"""

from __future__ import annotations

import argparse
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .console import RecentRates
from .errors import EdgeError
from .source_uri import display

if TYPE_CHECKING:
    from .sources import FrameSource

PLACEHOLDERS = ("{i}", "{name}")


def input_name(uri: str, index: int) -> str:
    """What ``{name}`` stands for: the last path segment of the URI without its extension, in file-name characters
    (``input{index}`` when the URI has none, as for csi://0)."""
    path = urlsplit(uri).path if "://" in uri else uri
    stem = Path(path.rstrip("/")).stem if path.strip("/") else ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or f"input{index}"


def expand(template: str, option: str, uris: list[str]) -> list[str]:
    """One path per input from ``template``; EdgeError when several inputs would share one."""
    if len(uris) > 1 and not any(p in template for p in PLACEHOLDERS):
        raise EdgeError(
            f"{option} {template} names one file for {len(uris)} inputs: put {{i}} (the input's index) or {{name}} in "
            f"it, e.g. {option} 'cams/{{i}}{Path(template).suffix}'"
        )
    paths = [template.replace("{i}", str(i)).replace("{name}", input_name(u, i)) for i, u in enumerate(uris)]
    seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        key = str(Path(path).resolve()) if "://" not in path else path
        if key in seen:
            raise EdgeError(
                f"inputs {seen[key]} and {index} both map to {option} {path}: each input needs its own file; use {{i}} "
                "in the template"
            )
        seen[key] = index
    return paths


def _check(args: argparse.Namespace) -> tuple[list[Path | None], list[str | None]]:
    """Every input's token file and output, checked before anything opens (one-line EdgeError)."""
    from .outputs import check_writable_file
    from .run_cli import check_common

    if args.input is not None:
        raise EdgeError(
            f"--input cannot be mixed with a positional INPUT ({display(args.input)}): pass every camera as --input "
            "URI (reconstructions go to --output TEMPLATE)"
        )
    uris = args.inputs
    tokens: list[Path | None] = [None] * len(uris)
    if args.tokens is not None:
        tokens = [Path(p) for p in expand(str(args.tokens), "--tokens", uris)]
        for path in tokens:
            check_writable_file(path, "--tokens")
            if path.exists():
                raise EdgeError(
                    f"--tokens {path} already exists: token streams are never overwritten; remove it or pick another "
                    "name"
                )
    outputs: list[str | None] = [None] * len(uris)
    if args.outputs is not None and not (args.headless and args.outputs.lower().startswith("display://")):
        outputs = list(expand(args.outputs, "--output", uris))
        clash = {str(Path(p).resolve()) for p in outputs} & {str(p.resolve()) for p in tokens if p is not None}
        if clash:
            raise EdgeError(f"--output and --tokens both name {clash.pop()}: give them different names")
    check_common(args)
    return tokens, outputs


def _open_sources(args: argparse.Namespace, stack: ExitStack) -> list[FrameSource]:
    """Every input opened at once (a camera can take seconds to send its first frame), each closed by ``stack``;
    the first input's error (in command-line order) once all tried."""
    from .run_cli import open_run_source

    with ThreadPoolExecutor(len(args.inputs), thread_name_prefix="provq-open") as pool:
        futures = [pool.submit(open_run_source, args, uri) for uri in args.inputs]
    sources, errors = [], []
    for future in futures:
        if future.exception() is None:
            sources.append(stack.enter_context(future.result()))
        else:
            errors.append(future.exception())
    if errors:
        raise errors[0]
    return sources


def run_cameras(args: argparse.Namespace) -> int:
    """provq-run with --input: every input opened, one CameraPipeline, the status line, --json, the summary."""
    from .cameras import CameraPipeline, CamerasProgress
    from .manifest import load_manifest, write_json_atomic
    from .outputs import open_output
    from .run_cli import PROG, open_run_backend, pipeline_config, run_pipeline

    tokens, output_paths = _check(args)
    manifest = load_manifest(args.model)
    with ExitStack() as stack:
        sources = _open_sources(args, stack)
        outputs = []
        for path, source in zip(output_paths, sources, strict=True):
            output = open_output(path, fps=source.fps) if path is not None else None
            if output is not None:
                stack.callback(output.close, ok=False)  # abandons a partial video if we never get to run
            outputs.append(output)
        backend = open_run_backend(args, manifest)
        stack.callback(backend.close)
        for index, source in enumerate(sources):
            print(f"{PROG}: input {index}: {source.describe()}", file=sys.stderr)
        configs = [pipeline_config(args, path) for path in tokens]
        cameras = CameraPipeline(sources, backend, configs, outputs, max_batch=args.max_batch)
        limit = "no limit" if cameras.max_batch is None else f"at most {cameras.max_batch}"
        print(f"{PROG}: {len(sources)} inputs | {backend.describe()} | batch {limit}", file=sys.stderr)
        rates = RecentRates()

        def status_text(p: CamerasProgress) -> str:
            frames = [s.frames for s in p.streams]
            *per_stream, total = rates.update(p.elapsed_s, [*frames, sum(frames)])
            per_call = f"{p.batched / p.calls:.1f}" if p.calls else "-"
            dropped = "/".join(str(s.dropped) for s in p.streams)
            gaps = sum(s.gaps for s in p.streams)
            return (
                f"{backend.name} {backend.precision} | FPS {' '.join(per_stream)} = {total} | {per_call} frames/call "
                f"| dropped {dropped} | gaps {gaps} | frames {sum(frames)}"
            )

        report, summary, received = run_pipeline(cameras, status_text, args, manifest)
        for index, stream in enumerate(summary["streams"]):
            stream.update(
                input=display(args.inputs[index], limit=1000),
                tokens=str(tokens[index]) if tokens[index] else None,
                output=output_paths[index] if outputs[index] is not None else None,
            )
    if args.json is not None:
        write_json_atomic(args.json, summary)
    _print_summary(summary, args)
    failed = [(i, e) for i, e in enumerate(report.errors) if e]
    if failed:
        index, error = failed[0]
        more = f" ({len(failed) - 1} more inputs ended with errors)" if len(failed) > 1 else ""
        raise EdgeError(f"input {index} ({display(args.inputs[index])}) ended early: {error}{more}")
    return 130 if "SIGINT" in received else 0


def _print_summary(s: dict[str, Any], args: argparse.Namespace) -> None:
    """The end-of-run table (stdout): one line per input, then the totals."""
    from .run_cli import PROG

    t = s["totals"]
    stop = f" - stopped by {s['signal']}" if s["signal"] else ""
    lines = [
        f"{PROG}: {len(s['streams'])} inputs, {t['frames']} frames in {t['elapsed_s']:.2f} s = {t['fps']:.2f} FPS in "
        f"total (dropped {t['dropped']}, gaps {t['gaps']}; {t['encoder_calls']} encoder calls, "
        f"{t['frames_per_call']:.2f} frames/call){stop}",
        f"  {'input':<7}{'frames':>7}{'FPS':>8}{'dropped':>8}{'gaps':>5}{'size':>11}{'B/frame':>9}  tokens",
    ]
    for index, st in enumerate(s["streams"]):
        size = f"{st['size'][0]}x{st['size'][1]}" if st["size"] else "-"
        lines.append(
            f"  {index:<7}{st['frames']:>7}{st['fps']:>8.2f}{st['dropped']:>8}{len(st['gaps']):>5}{size:>11}"
            f"{st['bytes_per_frame']:>9.1f}  {st['tokens'] or '-'}"
        )
    written = [p for st in s["streams"] for p in (st["output"], st["tokens"]) if p] + ([args.json] if args.json else [])
    if written:
        lines.append(f"wrote: {len(written)} files" + (f" (--json {args.json})" if args.json else ""))
    print("\n".join(lines))
