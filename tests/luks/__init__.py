"""LUKS1, LUKS2 and qcow2-LUKS: formats, rules and engine, against cryptsetup and qemu-img."""
