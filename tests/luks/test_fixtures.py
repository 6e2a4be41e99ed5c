"""Images made by the real tools (fixtures/): read without the tools, and regenerated with them.

``imgcrypt inspect`` of each cryptsetup image agrees field by field with the ``luksDump`` text
stored beside it; every fixture opens with its passphrases; the ``qemu-img info`` samples parse.
One test runs fixtures/make-fixtures.sh and checks the new images give the same verdicts and
fields (not bytes: salts and keys are random).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from imgcrypt.luks.unlock import read_header
from imgcrypt.qemu import parse_image_info, sniff_format
from tests.helpers import luksdump

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LUKS1 = ["luks1-cbc-essiv.img"]
LUKS2 = ["luks2-pbkdf2-512.img", "luks2-argon2i-4096.img", "luks2-argon2id-label-token.img",
         "luks2-damaged-primary.img"]
# (image, keyslot the first passphrase opens, keyslot the second one opens or None)
OPENS = [("luks1-cbc-essiv.img", 0, 1), ("luks2-pbkdf2-512.img", 0, None),
         ("luks2-argon2i-4096.img", 0, None), ("luks2-argon2id-label-token.img", 0, 1),
         ("luks2-damaged-primary.img", 0, None), ("qemu-luks.img", 0, None)]


def describe(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        header, _ = read_header(f)
    return header.describe()


def luks1_fields(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "cipher", "hash", "payload_offset", "key_size", "mk_digest_iterations",
            "uuid")
    return {**{k: info[k] for k in keys}, "keyslots": [
        {k: s[k] for k in ("slot", "iterations", "key_material_offset", "stripes")}
        for s in info["keyslots"]]}


def luks2_fields(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "seqid", "metadata_size", "keyslots_size", "uuid", "label", "subsystem",
            "flags")
    digest_of = {k: d["digest"] for d in info["digests"] for k in d["keyslots"]}
    slot_keys = ("slot", "type", "key_size", "priority", "cipher", "cipher_key_size", "kdf",
                 "stripes", "af_hash", "area_offset", "area_size", "hash", "iterations",
                 "time", "memory", "parallel")
    return {
        **{k: info[k] for k in keys},
        "segments": [{k: s[k] for k in ("segment", "type", "offset", "size", "cipher",
                                        "sector_size")} for s in info["segments"]],
        "keyslots": [{**{k: s[k] for k in slot_keys if k in s}, "digest": digest_of[s["slot"]]}
                     for s in info["keyslots"]],
        "tokens": [{"token": int(i), "type": t["type"], "keyslots": t["keyslots"]}
                   for i, t in sorted(info["tokens"].items(), key=lambda kv: int(kv[0]))],
        "digests": [{k: d[k] for k in ("digest", "type", "hash", "iterations")}
                    for d in info["digests"]],
    }


@pytest.mark.parametrize("name", LUKS1)
def test_luks1_inspect_agrees_with_luksdump(name: str) -> None:
    dump = luksdump.parse_luks1((FIXTURES / name.replace(".img", ".luksdump.txt")).read_text())
    assert luks1_fields(describe(FIXTURES / name)) == dump


@pytest.mark.parametrize("name", LUKS2)
def test_luks2_inspect_agrees_with_luksdump(name: str) -> None:
    dump = luksdump.parse_luks2((FIXTURES / name.replace(".img", ".luksdump.txt")).read_text())
    assert luks2_fields(describe(FIXTURES / name)) == dump


def test_damaged_primary_is_read_from_the_secondary() -> None:
    info = describe(FIXTURES / "luks2-damaged-primary.img")
    assert info["header_copies"] == {"primary": "damaged", "secondary": "valid"}


@pytest.mark.parametrize(("name", "first", "second"), OPENS, ids=[o[0] for o in OPENS])
def test_fixtures_open_with_their_passphrases(name: str, first: int,
                                              second: int | None) -> None:
    with (FIXTURES / name).open("rb") as f:
        header, region = read_header(f)
    assert header.unlock(region, (FIXTURES / "passphrase.txt").read_bytes())[0] == first
    if second is not None:
        pw2 = (FIXTURES / "passphrase2.txt").read_bytes()
        assert header.unlock(region, pw2)[0] == second
    assert header.describe()["decryptable"]


def test_qemu_fixtures() -> None:
    info = describe(FIXTURES / "qemu-luks.img")
    assert (info["format"], info["cipher"], info["key_size"]) == ("luks1", "aes-xts-plain64", 256)
    sample = parse_image_info((FIXTURES / "qemu-luks.qemu-info.json").read_bytes())
    assert (sample.format, sample.virtual_size, sample.encrypted) == ("luks", 65536, True)
    qcow2 = parse_image_info((FIXTURES / "qemu-qcow2-luks.qemu-info.json").read_bytes())
    assert (qcow2.format, qcow2.encryption_format, qcow2.virtual_size) == ("qcow2", "luks",
                                                                          65536)
    assert sniff_format((FIXTURES / "qemu-qcow2-luks.qcow2").read_bytes()[:4096]) == "qcow2"
    raw = parse_image_info((FIXTURES / "luks2-pbkdf2-512.qemu-info.json").read_bytes())
    assert raw.format == "raw"


def _stable(info: dict[str, Any]) -> dict[str, Any]:
    """A description without what differs between two runs of the same commands."""
    return {k: v for k, v in info.items() if k not in ("uuid",)}


def test_regenerated_fixtures_give_the_same_verdicts_and_fields(
        cryptsetup: str, qemu_img: str, tmp_path: Path) -> None:
    del cryptsetup, qemu_img  # both must be installed; the script calls them by name
    subprocess.run(["sh", str(FIXTURES / "make-fixtures.sh"), str(tmp_path)], check=True,
                   capture_output=True, timeout=300)
    for name in LUKS1 + LUKS2:
        assert _stable(describe(tmp_path / name)) == _stable(describe(FIXTURES / name)), name
        dump = (tmp_path / name.replace(".img", ".luksdump.txt")).read_text()
        parse = luksdump.parse_luks1 if name.startswith("luks1") else luksdump.parse_luks2
        fields = luks1_fields if name.startswith("luks1") else luks2_fields
        assert fields(describe(tmp_path / name)) == parse(dump), name
    new = describe(tmp_path / "qemu-luks.img")
    old = describe(FIXTURES / "qemu-luks.img")
    for key in ("format", "cipher", "key_size", "payload_offset", "hash"):
        assert new[key] == old[key], key
    info = parse_image_info((tmp_path / "qemu-qcow2-luks.qemu-info.json").read_bytes())
    assert (info.format, info.encryption_format) == ("qcow2", "luks")
