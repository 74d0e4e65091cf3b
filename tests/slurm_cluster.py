"""A real single-node SLURM cluster for the tests: munge, MariaDB, slurmdbd, slurmctld and slurmd started by hand.

Needs root and Debian's ``slurm-wlm munge slurmdbd mariadb-server`` packages (``.ci/run`` installs them). Everything
lives in one folder ``/tmp/nnunet-transfer-slurm-XXXX`` (mode 0755: munged checks the socket's folder and its parents)
with its own munge key and socket, database, ports, state, spool and logs; nothing of the machine's own configuration
is read or changed. Every client command needs ``SLURM_CONF`` (in :attr:`SlurmCluster.env`).

    cluster = SlurmCluster.start()        # raises ClusterUnavailable(reason) when it cannot start
    subprocess.run(["sinfo"], env=cluster.env)
    cluster.stop()

``python tests/slurm_cluster.py`` starts one for a developer, prints the ``export SLURM_CONF=...`` line and stops it
on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ClusterUnavailable", "SlurmCluster", "REQUIRED_BINARIES", "PACKAGES"]

#: Debian packages that provide the binaries below
PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
REQUIRED_BINARIES = (
    "munged", "mungekey", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd",
    "sbatch", "srun", "sinfo", "sacct", "squeue", "scancel", "scontrol",
)
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
DB_PASS = "nnunet-transfer-test"  # a throw-away database on 127.0.0.1 only, for this cluster's life
START_TIMEOUT = 90.0


class ClusterUnavailable(RuntimeError):
    """The cluster cannot start here; the message says what failed (the tests skip with it)."""


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Daemons die with the process that started them (a killed pytest leaves no scheduler behind)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:])


class SlurmCluster:
    """A running single-node cluster (see the module's docstring). Use :meth:`start`, then :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.logs = root / "log"
        self.node = ""
        self.cpus = 0
        self.memory_mb = 0
        self.partition = "debug"
        self.env: dict[str, str] = dict(os.environ, SLURM_CONF=str(self.conf))
        self._procs: list[tuple[str, subprocess.Popen, Path]] = []

    # ------------------------------------------------------------------ start
    @classmethod
    def start(cls, keep: bool = False) -> SlurmCluster:
        """Start every daemon and wait until the node is idle and ``sacct`` answers.

        Raises :class:`ClusterUnavailable` (after cleaning up) with what failed. ``keep`` leaves the folder on stop.
        """
        if os.name != "posix" or os.geteuid() != 0:
            raise ClusterUnavailable("the test SLURM cluster needs root (its daemons run as root)")
        missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
        if missing:
            raise ClusterUnavailable(
                f"SLURM binaries missing: {', '.join(missing)} (apt-get install {' '.join(PACKAGES)}; "
                ".ci/run installs them)")
        root = Path(tempfile.mkdtemp(prefix="nnunet-transfer-slurm-", dir="/tmp"))
        root.chmod(0o755)
        cluster = cls(root)
        cluster._keep = keep
        try:
            cluster._start()
        except BaseException:
            cluster.stop(keep=True if keep else None)
            raise
        return cluster

    def _start(self) -> None:
        for sub in ("etc", "munge", "log", "db", "state", "spool", "run"):
            (self.root / sub).mkdir(mode=0o755)
        self._start_munge()
        db_port, dbd_port, ctld_port, slurmd_port = _free_ports(4)
        self._start_mariadb(db_port)
        self._write_conf(db_port, dbd_port, ctld_port, slurmd_port)
        self._spawn("slurmdbd", ["slurmdbd", "-D"], self.logs / "slurmdbd.log")
        self._wait_port(dbd_port, "slurmdbd")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], self.logs / "slurmctld.log")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node], self.logs / "slurmd.log")
        self._wait_ready()

    def _spawn(self, name: str, cmd: list[str], log: Path) -> subprocess.Popen:
        out = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_pdeathsig, cwd=self.root)
        out.close()
        self._procs.append((name, proc, log))
        return proc

    def _check_alive(self) -> None:
        for name, proc, log in self._procs:
            if proc.poll() is not None:
                raise ClusterUnavailable(
                    f"{name} exited with status {proc.returncode} while the test cluster started; "
                    f"its log ({log}):\n{_tail(log)}\n{_tail(self.logs / f'{name}.out', 5)}")

    def _wait(self, what: str, ready, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the test SLURM cluster did not start in {timeout:.0f} s: {what}")
            time.sleep(0.3)

    def _wait_port(self, port: int, name: str) -> None:
        def ready() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        self._wait(f"{name} does not listen on 127.0.0.1:{port}", ready)

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
        key.chmod(0o400)
        log = self.logs / "munged.log"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--log-file={log}", f"--pid-file={self.root / 'run/munged.pid'}",
                               f"--seed-file={self.root / 'munge/munged.seed'}"], log)
        self._wait(f"no munge socket at {self.munge_socket}", self.munge_socket.exists, 20)

    def _start_mariadb(self, port: int) -> None:
        data = self.root / "db" / "data"
        sock = self.root / "db" / "mysqld.sock"
        cnf = self.root / "db" / "my.cnf"
        cnf.write_text(
            "[mysqld]\n"
            f"datadir={data}\nsocket={sock}\nport={port}\nbind-address=127.0.0.1\nskip-name-resolve\n"
            f"pid-file={self.root / 'run/mariadb.pid'}\nlog-error={self.logs / 'mariadb.log'}\n"
            "user=root\ninnodb_buffer_pool_size=32M\ninnodb_log_file_size=16M\ninnodb_lock_wait_timeout=900\n"
            "skip-log-bin\n")
        proc = subprocess.run(["mariadb-install-db", f"--defaults-file={cnf}", "--auth-root-authentication-method=normal",
                               "--skip-test-db"], capture_output=True, text=True, cwd=self.root)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"mariadb-install-db failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        self._spawn("mariadbd", ["mariadbd", f"--defaults-file={cnf}"], self.logs / "mariadb.log")
        self._wait(f"MariaDB does not listen on {sock}", sock.exists)
        sql = (f"CREATE DATABASE {DB_NAME}; CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASS}'; "
               f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1'; FLUSH PRIVILEGES;")
        proc = subprocess.run(["mariadb", f"--socket={sock}", "-uroot", "-e", sql], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"MariaDB did not take the slurmdbd database: {proc.stderr.strip()}")

    def _write_conf(self, db_port: int, dbd_port: int, ctld_port: int, slurmd_port: int) -> None:
        proc = subprocess.run(["slurmd", "-C"], capture_output=True, text=True)
        node_line = proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else ""
        fields = dict(item.split("=", 1) for item in node_line.split() if "=" in item)
        if "NodeName" not in fields or "CPUs" not in fields:
            raise ClusterUnavailable(f"`slurmd -C` did not describe this node: {proc.stdout}{proc.stderr}")
        self.node = fields["NodeName"]
        self.cpus = int(fields["CPUs"])
        # keep some memory for the machine; jobs ask for memory within this
        self.memory_mb = max(1024, int(fields.get("RealMemory", "2048")) - 1024)
        fields["RealMemory"] = str(self.memory_mb)
        node = " ".join(f"{k}={v}" for k, v in fields.items() if k != "UpTime")
        munge = str(self.munge_socket)
        etc, state, spool, log, run = (self.root / d for d in ("etc", "state", "spool", "log", "run"))
        self.conf.write_text(f"""\
# nnunet-transfer test cluster (tests/slurm_cluster.py)
ClusterName=nnttest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge},cred_expire=10
StateSaveLocation={state}
SlurmdSpoolDir={spool}/%n
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={log}/slurmctld.log
SlurmdLogFile={log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job asking no memory takes the whole node's, and jobs run one at a time
DefMemPerCPU=1024
EnforcePartLimits=ALL
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge}
JobCompType=jobcomp/none
MailProg=/bin/true
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        dbd = etc / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={munge}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
LogFile={log}/slurmdbd.log
PidFile={run}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser={DB_USER}
StoragePass={DB_PASS}
StorageLoc={DB_NAME}
""")
        dbd.chmod(0o600)

    def _client(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def _wait_ready(self) -> None:
        def node_idle() -> bool:
            proc = self._client("sinfo", "-h", "-N", "-o", "%T")
            return proc.returncode == 0 and proc.stdout.strip().rstrip("*") == "idle"

        def sacct_answers() -> bool:
            proc = self._client("sacct", "-n", "-X", "-o", "JobID")
            return proc.returncode == 0

        self._wait(f"node {self.node} is not idle in sinfo ({self._client('sinfo', '-N').stdout.strip()})",
                   node_idle)
        self._wait("sacct does not answer", sacct_answers, 30)

    # ------------------------------------------------------------------- stop
    def stop(self, keep: bool | None = None) -> None:
        """Cancel every job, stop the daemons (each by its id, newest first) and remove the folder unless ``keep``."""
        keep = getattr(self, "_keep", False) if keep is None else keep
        names = {name for name, proc, _ in self._procs if proc.poll() is None}
        if {"slurmctld", "slurmd"} <= names:
            with contextlib.suppress(Exception):
                self._client("scancel", "--full", "--quiet", f"--partition={self.partition}")
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    q = self._client("squeue", "-h", "-o", "%i")
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.5)
        for _name, proc, _log in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._procs.clear()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers
    def squeue(self) -> str:
        """``squeue`` as a table (for messages)."""
        return self._client("squeue", "-o", "%.12i %.9P %.20j %.8T %.10M %R").stdout

    def job_state(self, job_id: str) -> str:
        """The state of one job (``sacct``), e.g. ``RUNNING``, ``COMPLETED``, ``PENDING``; '' when unknown yet."""
        proc = self._client("sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id)
        return proc.stdout.split("\n", 1)[0].strip() if proc.returncode == 0 else ""


@contextlib.contextmanager
def running_cluster(keep: bool = False) -> Iterator[SlurmCluster]:
    """``with running_cluster() as cluster:`` start, yield, stop."""
    cluster = SlurmCluster.start(keep=keep)
    try:
        yield cluster
    finally:
        cluster.stop()


def main() -> int:
    """Start a cluster for a developer, print how to use it, stop it on Ctrl-C / SIGTERM."""
    try:
        cluster = SlurmCluster.start(keep="--keep" in sys.argv)
    except ClusterUnavailable as exc:
        print(f"slurm test cluster: cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"SLURM test cluster running in {cluster.root} (node {cluster.node}, {cluster.cpus} CPUs, "
          f"{cluster.memory_mb} MB). In another shell:\n  export SLURM_CONF={cluster.conf}\n  sinfo; squeue; sacct\n"
          "Ctrl-C stops it.", flush=True)
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started in the background (SIGINT ignored)
    try:
        while all(proc.poll() is None for _, proc, _ in cluster._procs):
            time.sleep(1)
        print("slurm test cluster: a daemon exited; stopping", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
