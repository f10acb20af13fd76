"""A real RTSP server on 127.0.0.1 for the live-source tests: GStreamer's RTSP server (gst-rtsp-server, Debian's
``gir1.2-gst-rtsp-server-1.0``) serving a real clip as H.264 over RTP, looped, at a chosen size and rate.

Two halves in one file:

* run as a script by the SYSTEM Python (``/usr/bin/python3``, which has PyGObject; the test venv does not), it is the
  server: the clip is decoded once to raw I420 frames at WIDTH x HEIGHT, and every client of every mount gets its own
  ``appsrc ! x264enc tune=zerolatency ! rtph264pay`` pipeline fed those frames in a loop at RATE frames per second
  (timestamps n / RATE; the server's sinks pace them in real time). A keyframe every second lets a client that
  reconnects decode again within a second. It prints ``READY <port>`` once it listens;
* imported by the tests, ``RtspServer`` starts that process, waits until it answers an RTSP OPTIONS request, and
  stops it (SIGTERM) or kills it (SIGKILL, a camera that dies mid-stream); ``start()`` again reuses the port, so a
  client sees the same camera come back.

    server = RtspServer(mounts=("cam0", "cam1"), width=384, height=288, rate=10)
    server.start()
    server.url("cam0")          # rtsp://127.0.0.1:PORT/cam0
    server.kill(); server.start()
    server.stop()

    /usr/bin/python3 tests/rtsp_server.py --mount cam0 --mount cam1 --width 384 --height 288 --rate 10 [--port 8554]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve()
CLIP = HERE.parent.parent / "edge_runtime" / "assets" / "sample" / "clip.mp4"  # 80 frames, 480x270, 25 fps, H.264
ELEMENTS = ("appsrc", "appsink", "decodebin", "videoconvert", "videoscale", "x264enc", "rtph264pay", "qtdemux")
APT_PACKAGES = (  # what the server needs on Debian 12
    "python3-gi", "gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly", "gstreamer1.0-libav",
)  # fmt: skip
START_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------------------------------------------------
# test side (any Python): start, probe, stop


def missing() -> str:
    """Why the server cannot run here ('' when it can): no system Python, no PyGObject, a missing element."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON}"
    command = [SYSTEM_PYTHON, str(HERE), "--check"]
    probe = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        lines = (probe.stdout + probe.stderr).strip().splitlines()
        return lines[-1] if lines else f"{HERE.name} --check failed"
    return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound and closed at once: connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rtsp_options(port: int, timeout_s: float = 2.0) -> bool:
    """Whether an RTSP server on 127.0.0.1:port answers OPTIONS with 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(f"OPTIONS rtsp://127.0.0.1:{port}/ RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
            return sock.recv(64).startswith(b"RTSP/1.0 200")
    except OSError:
        return False


class RtspServer:
    """The server process, serving ``mounts`` (paths without the slash) on one port; ``port`` 0 picks a free one
    at the first start and keeps it for later starts."""

    def __init__(
        self,
        mounts: tuple[str, ...] = ("cam",),
        *,
        width: int = 384,
        height: int = 288,
        rate: float = 10.0,
        clip: Path = CLIP,
        port: int = 0,
    ) -> None:
        self.mounts = mounts
        self.width, self.height, self.rate = width, height, rate
        self.clip = clip
        self.port = port
        self.process: subprocess.Popen[str] | None = None

    def url(self, mount: str | None = None) -> str:
        """rtsp://127.0.0.1:PORT/MOUNT (the first mount by default)."""
        return f"rtsp://127.0.0.1:{self.port}/{mount or self.mounts[0]}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RtspServer:
        """Start the process and return once it answers RTSP OPTIONS; RuntimeError (with its stderr) otherwise."""
        if self.running:
            raise RuntimeError("the RTSP server is already running")
        command = [SYSTEM_PYTHON, str(HERE), "--port", str(self.port), "--width", str(self.width),
                   "--height", str(self.height), "--rate", str(self.rate), "--clip", str(self.clip)]  # fmt: skip
        for mount in self.mounts:
            command += ["--mount", mount]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # READY <port>, or '' when it died
        if not line.startswith("READY "):
            self.process.wait(10)
            raise RuntimeError(f"the RTSP server did not start: {self.process.stderr.read().strip()[-2000:]}")
        self.port = int(line.split()[1])
        deadline = time.monotonic() + START_TIMEOUT_S
        while not rtsp_options(self.port):
            if time.monotonic() > deadline or not self.running:
                self.kill()
                raise RuntimeError(f"the RTSP server on port {self.port} does not answer OPTIONS")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; safe when not running."""
        if self.process is None:
            return
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL at once: the server dies mid-stream without closing its sessions."""
        if self.process is None:
            return
        if self.running:
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        assert self.process is not None
        self.process.wait(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        self.process = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------------------------
# server side (system Python with PyGObject)


def _require_gst():
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    absent = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if absent:
        raise SystemExit(f"GStreamer elements missing: {', '.join(absent)} (apt-get install {' '.join(APT_PACKAGES)})")
    return GLib, Gst, GstRtspServer


def decode_clip(Gst, clip: Path, width: int, height: int) -> list[bytes]:
    """Every frame of ``clip`` as raw I420 bytes at width x height (the aspect ratio is not kept)."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{clip}" ! decodebin ! videoconvert ! videoscale ! '
        f"video/x-raw,format=I420,width={width},height={height},pixel-aspect-ratio=1/1 ! "
        "appsink name=sink sync=false emit-signals=false max-buffers=0"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames = []
    while (sample := sink.emit("pull-sample")) is not None:
        buffer = sample.get_buffer()
        frames.append(buffer.extract_dup(0, buffer.get_size()))
    bus_error = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if bus_error is not None or not frames:
        detail = bus_error.parse_error()[0].message if bus_error is not None else "no frames"
        raise SystemExit(f"cannot decode {clip}: {detail}")
    return frames


def serve(port: int, mounts: list[str], clip: Path, *, width: int, height: int, rate: float) -> None:
    GLib, Gst, GstRtspServer = _require_gst()
    frames = decode_clip(Gst, clip, width, height)
    rate_num, rate_den = round(rate * 1000), 1000
    duration = Gst.util_uint64_scale(Gst.SECOND, rate_den, rate_num)
    gop = max(1, round(rate))
    launch = (
        f"( appsrc name=src format=time caps=video/x-raw,format=I420,width={width},height={height},"
        f"framerate={rate_num}/{rate_den},pixel-aspect-ratio=1/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast threads=1 key-int-max={gop} bitrate=800 ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )

    def configure(_factory, media) -> None:
        """A client's pipeline: its appsrc pushes the clip's frames in a loop, timestamped n / rate."""
        appsrc = media.get_element().get_by_name_recurse_up("src")
        state = {"n": 0}

        def need_data(src, _length) -> None:
            n = state["n"]
            buffer = Gst.Buffer.new_wrapped(frames[n % len(frames)])
            buffer.pts = buffer.dts = n * duration
            buffer.duration = duration
            state["n"] = n + 1
            src.emit("push-buffer", buffer)

        appsrc.connect("need-data", need_data)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    for mount in mounts:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.connect("media-configure", configure)
        server.get_mount_points().add_factory(f"/{mount}", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port} (in use?)")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 0 when PyGObject and every element are present")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one (default)")
    p.add_argument("--mount", action="append", default=None, help="a mount path (repeat for more; default: cam)")
    p.add_argument("--clip", type=Path, default=CLIP, help="the video to serve (default: the shipped sample clip)")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--height", type=int, default=288)
    p.add_argument("--rate", type=float, default=10.0, help="frames per second")
    args = p.parse_args()
    if args.check:
        try:
            _require_gst()
        except (ImportError, ValueError) as err:
            fix = f"apt-get install {' '.join(APT_PACKAGES)}"
            raise SystemExit(f"PyGObject or GstRtspServer missing ({err}): {fix}") from None
        return
    os.environ.setdefault("GST_DEBUG", "0")
    serve(args.port, args.mount or ["cam"], args.clip, width=args.width, height=args.height, rate=args.rate)


if __name__ == "__main__":
    sys.exit(main())
