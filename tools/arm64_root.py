"""Run the README's Jetson install and the runtime in an emulated arm64 Debian root, and compare its tokens with
this machine's.

A Jetson's CPU side is an aarch64 Linux with a system Python, a system OpenCV built against the system numpy 1.x,
and a ``--system-site-packages`` venv. This script builds the closest stand-in an x86 machine allows: a Debian
bookworm arm64 root (``debootstrap --arch arm64``, run through ``qemu-user-static``'s binfmt handler) with
``python3``, ``python3-venv`` and Debian's ``python3-opencv`` 4.6 (built against numpy 1.24). Then, in that root:

    1. copies this working tree (tracked and untracked, not ignored files) to /opt/provq;
    2. runs the Jetson row of README.md's "Installing" table, the command taken from the README itself;
    3. installs PyPI's aarch64 ``onnxruntime`` wheel (the same version as here) in place of NVIDIA's onnxruntime-gpu;
    4. runs ``provq-doctor``, ``provq-run sample:// recon.mp4 --tokens clip.ptok --json run.json``,
       ``provq-decode clip.ptok decoded.mp4`` and a short ``provq-bench``;

and runs the same provq-run command here (x86, this interpreter's environment) to compare the token ids position
by position. It prints a JSON summary (also written to ``--report``): wall times of each step, the versions in the
root, the id agreement, and whether pip in the root reached PyPI. Exit status 0 when every step succeeded and at
least ``--min-agreement`` of the positions are equal, 1 otherwise, 2 on a usage error.

    sudo python tools/arm64_root.py                       # root cached in ~/.cache/provq-arm64 after the first run
    python tools/arm64_root.py --root /var/tmp/arm64 --report arm64.json
    python tools/arm64_root.py --rebuild                  # build the root again from scratch

Needs root (debootstrap, chroot, mounts), Debian's ``qemu-user-static``, ``binfmt-support`` and ``debootstrap``
(installed with apt-get when missing) and the Debian mirror and PyPI reachable while the root is built and the
project installed; provq itself downloads nothing when it runs. pip in the root trusts the host's CA bundle
(``--ca-bundle``), so a TLS-inspecting proxy that the host trusts works there too. Emulation makes everything in the
root 10-50x slower than native: run it under ``nice``. The pytest test ``tests/test_arm64_root.py`` (marker
``aarch64``, deselected by default) runs this script; ``.ci/run`` runs it when ``PROVQ_CI_AARCH64=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "provq-arm64" / "bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
ROOT_PACKAGES = ("python3", "python3-venv", "python3-opencv", "ca-certificates")
HOST_PACKAGES = {  # the host tool: the Debian package that has it
    "qemu-aarch64-static": "qemu-user-static",
    "debootstrap": "debootstrap",
    "update-binfmts": "binfmt-support",
}
READY = ".provq-root.json"  # written last: its presence means the root is complete
PROJECT = "/opt/provq"  # where the working tree goes inside the root
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ROOT_CA = "/etc/ssl/certs/provq-host-ca.pem"
RUN_ARGS = ["sample://", "recon.mp4", "--tokens", "clip.ptok", "--json", "run.json"]
DECODE_ARGS = ["clip.ptok", "decoded.mp4"]
BENCH_ARGS = ["--frames", "8", "--warmup", "2", "--backends", "onnxruntime", "--precisions", "fp32,int8",
              "--no-video", "--json", "bench.json"]  # fmt: skip
# Whether the root reaches PyPI trusting only its own CA certificates (Debian's ca-certificates); not fatal.
PYPI_PROBE = (
    'python3 -c "import urllib.request as u; '
    "print('PyPI', u.urlopen('https://pypi.org/simple/pip/', timeout=60).status)\""
)
# The CPU qemu emulates (qemu-user reads QEMU_CPU from the environment of every process it starts). Its default,
# "max", has SVE, and ONNX Runtime's aarch64 kernels then take SVE paths that qemu runs 10-20x slower than NEON
# (one 64x64 encoder call: 5.7 s against 0.6 s, measured on 2026-12-02). A Jetson Orin's Cortex-A78AE has no SVE;
# qemu 7.2's nearest model is the Cortex-A76 (ARMv8.2 with the dot-product instructions, NEON, no SVE).
QEMU_CPU = "cortex-a76"
CHROOT_ENV = {
    "QEMU_CPU": QEMU_CPU,
    "HOME": "/root",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_ROOT_USER_ACTION": "ignore",
}


class Failure(Exception):
    """A step that cannot go on; the message is one line."""


def jetson_install_command(readme: Path = REPO / "README.md") -> str:
    """The command in the README's "a Jetson" row of the "Installing" table (the first `code` span in it)."""
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("| a Jetson"):
            m = re.search(r"`([^`]+)`", line)
            if m:
                return m.group(1)
    raise Failure(f"{readme} has no '| a Jetson' row with a `command` in its Installing table")


