"""Read ``cryptsetup luksDump`` text into the fields ``imgcrypt inspect`` reports.

The comparison is field by field: what luksDump prints, turned into the names and units of
imgcrypt's description (bytes, bits), so a test can assert the two agree.
"""

from __future__ import annotations

import re
from typing import Any


def _value(line: str) -> str:
    return line.split(":", 1)[1].strip()


def _number(text: str) -> int:
    return int(text.split()[0])


def parse_luks1(text: str) -> dict[str, Any]:
    fields: dict[str, str] = {}
    slots: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        enabled = re.match(r"Key Slot (\d+): (ENABLED|DISABLED)", line)
        if enabled:
            current = {"slot": int(enabled.group(1))} if enabled.group(2) == "ENABLED" else None
            if current is not None:
                slots.append(current)
            continue
        if ":" not in line or not line.strip() or line.startswith(" "):
            continue
        key = line.split(":", 1)[0].strip()
        if line.startswith("\t") and current is not None:
            current[key] = _value(line)
        elif not line.startswith("\t"):
            fields[key] = _value(line)
    return {
        "version": int(fields["Version"]),
        "cipher": f"{fields['Cipher name']}-{fields['Cipher mode']}",
        "hash": fields["Hash spec"],
        "payload_offset": int(fields["Payload offset"]) * 512,
        "key_size": int(fields["MK bits"]),
        "mk_digest_iterations": int(fields["MK iterations"]),
        "uuid": fields["UUID"],
        "keyslots": [
            {"slot": s["slot"], "iterations": int(s["Iterations"]),
             "key_material_offset": int(s["Key material offset"]) * 512,
             "stripes": int(s["AF stripes"])}
            for s in slots
        ],
    }


def _sections(text: str) -> dict[str, list[str]]:
    """Top-level 'Name:' sections of a LUKS2 dump and their indented lines."""
    out: dict[str, list[str]] = {"": []}
    name = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            name = line.rstrip()[:-1]
            out[name] = []
        elif line and not line[0].isspace():
            out[""].append(line)
            name = ""
        else:
            out.setdefault(name, []).append(line)
    return out


def _entries(lines: list[str]) -> list[tuple[int, str, dict[str, str]]]:
    """'  N: type' entries with their tab-indented 'Key: value' lines (continuations dropped)."""
    entries: list[tuple[int, str, dict[str, str]]] = []
    for line in lines:
        head = re.match(r"  (\d+): (.*)$", line)
        if head:
            entries.append((int(head.group(1)), head.group(2).strip(), {}))
        elif entries and line.startswith("\t") and ":" in line:
            key = line.split(":", 1)[0].strip()
            if key:
                entries[-1][2][key] = _value(line)
    return entries


def parse_luks2(text: str) -> dict[str, Any]:
    sections = _sections(text)
    top = {line.split(":", 1)[0].strip(): _value(line) for line in sections[""] if ":" in line}
    flags = top.get("Flags", "(no flags)")
    out: dict[str, Any] = {
        "version": int(top["Version"]),
        "seqid": int(top["Epoch"]),
        "metadata_size": _number(top["Metadata area"]),
        "keyslots_size": _number(top["Keyslots area"]),
        "uuid": top["UUID"],
        "label": "" if top["Label"] == "(no label)" else top["Label"],
        "subsystem": "" if top["Subsystem"] == "(no subsystem)" else top["Subsystem"],
        "flags": [] if flags == "(no flags)" else flags.split(),
        "segments": [], "keyslots": [], "tokens": [], "digests": [],
    }
    for ident, kind, f in _entries(sections.get("Data segments", [])):
        length = f["length"]
        out["segments"].append({
            "segment": ident, "type": kind, "offset": _number(f["offset"]),
            "size": "dynamic" if length.startswith("(whole") else _number(length),
            "cipher": f.get("cipher", ""), "sector_size": _number(f.get("sector", "512")),
        })
    for ident, kind, f in _entries(sections.get("Keyslots", [])):
        slot: dict[str, Any] = {
            "slot": ident, "type": kind, "key_size": _number(f["Key"]),
            "priority": f["Priority"], "cipher": f["Cipher"],
            "cipher_key_size": _number(f["Cipher key"]), "kdf": f["PBKDF"],
            "stripes": int(f["AF stripes"]), "af_hash": f["AF hash"],
            "area_offset": _number(f["Area offset"]), "area_size": _number(f["Area length"]),
            "digest": int(f["Digest ID"]),
        }
        if f["PBKDF"] == "pbkdf2":
            slot.update(hash=f["Hash"], iterations=int(f["Iterations"]))
        else:
            slot.update(time=int(f["Time cost"]), memory=int(f["Memory"]),
                        parallel=int(f["Threads"]))
        out["keyslots"].append(slot)
    for ident, kind, f in _entries(sections.get("Tokens", [])):
        out["tokens"].append({"token": ident, "type": kind,
                              "keyslots": f.get("Keyslot", "").split()})
    for ident, kind, f in _entries(sections.get("Digests", [])):
        out["digests"].append({"digest": ident, "type": kind, "hash": f["Hash"],
                               "iterations": int(f["Iterations"])})
    return out
