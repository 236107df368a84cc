"""A throwaway PostgreSQL server for the tests and the benchmarks (standard library only).

    with PostgresServer.start() as server:
        url = server.url("agentloop_x")   # postgresql://postgres:PW@127.0.0.1:PORT/agentloop_x

Its own cluster (``initdb`` in a fresh temporary directory), never a system cluster: it listens
on 127.0.0.1 on a free port, with its unix socket in that directory, password (scram) auth on
loopback; stopped (``pg_ctl stop -m fast``) and the directory removed at the end. Run as root,
the server runs as the ``postgres`` user (Postgres refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PACKAGE = "postgresql"  # the Debian package that brings initdb and pg_ctl


class PostgresUnavailable(RuntimeError):
    """The server binaries are not installed (the reason says what to install)."""


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else the newest
    /usr/lib/postgresql/*/bin (Debian does not put them on PATH)."""
    found = shutil.which("initdb")
    if found and (Path(found).parent / "pg_ctl").exists():
        return Path(found).resolve().parent
    candidates = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()
    ]

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", d.parent.name)) or (0,)

    return max(candidates, key=version) if candidates else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None."""
    if find_bin_dir() is not None:
        return None
    return (
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH nor under "
        f"/usr/lib/postgresql/*/bin: install the Debian package `{PACKAGE}` "
        f"(apt-get install {PACKAGE}) to run the Postgres tests and benchmark rows"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # the temporary directory: data/, the socket, the log
    port: int
    password: str
    as_postgres: bool  # run the binaries as the postgres user (we are root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def fresh_url(self, prefix: str = "agentloop") -> str:
        """A URL naming a database that does not exist yet (DBOS creates it)."""
        return self.url(f"{prefix}_{secrets.token_hex(6)}")

    # -- life ----------------------------------------------------------------------------------
    @classmethod
    def start(cls, *, settings: Sequence[str] = ()) -> PostgresServer:
        """initdb a fresh cluster and start it. ``settings`` are extra ``-c name=value``
        server options. Raises PostgresUnavailable if the binaries are absent, RuntimeError
        (with the server's log) if it cannot be started."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable(missing_reason())
        as_postgres = os.geteuid() == 0
        if as_postgres:
            try:
                import pwd

                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root, the server must run as the `postgres` user, and there is "
                    f"none here (Debian's `{PACKAGE}` package creates it)"
                ) from None
            # /tmp: every user can reach it (a root-only TMPDIR would lock the server out)
            root = Path(tempfile.mkdtemp(prefix="agentloop-pg-", dir="/tmp"))
            os.chown(root, owner.pw_uid, owner.pw_gid)
        else:
            root = Path(tempfile.mkdtemp(prefix="agentloop-pg-"))
        server = cls(bin_dir, root, 0, secrets.token_hex(16), as_postgres)
        try:
            server._initdb()
            server._launch(settings)
        except BaseException:
            server._remove()
            raise
        return server

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=120, check=False
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres")
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster: its creation need not survive a power cut
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout)[-2000:]}")

    def _launch(self, settings: Sequence[str]) -> None:
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            *(f"-c {s}" for s in settings),
        ]
        for _ in range(5):  # another process may take the free port before the server does
            self.port = _free_port()
            done = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                " ".join([f"-p {self.port}", *options]),
            )
            if done.returncode == 0:
                return
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "could not bind" not in log and "already in use" not in log:
                break
        raise RuntimeError(
            f"pg_ctl start failed: {(done.stderr or done.stdout)[-1000:]}\n{log[-2000:]}"
        )

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data))
        finally:
            self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
