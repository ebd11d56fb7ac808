"""The container image, built without a registry and run until /readyz answers.

No image registry is reachable from the machines this suite runs on, so `FROM debian:bookworm`
cannot be pulled. The test builds the same image the Containerfile describes from Debian's own
packages instead, step for step:

1. the base: `mmdebstrap` makes a Debian 12 root filesystem from the configured apt mirror,
   with the runtime stage's packages (python3, libgrpc++'s runtime, ca-certificates) and
   python3-venv for the build;
2. the build stage: trustplane and its dependencies as wheels (`pip wheel`, the project's own
   index), installed into /opt/trustplane inside the root filesystem with its own Python
   (`pip install --no-index`), and the compiled ext_authz front when bootstrap built one
   (same Debian, same libgrpc++);
3. the runtime stage: the `trustplane` user (uid 10001) and its state directory;
4. the image: `umoci` turns the root filesystem into an OCI image layout with the
   Containerfile's config (user, entrypoint, command, environment, ports, volume);
5. the run: `umoci unpack` gives the runtime bundle; its root filesystem is run the way a
   container runtime would (podman's crun refuses every container in this sandbox: setrlimit
   not permitted, then cgroups in hybrid mode; see docs/operations.md, "The image"), in a
   mount namespace where it is read-only (`unshare --mount`, bind mounts: / read-only, a
   writable state volume, a tmpfs /tmp) as uid 10001 with the image's environment, until
   /readyz answers 200.

Marked slow and run on demand: it takes about ten minutes on a loaded 2-core machine, so the
suite skips it unless asked (`TRUSTPLANE_IMAGE_TEST=1 pytest tests/deploy/test_image.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SHOP
from tests.support import REPO, free_port, required_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PACKAGES = "python3,python3-venv,libgrpc++1.51,ca-certificates,passwd"
STATE = "/var/lib/trustplane"


def run(*args: str, timeout: float = 1200, **kwargs: object) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return str(done.stdout)


def test_the_image_builds_from_debian_packages_and_serves(tmp_path: Path) -> None:
    if os.environ.get("TRUSTPLANE_IMAGE_TEST") != "1":
        pytest.skip("on demand: TRUSTPLANE_IMAGE_TEST=1 builds and runs the image (~10 min)")
    if os.geteuid() != 0:
        pytest.skip("building a root filesystem and a mount namespace need root")
    mmdebstrap, umoci = required_binary("mmdebstrap"), required_binary("umoci")
    rootfs = tmp_path / "rootfs"
    # 1. the base
    run(
        mmdebstrap, "--mode=root", "--variant=apt", f"--include={PACKAGES}", "bookworm", str(rootfs)
    )
    # 2. the build stage
    wheelhouse = rootfs / "wheelhouse"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse), str(REPO))
    run("chroot", str(rootfs), "python3", "-m", "venv", "/opt/trustplane")
    run(
        "chroot",
        str(rootfs),
        "/opt/trustplane/bin/pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        "/wheelhouse",
        "trustplane",
    )
    shutil.rmtree(wheelhouse)
    front = REPO / ".venv" / "bin" / "trustplane-extauthz"
    if front.exists():
        shutil.copy2(front, rootfs / "opt/trustplane/bin/trustplane-extauthz")
    # 3. the runtime stage
    run("chroot", str(rootfs), "groupadd", "--system", "--gid", "10001", "trustplane")
    run(
        "chroot",
        str(rootfs),
        "useradd",
        "--system",
        "--uid",
        "10001",
        "--gid",
        "trustplane",
        "--home-dir",
        STATE,
        "--shell",
        "/usr/sbin/nologin",
        "trustplane",
    )
    (rootfs / STATE.lstrip("/")).mkdir(parents=True, mode=0o700)
    os.chown(rootfs / STATE.lstrip("/"), 10001, 10001)
    (rootfs / "etc/trustplane/bundle").mkdir(parents=True)
    # 4. the image, configured as the Containerfile says
    layout = tmp_path / "oci"
    image = f"{layout}:trustplane"
    run(umoci, "init", "--layout", str(layout))
    run(umoci, "new", "--image", image)
    staging = tmp_path / "staging"
    run(umoci, "unpack", "--image", image, str(staging))
    shutil.rmtree(staging / "rootfs")
    rootfs.rename(staging / "rootfs")
    run(umoci, "repack", "--image", image, str(staging))
    env = {
        "PATH": "/opt/trustplane/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TRUSTPLANE_STATE_DIR": STATE,
        "TRUSTPLANE_POLICY__BUNDLE_DIR": "/etc/trustplane/bundle",
        "TRUSTPLANE_SERVER__HOST": "0.0.0.0",
        "TRUSTPLANE_PEP__AUTH": "required",
        "TRUSTPLANE_LOG_FORMAT": "json",
    }
    config = [
        umoci,
        "config",
        "--image",
        image,
        "--config.user",
        "10001:10001",
        "--config.entrypoint",
        "trustplane",
        "--config.cmd",
        "serve",
        "--config.cmd",
        "--init",
        "--config.exposedports",
        "8181/tcp",
        "--config.exposedports",
        "9191/tcp",
        "--config.volume",
        STATE,
    ]
    for key, value in env.items():
        config += ["--config.env", f"{key}={value}"]
    run(*config)
    # 5. the run: unpack the image and start its entrypoint on a read-only root
    bundle = tmp_path / "bundle"
    run(umoci, "unpack", "--image", image, str(bundle))
    spec = json.loads((bundle / "config.json").read_text())
    process = spec["process"]
    assert process["user"]["uid"] == 10001 and process["args"] == ["trustplane", "serve", "--init"]
    port, grpc_port = free_port(), free_port()
    image_env = dict(item.split("=", 1) for item in process["env"])
    image_env.update(TRUSTPLANE_SERVER__PORT=str(port), TRUSTPLANE_GRPC__PORT=str(grpc_port))
    state_volume = tmp_path / "state"
    state_volume.mkdir(mode=0o700)
    os.chown(state_volume, 10001, 10001)
    root = bundle / "rootfs"
    script = "\n".join(
        [
            "set -e",
            f"mount --bind {root} {root}",
            f"mount --bind {SHOP} {root}/etc/trustplane/bundle",
            f"mount -o remount,bind,ro {root}/etc/trustplane/bundle",
            f"mount --bind {state_volume} {root}{STATE}",
            f"mount -t tmpfs -o size=64m tmpfs {root}/tmp",
            f"mount -t proc proc {root}/proc",
            f"mount -o remount,bind,ro {root}",
            f"exec chroot --userspec=10001:10001 {root} env -i "
            + " ".join(f"{k}='{v}'" for k, v in image_env.items())
            + " "
            + " ".join(process["args"]),
        ]
    )
    log = (tmp_path / "container.log").open("wb")
    container = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        ready = None
        while time.monotonic() < deadline and container.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        output = (tmp_path / "container.log").read_text(errors="replace")
        assert ready is not None and ready.status_code == 200, output[-4000:]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        # Nothing but the state volume was written: the root filesystem is read-only.
        assert (state_volume / "ledger.key").exists()
        assert "Read-only file system" not in output
    finally:
        container.terminate()
        container.wait(30)
        log.close()
