def xor_tweaks(
    src: bytes | bytearray | memoryview,
    dst: bytearray | memoryview,
    first_tweaks: bytes | bytearray | memoryview,
    blocks_per_sector: int,
    /,
) -> None: ...

def iv_blocks(start: int, step: int, count: int, wrap32: bool, /) -> bytes: ...

def nonzero_spans(buf: bytes | bytearray | memoryview, block: int, /) -> list[tuple[int, int]]: ...