def _sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """A host command; aarch64 programs it starts (debootstrap's second stage) run on QEMU_CPU."""
    return subprocess.run(cmd, check=False, text=True, capture_output=True, env={**os.environ, "QEMU_CPU": QEMU_CPU},
                          **kw)  # fmt: skip


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- the host side: tools and binfmt ---------------------------------------------------------------------------------


def ensure_host_tools() -> None:
    """qemu-user-static, debootstrap and binfmt-support from Debian (apt-get update + install when missing)."""
    if os.geteuid() != 0:
        raise Failure("needs root (debootstrap, chroot and bind mounts): run it with sudo")
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None})
    if missing:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            done = _sh(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if done.returncode != 0:
                raise Failure(f"{' '.join(cmd)} failed: {_tail(done.stderr, 1)}")
    if not (BINFMT / "register").exists():
        _sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    if not (BINFMT / "qemu-aarch64").exists():
        _sh(["update-binfmts", "--enable", "qemu-aarch64"])
    if not (BINFMT / "qemu-aarch64").exists():
        raise Failure("the qemu-aarch64 binfmt handler is not registered: `update-binfmts --enable qemu-aarch64`")


# -- the root ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc and /dev of the host inside the root while the block runs (unmounted in reverse order; what a killed
    earlier run left mounted there is unmounted first). /sys stays out: with both the host's x86 /proc/cpuinfo and
    its /sys CPU topology in view, the cpuinfo library inside ONNX Runtime's aarch64 wheel crashes at import under
    emulation (a segmentation fault), which a real aarch64 machine, whose /proc and /sys agree, never sees."""
    unmount(root)
    done: list[Path] = []
    try:
        for src, dst, args in (
            ("proc", "proc", ["-t", "proc"]),
            ("/dev", "dev", ["--rbind"]),
        ):
            target = root / dst
            target.mkdir(exist_ok=True)
            if _sh(["mount", *args, src, str(target)]).returncode != 0:
                raise Failure(f"cannot mount {src} on {target}")
            if args == ["--rbind"]:
                _sh(["mount", "--make-rslave", str(target)])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            _sh(["umount", "-R", "-l", str(target)])


def in_root(root: Path, script: str, cwd: str = "/", env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run ``sh -c script`` inside the root with a clean environment: (exit status, stdout + stderr, wall seconds)."""
    start = time.monotonic()
    done = subprocess.run(
        ["chroot", str(root), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in {**CHROOT_ENV, **(env or {})}.items()],
         "/bin/sh", "-c", f"cd {cwd} && {script}"],
        check=False, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "QEMU_CPU": QEMU_CPU},  # for /usr/bin/env itself; CHROOT_ENV passes it on
    )  # fmt: skip
    return done.returncode, done.stdout, time.monotonic() - start


def unmount(root: Path) -> list[Path]:
    """Unmount whatever is mounted on the root's proc, sys and dev (made slaves first, so that nothing propagates
    back to the host's own mounts); returns those three paths."""
    mounts = [root / d for d in ("proc", "sys", "dev")]
    for target in mounts:
        if target.is_mount():
            _sh(["mount", "--make-rslave", str(target)])
            _sh(["umount", "-R", "-l", str(target)])
    return mounts


def remove_root(root: Path) -> None:
    """Delete a root (a half-built one too), after making sure no host /proc, /sys or /dev is mounted inside it."""
    if not root.exists():
        return
    mounts = unmount(root)
    if any(m.is_mount() for m in mounts):
        raise Failure(f"{root} still has host file systems mounted (umount -R {root}/dev {root}/sys {root}/proc)")
    shutil.rmtree(root)


