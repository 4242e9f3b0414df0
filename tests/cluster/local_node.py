"""A machine for `ray up` on this one: sshd on 127.0.0.1, in its own PID and mount namespaces.

`ray up` with the local provider needs a host it can reach over SSH. This module
starts a private sshd (its own host key, its own authorized key, a free port) in
new PID and mount namespaces, so that:

- `ray stop`, which `ray down` runs on the node and which kills every Ray process
  it can see, sees only the node's processes, never the test session's own cluster;
- the node's login shells get the test's virtual environment on their PATH from a
  private `/etc/profile.d` (bind-mounted inside the namespace only), as a real node
  would from its image or setup commands;
- stopping the node kills everything started in it: the namespace's first process
  is sshd, and when it dies the kernel kills the rest.

Needs root, `unshare` (util-linux), and Debian's openssh-server, rsync and
netcat-openbsd, which :func:`ensure_packages` installs when they are missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = {"sshd": "openssh-server", "rsync": "rsync", "nc": "netcat-openbsd"}


def ensure_packages() -> None:
    """Install the Debian packages the node needs, once (CI machines start without them)."""
    missing = [pkg for tool, pkg in PACKAGES.items()
               if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   capture_output=True, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalNode:
    """An SSH-reachable node on 127.0.0.1 (see the module docstring). Use as a context manager."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sopflow-node-"))
        self.key = self.dir / "id_ed25519"
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalNode:
        ensure_packages()
        for name in ("id_ed25519", "host_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)],
                           check=True)
        authorized = self.dir / "authorized_keys"
        authorized.write_text((self.dir / "id_ed25519.pub").read_text())
        authorized.chmod(0o600)
        profile_d = self.dir / "profile.d"
        profile_d.mkdir()
        # What a real node's image would do: sopflow's environment first on every login shell's PATH.
        (profile_d / "sopflow.sh").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
        config = self.dir / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.dir / 'host_ed25519'}
AuthorizedKeysFile {authorized}
PidFile {self.dir / 'sshd.pid'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
""")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        inside = f"mount --bind {profile_d} /etc/profile.d && exec /usr/sbin/sshd -D -e -f {config}"
        self._log = open(self.dir / "sshd.log", "wb")
        self._proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                       "sh", "-c", inside], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _accepts(self.port) or self._proc.poll() is not None, 30, "sshd to listen")
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def namespace(self) -> str:
        """The PID namespace of the node (``pid:[...]``), read from its first process."""
        assert self._proc is not None
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
        return os.readlink(f"/proc/{children[0]}/ns/pid")

    def processes(self) -> list[str]:
        """The command lines of every process running in the node (seen from the host)."""
        ns, found = self.namespace, []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") == ns:
                    found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except OSError:  # ended meanwhile
                continue
        return found

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``command`` on the node in a login shell, as `ray up` does."""
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", "-o", f"ProxyCommand=nc 127.0.0.1 {self.port}", "root@127.0.0.1",
             f"bash --login -c {command!r}"], capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """Kill the node and everything that runs in it."""
        if self._proc is not None and self._proc.poll() is None:
            # unshare does not pass SIGTERM on; killed, its --kill-child takes sshd (PID 1 of the
            # namespace) with it, and the kernel then ends every process of the namespace.
            self._proc.kill()
            self._proc.wait(timeout=30)
        if getattr(self, "_log", None) is not None:
            self._log.close()


def listening_address(port: int) -> str | None:
    """The IPv4 address a TCP socket on ``port`` listens on, from /proc/net/tcp (None: nothing listens)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
            return ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return None
