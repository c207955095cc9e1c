"""The .ods pre-check's tag reader, compiled (actors/roster/_odsscan.c says what it returns)."""

def scan(
    data: bytes, start: int, end: int, state: tuple[int, int, int, int, int, int, int, int, int],
    limits: tuple[int, int, int], /,
) -> tuple[int, int, int, int, tuple[int, int, int, int, int, int, int, int, int]]: ...