def build_root(root: Path, rebuild: bool, log: list[str]) -> dict[str, Any]:
    """Build the root once (debootstrap of the base system with ROOT_PACKAGES); returns its READY record."""
    ready = root / READY
    if ready.exists() and not rebuild:
        record = json.loads(ready.read_text(encoding="utf-8"))
        return {**record, "cached": True}
    work = root.with_name(root.name + ".partial")
    remove_root(work)
    if rebuild:
        remove_root(root)
    work.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # debootstrap resolves and installs ROOT_PACKAGES with the base system in one pass: an apt-get update and
    # install in the root afterwards would run apt's solver under emulation (14 min for the update alone).
    strap = _sh(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}", SUITE,
                 str(work), MIRROR])  # fmt: skip
    log.append(f"debootstrap: rc {strap.returncode} in {time.monotonic() - start:.0f} s")
    if strap.returncode != 0:
        raise Failure(f"debootstrap --arch=arm64 failed: {_tail(strap.stdout + strap.stderr, 1)}")
    record = {
        "suite": SUITE,
        "build_s": round(time.monotonic() - start, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / READY).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    remove_root(root)
    work.rename(root)
    return {**record, "cached": False}


def root_versions(root: Path) -> dict[str, str]:
    """What the root runs as (uname -m), its Python and the Debian versions of python3-opencv and python3-numpy."""
    rc, out, _ = in_root(
        root, "uname -m; python3 -V; dpkg-query -W -f '${Package} ${Version}\\n' python3-opencv python3-numpy"
    )
    machine, _, python, *rest = out.split()
    if rc != 0 or machine != "aarch64":
        raise Failure(f"the root runs as {machine}, not aarch64: is the qemu-aarch64 binfmt handler enabled?")
    return {"machine": machine, "python": python, **dict(zip(rest[::2], rest[1::2], strict=True))}


def copy_project(root: Path) -> int:
    """This working tree's files (tracked plus untracked, not ignored) to PROJECT in the root; returns the count."""
    listed = _sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    if listed.returncode != 0:
        raise Failure(f"git ls-files failed in {REPO}: {_tail(listed.stderr, 1)}")
    dest = root / PROJECT.lstrip("/")
    if dest.exists():
        shutil.rmtree(dest)
    files = [f for f in listed.stdout.split("\0") if f and (REPO / f).is_file()]
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return len(files)


# -- the runs ------------------------------------------------------------------------------------------------------


def host_run(workdir: Path) -> tuple[Path, float]:
    """The provq-run command on this machine (this interpreter's environment); returns (clip.ptok, wall seconds)."""
    start = time.monotonic()
    done = _sh([str(Path(sys.executable).parent / "provq-run"), *RUN_ARGS], cwd=workdir)
    if done.returncode != 0:
        raise Failure(f"provq-run on this machine failed (exit {done.returncode}): {_tail(done.stderr, 1)}")
    return workdir / "clip.ptok", time.monotonic() - start


def id_agreement(a: Path, b: Path) -> dict[str, Any]:
    """Positions where two token streams of the shipped model hold the same id: frames compared, positions, equal,
    fraction."""
    from provq.edge_runtime.manifest import load_manifest
    from provq.edge_runtime.stable import load_codebook
    from provq.edge_runtime.tokenstream import TokenStreamReader

    codebook = load_codebook(load_manifest("default"))
    with TokenStreamReader(a, codebook=codebook) as ra, TokenStreamReader(b, codebook=codebook) as rb:
        fa, fb = list(ra.frames()), list(rb.frames())
    if len(fa) != len(fb) or any(x.ids.shape != y.ids.shape for x, y in zip(fa, fb, strict=False)):
        raise Failure(f"{a} has {len(fa)} frames, {b} has {len(fb)} (or their grids differ)")
    positions = sum(f.ids.size for f in fa)
    equal = sum(int((x.ids == y.ids).sum()) for x, y in zip(fa, fb, strict=True))
    return {"frames": len(fa), "positions": positions, "equal": equal, "agreement": equal / positions}


def run_in_root(
    root: Path, ca_bundle: Path | None, report: dict[str, Any], after_step: Callable[[str], None] = lambda _: None
) -> None:
    """Install as the README says, then doctor, run, decode and bench; then, with a numpy 2 put into the venv (as
    the README's install did before it kept numpy below 2 on aarch64), provq-run and provq-doctor must say so in one
    line (exit 2 and 1); the numpy 2 is removed again. Fills report["steps"]: command, exit status, wall seconds and
    the output's last lines of each; ``after_step(name)`` is called after each step that exited as it must."""
    env: dict[str, str] = {}
    if ca_bundle is not None:
        shutil.copy2(ca_bundle, root / ROOT_CA.lstrip("/"))
        env["PIP_CERT"] = ROOT_CA
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    venv = f"{PROJECT}/.venv/bin"
    ort = importlib.metadata.version("onnxruntime")
    steps = [  # name, script, directory, the exit status it must have (None: any)
        ("pypi_root_ca", PYPI_PROBE, PROJECT, None),
        ("install", jetson_install_command(), PROJECT, 0),
        ("onnxruntime", f"{venv}/pip install onnxruntime=={ort}", PROJECT, 0),
        ("versions", f"{venv}/python -c \"import numpy, cv2, onnxruntime; print(numpy.__version__, numpy.__file__); "
                     "print(cv2.__version__, cv2.__file__); print(onnxruntime.__version__)\"", PROJECT, 0),
        ("doctor", f"{venv}/provq-doctor", PROJECT, 0),
        ("run", f"mkdir -p work && cd work && rm -f clip.ptok && {venv}/provq-run {' '.join(RUN_ARGS)}", PROJECT, 0),
        ("decode", f"rm -f decoded.mp4 && {venv}/provq-decode {' '.join(DECODE_ARGS)}", f"{PROJECT}/work", 0),
        ("bench", f"{venv}/provq-bench {' '.join(BENCH_ARGS)}", f"{PROJECT}/work", 0),
        ("numpy2_install", f"{venv}/pip install 'numpy>=2'", PROJECT, 0),
        ("numpy2_run", f"{venv}/provq-run sample:// --max-frames 1", PROJECT, 2),
        ("numpy2_doctor", f"{venv}/provq-doctor", PROJECT, 1),
        ("numpy2_remove", f"{venv}/pip uninstall -y numpy && {venv}/python -c 'import cv2'", PROJECT, 0),
    ]  # fmt: skip
    report["steps"] = {}
    with mounted(root):
        for name, script, cwd, expected in steps:
            rc, out, wall = in_root(root, script, cwd, env)
            report["steps"][name] = {"command": script, "rc": rc, "wall_s": round(wall, 1), "tail": _tail(out)}
            print(f"arm64_root: {name}: exit {rc} in {wall:.0f} s", file=sys.stderr, flush=True)
            if expected is not None and rc != expected:
                raise Failure(f"step {name!r} exited {rc} in the root, not {expected}: {_tail(out, 1)}")
            after_step(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the root is built and cached (%(default)s)")
    p.add_argument("--rebuild", action="store_true", help="build the root again even when it is complete")
    p.add_argument("--report", type=Path, default=None, help="also write the JSON summary here")
    p.add_argument("--min-agreement", type=float, default=0.999, help="id agreement needed (default: %(default)s)")
    p.add_argument(
        "--ca-bundle",
        type=Path,
        default=Path("/etc/ssl/certs/ca-certificates.crt"),
        help="the CA bundle pip in the root trusts; 'none' for the root's own (default: %(default)s)",
    )
    args = p.parse_args(argv)
    ca = None if str(args.ca_bundle) == "none" else args.ca_bundle
    report: dict[str, Any] = {"log": []}
    start = time.monotonic()

    def save() -> None:
        """The report so far, to --report: a run of over an hour shows its figures as they come."""
        if args.report is not None:
            args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="provq-x86-") as tmp:
        try:
            ensure_host_tools()
            host_ptok, host_s = host_run(Path(tmp))  # first: the ids are compared as soon as the root's run ends
            report["host_run_s"] = round(host_s, 1)
            report["root_build"] = build_root(args.root.resolve(), args.rebuild, report["log"])
            report["root"] = {"path": str(args.root), **root_versions(args.root)}
            report["files_copied"] = copy_project(args.root)

            def after_step(name: str) -> None:
                if name == "run":
                    report["ids"] = id_agreement(host_ptok, args.root / PROJECT.lstrip("/") / "work/clip.ptok")
                    print(f"arm64_root: ids: {report['ids']['agreement']:.4%} equal the x86 run's", file=sys.stderr)
                save()

            run_in_root(args.root, ca, report, after_step)
        except Failure as err:
            report["error"] = str(err)
    report["total_s"] = round(time.monotonic() - start, 1)
    report["ok"] = "error" not in report and report["ids"]["agreement"] >= args.min_agreement
    print(json.dumps(report, indent=2))
    save()
    if "error" in report:
        print(f"arm64_root: error: {report['error']}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
