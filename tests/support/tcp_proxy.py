"""A small threaded TCP proxy that fault tests put between the app and a
dependency (MySQL, Redis). It can:

- `cut()`       close every open connection (both sides), keep accepting new ones
                (a server restart / an idle connection reaped by a NAT or a
                thawed Lambda container whose sockets are gone);
- `down()`      cut, and refuse new connections (the dependency is dead);
- `blackhole()` accept connections but never forward a byte either way (a
                partition: the worst case for timeouts);
- `delay(s)`    forward every chunk `s` seconds late;
- `deaf()`      forward what clients send, lose what the server answers (a
                request done whose answer never comes back);
- `restore()`   back to a transparent pipe on the same port.

`connections` counts the client connections accepted so far.
"""
import contextlib
import select
import socket
import threading
import time

UP, DOWN, BLACKHOLE, DEAF = "up", "down", "blackhole", "deaf"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    def __init__(self, target_port, target_host="127.0.0.1", port=None):
        self.target = (target_host, target_port)
        self.port = port or _free_port()
        self.mode = UP
        self.latency = 0.0
        self.connections = 0
        self._lock = threading.Lock()
        self._pairs = set()
        self._server = None
        self._listen()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- controls -----------------------------------------------------------

    def restore(self):
        self.latency = 0.0
        self.mode = UP
        self._listen()

    def cut(self):
        """Close every open connection; new connections are still accepted."""
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for s in pair:
                _kill(s)

    def down(self):
        """Cut everything and refuse new connections (connect -> ECONNREFUSED)."""
        self.mode = DOWN
        server, self._server = self._server, None
        if server is not None:
            _kill(server)
        self.cut()

    def blackhole(self):
        """Accept connections, forward nothing; open connections stall too."""
        self.mode = BLACKHOLE
        self._listen()

    def deaf(self):
        """Forward requests, swallow the answers."""
        self.mode = DEAF

    def delay(self, seconds):
        self.latency = seconds
        self.mode = UP
        self._listen()

    def close(self):
        self.down()

    # --- machinery ----------------------------------------------------------

    def _listen(self):
        if self._server is not None:
            return
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger a moment after down()
            try:
                server.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            server.bind(("127.0.0.1", self.port))
        server.listen(256)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True, name=f"proxy-{self.port}").start()

    def _accept(self, server):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == BLACKHOLE:
                with self._lock:
                    self._pairs.add((client,))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _kill(client)
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair):
        client, upstream = pair
        peer = {client: upstream, upstream: client}
        try:
            while True:
                if self.mode == BLACKHOLE:
                    time.sleep(0.02)
                    if client.fileno() < 0:
                        return
                    continue
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    if self.latency:
                        time.sleep(self.latency)
                    if self.mode == BLACKHOLE or (self.mode == DEAF and src is upstream):
                        continue  # swallowed
                    peer[src].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for s in pair:
                _kill(s)


def _kill(sock):
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
