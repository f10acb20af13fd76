"""``provq-decode``: a token stream (.ptok) back to frames at their original size, as a video or numbered images.

Examples:
    provq-decode clip.ptok decoded.mp4
    provq-decode clip.ptok frames/%06d.png --model models/tiny --precision int8
    provq-decode cam.ptok lossless.mkv                   # FFV1: the decoder's pixels exactly

The stream must have been made with this model's codebook (its fingerprint is in the header); frames are restored
to the size recorded in the header (pad, crop or resize undone). A damaged stream decodes every intact chunk, then
exits 1 naming the damaged chunks; a stream whose writer was killed mid-chunk (a torn tail) decodes all complete
chunks and exits 0 with a note. User errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .console import StatusLine, command_parser, run_command, stop_on_signals
from .errors import EdgeError
from .run_cli import positive_int

PROG = "provq-decode"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(PROG, "Decode a provq token stream back to frames.", __doc__)
    p.add_argument("tokens", metavar="FILE.ptok", type=Path, help="a token stream written by provq-run --tokens")
    p.add_argument("output", metavar="OUTPUT", help="file.mp4|.avi|.mkv, folder/%%06d.png, a folder, or display://0")
    p.add_argument(
        "--model", default="default", help="the model that wrote the stream, or 'default' (default: %(default)s)"
    )
    p.add_argument(
        "--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime"), help="default: %(default)s"
    )
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="decoder (default: %(default)s)"
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="K", help="ONNX Runtime threads")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), _decode, argv)


def _decode(args: argparse.Namespace) -> int:
    from .backends import open_backend
    from .manifest import load_manifest
    from .outputs import DisplayOutput, open_output
    from .preprocess import Geometry, from_model_output, restore
    from .stable import load_codebook
    from .tokenstream import Frame, TokenStreamReader

    manifest = load_manifest(args.model)
    with TokenStreamReader(
        args.tokens, expect_codebook_sha256=manifest.codebook_sha256, codebook=load_codebook(manifest)
    ) as reader:
        h = reader.header
        if h.downsample != manifest.downsample or h.codebook_size != manifest.codebook_size:
            raise EdgeError(
                f"{args.tokens} has downsample {h.downsample} and K = {h.codebook_size}, the model {manifest.directory}"
                f" has {manifest.downsample} and {manifest.codebook_size}: decode it with the model that wrote it"
            )
        geometry = Geometry(h.height, h.width, h.model_height, h.model_width, h.fit, h.top, h.left)
        output = open_output(args.output, fps=h.fps)
        backend = open_backend(manifest.directory, args.backend, args.precision, threads=args.threads)
        described = backend.describe()
        status = StatusLine()
        start = time.perf_counter()
        ok = False
        stop: list[bool] = []
        try:
            with stop_on_signals(lambda: stop.append(True)) as received:
                for item in reader:
                    if stop:
                        break
                    if not isinstance(item, Frame):
                        continue
                    images = backend.decode(item.ids[None])
                    output.write(restore(from_model_output(images)[0], geometry))
                    if isinstance(output, DisplayOutput) and not output.pump(0.0):
                        break
                    elapsed = time.perf_counter() - start
                    status.update(
                        f"{backend.name} {backend.precision} | frame {output.frames} | "
                        f"{output.frames / elapsed:.1f} FPS"
                    )
            ok = True
        finally:
            status.done()
            output.close(ok=ok)
            backend.close()
        report = reader.report
    elapsed = time.perf_counter() - start
    wrote = f"wrote {output.describe()}" if output.frames else "the stream holds no frames"
    print(
        f"{PROG}: {output.frames} frames ({h.width}x{h.height}, fit {h.fit}) from {args.tokens} in {elapsed:.2f} s "
        f"with {described}; {wrote}"
    )
    if report.torn_tail_bytes:
        print(
            f"{PROG}: note: the stream ends in a torn chunk ({report.torn_tail_bytes} bytes, its writer was stopped "
            "mid-write); every complete chunk was decoded",
            file=sys.stderr,
        )
    try:
        report.check()
    except EdgeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 130 if "SIGINT" in received else 0


if __name__ == "__main__":
    sys.exit(main())
