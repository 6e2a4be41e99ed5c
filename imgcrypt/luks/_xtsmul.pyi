def xor_tweaks(
    src: bytes | bytearray | memoryview,
    dst: bytearray | memoryview,
    first_tweaks: bytes | bytearray | memoryview,
    blocks_per_sector: int,
    /,
) -> None: ...
