"""MariaDB and Redis servers of our own, on a port of their own: the fault
tests' throwaway servers (killed and restarted at will, in temporary
directories) and the servers `make run`/`make test` start where nothing answers
on the configured address (scripts/local_services.py). The shared MariaDB
(3306) and Redis (6379) of a machine that has them are never touched.

    redis = ThrowawayRedis(); redis.start(); redis.url; redis.kill(); redis.start()
    db = ThrowawayMariaDB(tmpdir); db.start(); db.url("shop"); db.kill(); db.start()
    cluster = ThrowawayRedisCluster(3); cluster.start(); cluster.url; cluster.nodes[1].kill()
    pair = ThrowawayReplicaPair(tmpdir); pair.start(); pair.primary.url("shop"); pair.replica.url("shop")

A restarted Redis comes back EMPTY (no RDB, no AOF); a restarted MariaDB keeps
its data directory (InnoDB crash recovery), as a real server restart would.
"""
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(host, port, timeout=0.5):
    """True when a Redis server answers PING on host:port (one that wants a password says so)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def mysql_answers(host, port, timeout=0.5):
    """True when what listens on host:port greets as a MySQL server (protocol 10,
    or an error packet such as "too many connections")."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            greeting = s.recv(5)
    except OSError:
        return False
    return len(greeting) == 5 and greeting[4] in (10, 0xFF)


def port_open(port, timeout=0.1):
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port_closed(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and port_open(port):
        time.sleep(0.05)


class _Process:
    proc = None
    # A server of its own session outlives a Ctrl-C meant for the command that
    # started it, which stops it itself once nobody uses it (scripts/shared_server.py).
    own_session = False

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Die at once (SIGKILL: no clean shutdown, sockets reset)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        _wait_port_closed(self.port)

    def stop(self):
        self.kill(signal.SIGTERM)


class ThrowawayRedis(_Process):
    def __init__(self, port=None, tls=None, maxmemory="64mb", policy="noeviction", base_dir=None, own_session=False,
                 extra_args=()):
        """tls=(cert_file, key_file, ca_file): serve TLS only, as ElastiCache with
        in-transit encryption does (no client certificates asked for).
        maxmemory=None: no limit, as a packaged redis-server has; `policy`: its
        maxmemory-policy (what it does at `maxmemory`: refuse writes, or evict)."""
        self.extra_args = list(extra_args)
        self.maxmemory = maxmemory
        self.policy = policy
        self.port = port or free_port()
        self.dir = str(base_dir) if base_dir else tempfile.mkdtemp(prefix="throwaway-redis-")
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.own_session = own_session

    @property
    def url(self):
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout=10):
        listen = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        limit = ["--maxmemory", self.maxmemory] if self.maxmemory else []
        self.proc = subprocess.Popen(
            ["redis-server", *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "no", *limit, "--maxmemory-policy", self.policy,
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=self.own_session,
        )
        # TLS: listening is enough; the test's client does the handshake.
        ready = (lambda: port_open(self.port)) if self.tls else (lambda: redis_answers("127.0.0.1", self.port, 0.2))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited at start")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedisCluster:
    """`masters` redis-servers in cluster mode (no replicas), the 16384 slots split evenly
    between them. A killed master's slots stay its own (nobody takes them over), and the
    others keep serving theirs (cluster-require-full-coverage no, as on ElastiCache):
    what a dead shard holds fails, nothing else. Restarted, it rejoins empty. The app enters
    through one more member that holds no slots (`url`)."""

    SLOTS = 16384

    def __init__(self, masters=3, maxmemory="64mb", policy="noeviction"):
        self.dir = tempfile.mkdtemp(prefix="throwaway-redis-cluster-")
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"]
        # The bus port of its own: the default (port + 10000) of a high free port does not exist.
        self.bus_ports = [free_port() for _ in range(masters + 1)]
        self.nodes = [ThrowawayRedis(maxmemory=maxmemory, policy=policy, base_dir=Path(self.dir) / str(i),
                                     extra_args=[*args, "--cluster-port", str(bus)])
                      for i, bus in enumerate(self.bus_ports[:masters])]
        # The app's entry point: a member that holds no slots, so no test kills it. ElastiCache's
        # configuration endpoint likewise always answers with the live nodes; a killed master
        # named in the URL would instead leave a client made afterwards no way in.
        self.entry = ThrowawayRedis(maxmemory=maxmemory, policy=policy, base_dir=Path(self.dir) / "entry",
                                    extra_args=[*args, "--cluster-port", str(self.bus_ports[-1])])

    @property
    def url(self):
        """The app's URL: the slotless entry node; the client learns the masters from it."""
        return f"redis+cluster://127.0.0.1:{self.entry.port}/0"

    def ranges(self):
        """[(first slot, last slot)] of each node, in `nodes` order."""
        n = len(self.nodes)
        return [(i * self.SLOTS // n, (i + 1) * self.SLOTS // n - 1) for i in range(n)]

    def _client(self, node):
        import redis

        return redis.Redis(port=node.port, socket_timeout=2, decode_responses=True)

    def start(self, timeout=30):
        for node in (*self.nodes, self.entry):
            node.start()
        clients = [self._client(node) for node in (*self.nodes, self.entry)]
        try:
            for i, (client, (first, last)) in enumerate(zip(clients, self.ranges())):
                # Distinct config epochs, as `redis-cli --cluster create` sets them: no collision to settle.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            clients[-1].execute_command("CLUSTER", "SET-CONFIG-EPOCH", len(self.nodes) + 1)
            for node, bus in zip((*self.nodes[1:], self.entry), self.bus_ports[1:]):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
            self.wait_ok(clients, timeout)
        finally:
            for client in clients:
                client.close()
        return self

    def wait_ok(self, clients, timeout=30):
        """Every node sees every other and the whole slot map."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [client.cluster("info") for client in clients]
            if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(self.nodes) + 1
                   and int(i["cluster_slots_assigned"]) == self.SLOTS for i in infos):
                return
            time.sleep(0.05)
        raise RuntimeError("the redis cluster did not come up")

    def node_of(self, slot):
        """The node (ThrowawayRedis) that holds `slot`."""
        for node, (first, last) in zip(self.nodes, self.ranges()):
            if first <= slot <= last:
                return node
        raise ValueError(slot)

    def flush(self):
        """FLUSHALL on every running node (our own servers)."""
        for node in self.nodes:
            if node.running:
                client = self._client(node)
                try:
                    client.flushall()
                finally:
                    client.close()

    def restart(self, node, timeout=30):
        """Start a killed node again: it rejoins with its slots (nodes.conf), empty."""
        node.start()
        clients = [self._client(n) for n in (*self.nodes, self.entry) if n.running]
        try:
            self.wait_ok(clients, timeout)
        finally:
            for client in clients:
                client.close()

    def restart_killed(self):
        """Every master a test killed, started again."""
        for node in self.nodes:
            if not node.running:
                self.restart(node)

    def close(self):
        for node in (*self.nodes, self.entry):
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayMariaDB(_Process):
    """mariadbd in a temporary datadir, root without password, small memory."""

    def __init__(self, base_dir=None, port=None, extra_args=(), own_session=False):
        self.extra_args = list(extra_args)
        self.own_session = own_session
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="throwaway-mariadb-"))
        self.datadir = self.base / "data"
        self.port = port or free_port()
        self.log = self.base / "error.log"
        self._installed = False

    def url(self, database):
        return f"mysql://root:@127.0.0.1:{self.port}/{database}"

    def install(self):
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._installed = True

    def start(self, timeout=60):
        """Start (or restart) the server and wait until it answers. A restart
        right after SIGKILL can find the port or the datadir lock still held
        for a moment: mariadbd then exits, and is launched again. A datadir
        that already holds a server's data (a kept base_dir) is used as is."""
        if not self._installed and not (self.datadir / "mysql").is_dir():
            self.install()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.base}/sock",
                 f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
                 f"--pid-file={self.base}/pid", f"--log-error={self.log}",
                 "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--innodb-log-buffer-size=4M",
                 "--key-buffer-size=1M", "--performance-schema=OFF", "--max-connections=200",
                 "--innodb-lock-wait-timeout=10", "--innodb-flush-log-at-trx-commit=1", *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=self.own_session,
            )
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                                    connect_timeout=0.5).close()
                    return self
                except pymysql.err.MySQLError:
                    time.sleep(0.05)
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mariadbd did not start; see {self.log}")

    def execute(self, sql, args=None, database=None):
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=database,
                               autocommit=True, cursorclass=pymysql.cursors.DictCursor)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def close(self):
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)


