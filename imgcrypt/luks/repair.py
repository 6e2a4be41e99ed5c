"""``imgcrypt repair``: rewrite a damaged or stale LUKS2 metadata copy from the good one.

As ``cryptsetup repair`` does, and unlike the automatic recovery on reading, an explicit repair
proceeds even when a foreign signature sits on the image (rewriting the copy removes it). Only
the bad copy's bytes are written, in one write followed by fsync, while the good copy is never
touched: at every instant one valid copy exists, so a crash leaves a readable image. The file
is locked as for a re-key, so a repair and a re-key cannot interleave.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from dataclasses import dataclass

from imgcrypt.errors import UsageError
from imgcrypt.fileio import read_full
from imgcrypt.luks.base import MAGIC, MAGIC_SECONDARY
from imgcrypt.luks.container import PROBE_SIZE, bytes_to_parse, detect_version
from imgcrypt.luks.luks2.disk import (
    SALT_SIZE,
    MetadataCopy,
    find_copies,
    pack_copy,
)
from imgcrypt.luks.luks2.metadata import check_area
from imgcrypt.luks.unlock import read_header


@dataclass(frozen=True)
class RepairResult:
    rewritten: str | None  # "primary", "secondary" or None when nothing needed repair
    seqid: int | None = None


def plan_repair(data: bytes) -> tuple[int, bytes, str, int] | None:
    """(offset, bytes, which, seqid) that rewrite the bad copy of LUKS2 metadata in ``data``,
    or None if both copies are valid and current. Errors name the rule when neither is."""
    copies = find_copies(data, check_area)
    winner = copies.winner()
    if not copies.need_recovery():
        return None
    target = copies.secondary if winner is copies.primary else copies.primary
    offset = winner.binary.hdr_size if winner is copies.primary else 0
    which = "secondary" if offset else "primary"
    salt = target.binary.salt if isinstance(target, MetadataCopy) else b""
    binary = dataclasses.replace(
        winner.binary, magic=MAGIC_SECONDARY if offset else MAGIC, hdr_offset=offset,
        # A damaged copy gets a fresh salt, as cryptsetup gives it.
        salt=salt if len(salt) == SALT_SIZE else os.urandom(SALT_SIZE),
    )
    return offset, pack_copy(binary, winner.json_text), which, winner.binary.seqid


def repair_file(path: str) -> RepairResult:
    """Rewrite the damaged or stale LUKS2 copy of the image at ``path`` from the good one."""
    with open(path, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        prefix = read_full(f, PROBE_SIZE)
        if prefix[:6] == MAGIC and detect_version(prefix) == 1:
            f.seek(0)
            read_header(f)  # refuses a LUKS1 header cryptsetup refuses, naming the rule
            return RepairResult(None)
        data = prefix + read_full(f, bytes_to_parse(prefix) - len(prefix))
        plan = plan_repair(data)
        if plan is None:
            return RepairResult(None)
        offset, copy, which, seqid = plan
        if len(data) < offset + len(copy):
            raise UsageError("the image is too short to hold both LUKS2 metadata copies")
        os.pwrite(f.fileno(), copy, offset)
        os.fsync(f.fileno())
        return RepairResult(which, seqid)
