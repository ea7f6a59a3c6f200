"""The one error type the data layer raises for bad input, naming file, line and field."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with input data.

    ``str()`` reads ``data/prefs.jsonl:12: field 'chosen': empty completion``; ``line``
    is None for problems with the whole file (missing, unknown format) and ``field`` is
    None when no single field is to blame (bad JSON, undecodable bytes).
    """

    def __init__(self, path: str, line: int | None, field: str | None, reason: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = self.reason if self.field is None else f"field '{self.field}': {self.reason}"
        return f"{where}: {what}"

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing) despite the custom __init__
        return (type(self), (self.path, self.line, self.field, self.reason))
