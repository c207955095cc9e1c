"""The one error raised for anything that fails to decode."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field: ``path`` is dotted (``rows.3.phone``), ``""`` for the whole."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<payload>'}: {self.message}"


class DecodeError(ValueError):
    """A payload is not a valid job or intent; ``errors`` names each offending field path."""

    def __init__(self, what: str, errors: list[FieldError]) -> None:
        self.what = what
        self.errors = errors
        detail = "; ".join(str(e) for e in errors[:10])
        if len(errors) > 10:
            detail += f"; and {len(errors) - 10} more"
        super().__init__(f"invalid {what}: {detail}")

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.errors]

    @classmethod
    def from_validation(
        cls, what: str, exc: ValidationError, kind: object = None
    ) -> DecodeError:
        """Wrap pydantic's errors; ``kind`` (the discriminator's value) is left out of paths."""
        errors = []
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            if kind is not None and loc and loc[0] == kind:
                loc = loc[1:]
            path = ".".join(str(p) for p in loc)
            if not path and err["type"].startswith("union_tag"):
                path = "kind"
            message = err["msg"]
            if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
                shown = repr(err["input"])
                if len(shown) > 60:
                    shown = shown[:57] + "..."
                message = f"{message} (got {shown})"
            errors.append(FieldError(path, message))
        return cls(what, errors)
