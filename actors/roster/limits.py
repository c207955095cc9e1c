"""The bounds a roster file must stay within, taken from ``ROSTER_*`` settings."""

from __future__ import annotations

from dataclasses import dataclass

from jobplatform.settings import RosterSettings

#: The header is looked for in this many rows at the top of each sheet.
HEADER_SEARCH_ROWS = 30


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int = 50 * 1024 * 1024
    max_uncompressed_bytes: int = 500 * 1024 * 1024
    max_compression_ratio: int = 200
    max_rows: int = 200_000
    max_columns: int = 200
    max_cells: int = 8_000_000
    chunk_rows: int = 500

    @classmethod
    def from_settings(cls, roster: RosterSettings) -> Limits:
        return cls(
            max_file_bytes=roster.max_file_bytes,
            max_uncompressed_bytes=roster.max_uncompressed_bytes,
            max_compression_ratio=roster.max_compression_ratio,
            max_rows=roster.max_rows,
            max_columns=roster.max_columns,
            max_cells=roster.max_cells,
            chunk_rows=roster.chunk_rows,
        )

    @property
    def max_row_number(self) -> int:
        """The last sheet row a cell may sit on: the data rows plus room for titles and header."""
        return self.max_rows + HEADER_SEARCH_ROWS + 1
