"""A TCP relay for tests: sits between a metadata sink and an application VM and cuts every
link at once on demand, so a test can reset connections mid-line."""

from __future__ import annotations

import socket
import threading


class Relay:
    """Relays loopback connections to `upstream`; reads `chunk` bytes at a time (small
    reads make a cut land mid-line)."""

    def __init__(self, upstream: tuple[str, int], chunk: int = 1000) -> None:
        self.upstream, self.chunk = upstream, chunk
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
                up = socket.create_connection(self.upstream)
            except OSError:
                return
            with self.lock:
                self.links += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(self.chunk):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            links, self.links = self.links, []
        for sock in links:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()
