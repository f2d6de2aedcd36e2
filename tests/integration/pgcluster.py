"""A throwaway PostgreSQL cluster for tests: initdb and pg_ctl (Debian's postgresql package) in a
temporary folder, listening on a Unix socket in that folder and on 127.0.0.1 at a free port,
removed afterwards. initdb refuses to run as root, so under root (CI) the cluster belongs to the
`postgres` system user and every server command runs through runuser.

    with PgCluster() as pg:
        pg.sql("CREATE TABLE t (id int)")
        pg.conninfo  # "host=/tmp/... port=... user=postgres dbname=postgres"
"""
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import wsraw


def _bin_dir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    path = shutil.which("initdb")
    return os.path.dirname(path) if path else None


BIN = os.environ.get("PG_BIN") or _bin_dir()


def available():
    return bool(BIN) and os.path.exists(os.path.join(BIN, "initdb"))


class PgCluster:
    def __init__(self):
        if not available():
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.dir = tempfile.mkdtemp(prefix="wspg-")
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "server.log")
        self.port = wsraw.free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.conninfo = f"host={self.dir} port={self.port} user=postgres dbname=postgres"
        self.tcp_conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        self._run([os.path.join(BIN, "initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"], timeout=120)
        self.start()

    def _run(self, cmd, timeout=60, check=True):
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}"
                               f"\n{self.log()}")
        return r

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self):
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run([os.path.join(BIN, "pg_ctl"), "-D", self.data, "-l", self.logfile, "-o", opts,
                   "-w", "-t", "60", "start"], timeout=90)

    def stop(self, mode="fast"):
        """pg_ctl stop; mode "immediate" kills the server without a shutdown checkpoint."""
        self._run([os.path.join(BIN, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t", "60",
                   "stop"], timeout=90, check=False)

    def running(self):
        r = self._run([os.path.join(BIN, "pg_ctl"), "-D", self.data, "status"], check=False)
        return r.returncode == 0

    def sql(self, text, timeout=30):
        """Runs text with psql over the Unix socket; returns its unaligned output rows."""
        psql = os.path.join(BIN, "psql")
        r = subprocess.run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                            "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", text],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return [line for line in r.stdout.splitlines() if line]

    def wait_sql(self, text, predicate, timeout=10.0):
        """Polls text until predicate(rows) holds; returns the rows."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.sql(text)
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {text!r}: last {rows}")
            time.sleep(0.05)

    def close(self):
        if os.path.exists(self.data):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main():
    """For tests in other languages (tests/browser/board.test.js): makes a cluster, prints one
    JSON line {"conninfo": ..., "port": ...}, and removes it when stdin closes or on SIGTERM."""
    import json
    import signal
    import sys

    cluster = PgCluster()

    def stop(*_):
        cluster.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        print(json.dumps({"conninfo": cluster.conninfo, "port": cluster.port,
                          "dir": cluster.dir}), flush=True)
        sys.stdin.read()
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
