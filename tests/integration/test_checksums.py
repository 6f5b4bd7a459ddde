"""Results travel to MinIO with their CRC-32 instead of a signed SHA-256 (connections.ChecksummedMinio):
the real MinIO still stores nothing whose bytes changed on the way.

The worker's ObjectStore talks to MinIO through a proxy that, when told to, flips one byte
in the middle of a request body, as a faulty link or buffer would.
"""
from __future__ import annotations

import socket
import threading
import uuid

import pytest
from minio.error import S3Error

from maskflow.infra.ops.processes import free_port
from maskflow.infra.stores.objects import ObjectMissing, ObjectStore
from maskflow.infra.wiring.config import replace
from maskflow.infra.wiring.connections import CHECKSUM_HEADER

PHOTO_SIZED = bytes(range(256)) * 4096  # 1 MiB, about a cut-out's size


class CorruptingProxy:
    """Forwards HTTP/1.1 to `upstream`; with `corrupt` set, flips a byte of every request body.
    Keeps each request's head (`heads`) so a test can see how it was signed."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.corrupt, self.heads = upstream, False, []
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.address = "%s:%d" % self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with source, sink:
            while data := source.recv(65536):
                sink.sendall(data)

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        buffered = b""
        with client, server:
            while True:
                while b"\r\n\r\n" not in buffered:
                    if not (data := client.recv(65536)):
                        return
                    buffered += data
                head, buffered = buffered.split(b"\r\n\r\n", 1)
                self.heads.append(head.decode("latin-1").lower())
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffered) < length:
                    if not (data := client.recv(65536)):
                        return
                    buffered += data
                body, buffered = bytearray(buffered[:length]), buffered[length:]
                if self.corrupt and body:
                    body[len(body) // 2] ^= 0x01
                server.sendall(head + b"\r\n\r\n" + bytes(body))


@pytest.fixture
def proxied(servers):
    """A worker's ObjectStore whose requests pass the proxy, and the proxy."""
    cfg = servers.stack.service_config("worker")
    host, port = cfg.minio.endpoint.rsplit(":", 1)
    proxy = CorruptingProxy((host, int(port)))
    yield ObjectStore(replace(cfg, minio={"endpoint": proxy.address})), proxy
    proxy.close()


def publish(store: ObjectStore, key: str, data: bytes) -> None:
    store.publish(key, data, "image/png", {"task-id": "t"}, "0" * 32)


def test_a_result_goes_unsigned_with_its_crc_and_arrives_whole(proxied, objects):
    store, proxy = proxied
    key = f"output/checksums/{uuid.uuid4().hex}.png"
    publish(store, key, PHOTO_SIZED)
    put = next(head for head in proxy.heads if head.startswith("put "))
    assert "x-amz-content-sha256: unsigned-payload" in put and f"{CHECKSUM_HEADER}: " in put
    assert CHECKSUM_HEADER in put.split("signedheaders=", 1)[1]  # the CRC itself is signed
    assert objects.get(key).data == PHOTO_SIZED


def test_a_body_corrupted_on_the_way_is_refused_and_nothing_is_stored(proxied, objects):
    store, proxy = proxied
    key = f"output/checksums/{uuid.uuid4().hex}.png"
    proxy.corrupt = True
    with pytest.raises(S3Error) as refused:
        publish(store, key, PHOTO_SIZED)
    assert refused.value.code == "XAmzContentChecksumMismatch"
    with pytest.raises(ObjectMissing):
        objects.get(key)
    # The same bytes over a sound link are stored: the refusal was the corruption's.
    proxy.corrupt = False
    publish(store, key, PHOTO_SIZED)
    assert objects.get(key).data == PHOTO_SIZED