class ThrowawayReplicaPair:
    """A throwaway primary (binary log; event scheduler on, for the heartbeat of migration 0018)
    and a second mariadbd replicating it by GTID from its first transaction: a MySQL reader
    (an RDS read replica's stand-in) to test and bench against."""

    def __init__(self, base_dir=None, extra_args=(), own_session=False):
        self.base = base = Path(base_dir or tempfile.mkdtemp(prefix="throwaway-replica-pair-"))
        self.primary = ThrowawayMariaDB(base / "primary", own_session=own_session, extra_args=[
            "--log-bin=binlog", "--server-id=1", "--binlog-format=ROW", "--event-scheduler=ON", *extra_args])
        self.replica = ThrowawayMariaDB(base / "replica", own_session=own_session, extra_args=[
            "--server-id=2", "--relay-log=relay", "--read-only", *extra_args])

    def start(self):
        self.primary.start()
        self.replica.start()
        self.replica.execute("STOP SLAVE")
        self.replica.execute(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={self.primary.port}, MASTER_USER='root', "
            "MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1")
        self.replica.execute("START SLAVE")
        return self

    def caught_up(self, timeout=10):
        """Wait until the replica applied everything the primary committed so far; True if it did."""
        position = self.primary.execute("SELECT @@gtid_binlog_pos AS pos")[0]["pos"]
        return self.replica.execute("SELECT MASTER_GTID_WAIT(%s, %s) AS r", (position, timeout))[0]["r"] == 0

    def hold(self):
        """The replica receives but applies nothing (a replica held back)."""
        self.replica.execute("STOP SLAVE SQL_THREAD")

    def release(self):
        self.replica.execute("START SLAVE SQL_THREAD")

    def close(self):
        for server in (self.replica, self.primary):
            server.close()
        shutil.rmtree(self.base, ignore_errors=True)


__all__ = ["ThrowawayRedis", "ThrowawayRedisCluster", "ThrowawayMariaDB", "ThrowawayReplicaPair", "free_port"]
