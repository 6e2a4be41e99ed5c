"""A small client of the NBD protocol (fixed newstyle handshake, simple replies, reads only).

imgcrypt reads the guest content of qcow2/vmdk/vhdx/vdi/vpc images from a ``qemu-nbd`` it starts
itself on a private UNIX socket (see :mod:`imgcrypt.qemu`), so it needs only what a read-only
client needs: ``NBD_OPT_GO`` for the export size, ``NBD_CMD_READ`` and ``NBD_CMD_DISC``. The
facts come from the protocol's specification (doc/proto.md of the NBD project); every field
the server sends is checked, and a misbehaving server is a :class:`ToolError`, never a hang on
an unbounded length.
"""

from __future__ import annotations

import socket
import struct

from imgcrypt.errors import ToolError

NBD_MAGIC = b"NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
CMD_READ = 0
CMD_DISC = 2
# qemu-nbd serves reads of up to 32 MiB; imgcrypt asks for at most one chunk.
MAX_READ = 32 << 20
MAX_OPTION_REPLY = 64 << 10
TIMEOUT = 120.0


class NbdClient:
    """One connection to an NBD export on a UNIX socket; not shared between threads."""

    def __init__(self, path: str, export: str = "", *, timeout: float = TIMEOUT) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._handle = 0
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self.size = self._handshake(export.encode())
        except OSError as exc:
            self._sock.close()
            raise ToolError(f"NBD connection failed: {exc.strerror or exc}") from None
        except BaseException:
            self._sock.close()
            raise

    def __repr__(self) -> str:
        return f"NbdClient(size={self.size})"

    def _recv_into(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            got = self._sock.recv_into(view[done:])
            if not got:
                raise ToolError("the NBD server closed the connection")
            done += got

    def _recv(self, size: int) -> bytes:
        buffer = bytearray(size)
        self._recv_into(memoryview(buffer))
        return bytes(buffer)

    def _handshake(self, export: bytes) -> int:
        magic, opts, flags = struct.unpack(">8sQH", self._recv(18))
        if magic != NBD_MAGIC or opts != OPTS_MAGIC or not flags & FLAG_FIXED_NEWSTYLE:
            raise ToolError("not a fixed-newstyle NBD server")
        client_flags = FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)
        payload = struct.pack(">I", len(export)) + export + struct.pack(">H", 0)
        self._sock.sendall(struct.pack(">IQII", client_flags, OPTS_MAGIC, OPT_GO, len(payload))
                           + payload)
        size: int | None = None
        while True:
            magic, option, kind, length = struct.unpack(">QIII", self._recv(20))
            if magic != REPLY_MAGIC or option != OPT_GO or length > MAX_OPTION_REPLY:
                raise ToolError("malformed NBD option reply")
            data = self._recv(length)
            if kind & 0x80000000:
                text = data.decode("utf-8", "replace")[:200]
                raise ToolError(f"the NBD server refused the export ({kind & 0xFFFF}: {text})")
            if kind == REP_INFO and len(data) >= 2 and \
                    struct.unpack_from(">H", data)[0] == INFO_EXPORT:
                if len(data) != 12:
                    raise ToolError("malformed NBD export information")
                size = struct.unpack_from(">Q", data, 2)[0]
            elif kind == REP_ACK:
                break
        if size is None:
            raise ToolError("the NBD server did not say the export size")
        return size

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the export's bytes at ``offset``."""
        for start in range(0, len(view), MAX_READ):
            part = view[start : start + MAX_READ]
            self._read_once(part, offset + start)

    def _read_once(self, view: memoryview, offset: int) -> None:
        if offset < 0 or offset + len(view) > self.size:
            raise ToolError("read beyond the end of the NBD export")
        self._handle += 1
        self._sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, self._handle,
                                       offset, len(view)))
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise ToolError("malformed NBD reply")
        if error:
            raise ToolError(f"the NBD server failed a read at {offset} (error {error})")
        self._recv_into(view)

    def close(self) -> None:
        try:
            self._sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        finally:
            self._sock.close()
