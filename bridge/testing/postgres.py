"""A throwaway PostgreSQL cluster on loopback for tests.

``initdb`` and ``pg_ctl`` refuse to run as root, so when the tests run as root they are run as
the ``postgres`` system user (created by Debian's ``postgresql`` package) through
``runuser -u postgres --``. The cluster then lives in its own temporary directory owned by
``postgres``, outside pytest's per-session directories (those are mode 0700 and the ``postgres``
user could not traverse them). The directory is removed by :meth:`PostgresServer.stop`; the
server log is copied into the caller's ``workdir`` first.

Authentication is ``trust`` and the server listens only on 127.0.0.1 and on a Unix socket in the
cluster's directory. Durability is switched off (``fsync=off`` and friends): the data is
thrown away anyway.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import free_port

PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "PostgreSQL not found: apt-get install postgresql"
PG_USER = "postgres"


def find_postgres_bin(root: Path = PG_ROOT) -> Path:
    """The ``bin`` directory of the newest PostgreSQL under ``root`` (Debian's layout).

    Raises RuntimeError with the install command if no usable installation is found.
    """

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)

    candidates = sorted(
        (p for p in root.glob("*") if (p / "bin" / "initdb").is_file()),
        key=version_key,
        reverse=True,
    )
    for version_dir in candidates:
        bin_dir = version_dir / "bin"
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "createdb")):
            return bin_dir
    raise RuntimeError(INSTALL_HINT)


def _postgres_ids() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root but there is no '{PG_USER}' system user to run PostgreSQL as: "
            "apt-get install postgresql"
        ) from None
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """A running throwaway cluster. Create it with :func:`start_postgres`."""

    host = "127.0.0.1"
    user = PG_USER

    def __init__(self, bin_dir: Path, base_dir: Path, port: int, workdir: Path) -> None:
        self.bin_dir = bin_dir
        #: Temporary directory holding the cluster (removed by :meth:`stop`).
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "sock"
        self.port = port
        self.workdir = workdir
        self._running = False

    # -- addresses --------------------------------------------------------------------------

    def url_for(self, dbname: str) -> str:
        """``postgres://postgres@127.0.0.1:PORT/dbname`` (asyncpg and mautrix accept it)."""
        return f"postgres://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def log_path(self) -> Path:
        """The server log (inside the cluster directory while it runs, in workdir after stop)."""
        if self._running or not (self.workdir / "postgres.log").exists():
            return self.base_dir / "server.log"
        return self.workdir / "postgres.log"

    # -- databases --------------------------------------------------------------------------

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), "-h", self.host, "-p", str(self.port), "-U", self.user]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` (UTF8, C collation) and return its URL."""
        result = self._client("createdb", "-E", "UTF8", "--locale=C", "-T", "template0", name)
        if result.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {result.stderr.strip()}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (forcibly closing its connections); no error if it is absent."""
        result = self._client("dropdb", "--if-exists", "--force", name)
        if result.returncode != 0:
            raise RuntimeError(f"dropdb {name} failed: {result.stderr.strip()}")

    def create_password_role(self, name: str, password: str, dbname: str) -> str:
        """A login role that must give ``password`` over TCP (every other role stays on
        ``trust``), owning a new database ``dbname``; returns its URL with the password."""
        sql = f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"
        result = self._client("psql", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql)
        if result.returncode != 0:
            raise RuntimeError(f"creating role {name} failed: {result.stderr.strip()}")
        result = self._client("createdb", "-O", name, "-E", "UTF8", "-T", "template0", dbname)
        if result.returncode != 0:
            raise RuntimeError(f"createdb {dbname} failed: {result.stderr.strip()}")
        # pg_hba.conf is read top-down: this line wins over the trust lines for this role only.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        reload = self._pg_ctl("reload")
        if reload.returncode != 0:
            raise RuntimeError(f"pg_ctl reload failed: {reload.stdout}")
        # The reload is a signal: wait until a wrong password is refused.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = password + "-wrong"
        check = [str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port)]
        check += ["-U", name, "-d", dbname, "-w", "-c", "SELECT 1"]
        for _ in range(100):
            probe = subprocess.run(check, capture_output=True, text=True, env=env, timeout=30)
            if probe.returncode != 0 and "password authentication failed" in probe.stderr:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"PostgreSQL still lets {name} in without its password")
        return f"postgres://{name}:{password}@{self.host}:{self.port}/{dbname}"

    # -- lifecycle --------------------------------------------------------------------------

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", PG_USER, "--", *cmd]
        return cmd

    def _pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = self._as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])
        # Output goes to a file, never to a pipe: the postmaster inherits pg_ctl's descriptors
        # and would keep a pipe open for as long as it runs.
        out_path = self.base_dir / "pg_ctl.out"
        with open(out_path, "w") as out:
            result = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base_dir,
                timeout=timeout,
                check=False,
            )
        return subprocess.CompletedProcess(cmd, result.returncode, out_path.read_text(), "")

    def _start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {self.socket_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        result = self._pg_ctl(
            "-l", str(self.base_dir / "server.log"), "-w", "-t", "60", "-o", options, "start"
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed (exit {result.returncode}):\n{result.stdout}\n"
                f"server log tail:\n{_tail(self.base_dir / 'server.log')}"
            )
        self._running = True

    def stop(self) -> None:
        """Stop the server (``pg_ctl -m fast stop``) and delete the cluster. Idempotent."""
        if self._running:
            self._pg_ctl("-m", "fast", "-w", "-t", "30", "stop")
            self._running = False
        if self.base_dir.exists():
            try:
                shutil.copyfile(self.base_dir / "server.log", self.workdir / "postgres.log")
            except OSError:
                pass
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostgresServer 127.0.0.1:{self.port} {self.base_dir}>"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


def _check_traversable(path: Path) -> None:
    """Raise if a non-root user could not reach ``path`` (some ancestor lacks o+x)."""
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise RuntimeError(
                f"{parent} is not searchable by other users, so the '{PG_USER}' user cannot "
                f"reach the cluster in {path}; set TMPDIR to a world-searchable directory"
            )


def start_postgres(workdir: Path) -> PostgresServer:
    """Create and start a fresh PostgreSQL cluster on a free loopback port.

    ``workdir`` receives the server log when the server is stopped. Raises RuntimeError
    (with the apt-get command) if PostgreSQL is not installed.
    """
    bin_dir = find_postgres_bin()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0

    base_dir = Path(tempfile.mkdtemp(prefix="mimi-pg-"))
    server: PostgresServer | None = None
    try:
        os.chmod(base_dir, 0o755)
        (base_dir / "data").mkdir(mode=0o700)
        (base_dir / "sock").mkdir(mode=0o755)
        if as_root:
            uid, gid = _postgres_ids()
            _check_traversable(base_dir)
            for path in (base_dir, base_dir / "data", base_dir / "sock"):
                os.chown(path, uid, gid)

        server = PostgresServer(bin_dir, base_dir, free_port(), workdir)
        initdb = server._as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(server.data_dir),
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        result = subprocess.run(
            initdb,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=base_dir,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

        for attempt in range(3):
            try:
                server._start()
                break
            except RuntimeError:
                # Most likely the port was taken between free_port() and the bind: retry.
                if attempt == 2:
                    raise
                server.port = free_port()
                time.sleep(0.1)
    except BaseException:
        if server is not None:
            server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)
        raise

    atexit.register(server.stop)
    return server
