"""Read rows from a file, a `datasets.Dataset` or a list of dicts — and remember where each row came from.

Every later step (format detection, validation, tokenization) can fail on one bad row. The user then needs
to know *which* row: so rows travel inside `Rows`, which keeps the source name and each row's number next to
the row itself, and every error is made by `Rows.error(i, ...)`.

Row numbers are 1-based and mean what a user would look up:
  .jsonl  the line number in the file (blank lines are skipped but still counted);
  others  the record number (the 3rd object of a .json list, the 3rd data row of a .csv below its header).

Text files are read as UTF-8; a leading byte-order mark (what Excel and Notepad write) is skipped, and bytes that
are not UTF-8 are an error naming the row (or, in a .json file, the line) that holds them.

Two clean-ups happen while loading, because the file formats force them on us:
  * a `None` value means "field absent". Arrow-backed sources (parquet, `datasets`) give every row every
    column, so a file mixing {"messages"} rows and {"prompt", "completion"} rows reads back with
    `"messages": None` in the prompt/completion rows. Dropping `None` lets each row be detected on its own.
  * CSV cells are always strings, and an empty cell is an absent field. A cell that holds a JSON list of
    objects (it starts with `[{`) is decoded, so `messages` can be stored in a CSV column.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from posttrain.errors import DataError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Rows:
    """Rows from one source, each with its 1-based row number for error messages.

    Example:
        >>> rows = Rows(rows=[{"text": "hi"}], source="data.jsonl", row_numbers=[3])
        >>> str(rows.error(0, "empty string", field="text"))
        "data.jsonl, row 3, field 'text': empty string"
    """

    rows: list[dict]
    source: str
    row_numbers: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def error(self, i: int, reason: str, *, field: str | None = None, fix: str | None = None) -> DataError:
        """A `DataError` located at the i-th row (0-based index into `rows`)."""
        return DataError(reason, file=self.source, row=self.row_numbers[i], field=field, fix=fix)


def load_rows(source: Any, *, columns: dict[str, str] | None = None, name: str | None = None) -> Rows:
    """Load rows from a path (.jsonl .json .parquet .csv), a `datasets.Dataset` or a list of dicts.

    Args:
        source: path to a file, a `datasets.Dataset`, or a list of dicts.
        columns: rename map applied to every row first, source column -> canonical name,
            e.g. {"question": "prompt", "response": "completion"}.
        name: what to call an in-memory source in error messages (default "<dataset>" / "<rows>").

    Returns:
        `Rows` with plain dict rows (`None` values removed, see the module docstring).

    Example:
        >>> load_rows([{"question": "2+2?", "response": "4"}],
        ...           columns={"question": "prompt", "response": "completion"}).rows
        [{'prompt': '2+2?', 'completion': '4'}]
    """
    if isinstance(source, (str, Path)):
        rows = _read_file(Path(source))
    elif isinstance(source, list):
        rows = Rows(list(source), name or "<rows>", list(range(1, len(source) + 1)))
    else:
        rows = _read_dataset(source, name or "<dataset>")
    _check_objects(rows)
    rows.rows = [{k: v for k, v in row.items() if v is not None} for row in rows.rows]
    if not rows.rows:
        raise DataError("no rows found", file=rows.source, fix="check that this is the right (non-empty) file")
    if columns:
        _rename_columns(rows, columns)
    return rows


def _read_file(path: Path) -> Rows:
    if not path.is_file():
        raise DataError("file not found", file=str(path), fix="check the path (relative paths start at the "
                        "directory you run from)")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type '{path.suffix}'", file=str(path),
                        fix=f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}")
    rows, row_numbers = reader(path)
    return Rows(rows, str(path), row_numbers)


def _read_jsonl(path: Path) -> tuple[list, list[int]]:
    rows, row_numbers = [], []
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = _decode(raw[3:] if line_number == 1 and raw.startswith(_BOM) else raw, path, row=line_number)
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line.rstrip("\r\n")))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", file=str(path), row=line_number,
                                fix="each line of a .jsonl file must be one complete JSON object") from None
            row_numbers.append(line_number)
    return rows, row_numbers


def _read_json(path: Path) -> tuple[list, list[int]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # a .json record may span lines: the line is what the user can look up
        raise _not_utf8(path, line=raw.count(b"\n", 0, e.start) + 1) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # The most common cause is JSON Lines content saved with a .json name ("Extra data" on line 2).
        raise DataError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", file=str(path),
                        fix="a .json file must hold one JSON list of objects; for one object per line, "
                            "name the file .jsonl") from None
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of objects, got a JSON {type(data).__name__}", file=str(path),
                        fix="write the rows as [{...}, {...}] (or one object per line in a .jsonl file)")
    return data, list(range(1, len(data) + 1))


def _read_parquet(path: Path) -> tuple[list, list[int]]:
    import pyarrow.parquet as pq  # a dependency of `datasets`; imported here to keep `import posttrain` fast

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise DataError(f"could not read parquet: {e}", file=str(path), fix="check that the file is parquet") from None
    return rows, list(range(1, len(rows) + 1))


def _read_csv(path: Path) -> tuple[list, list[int]]:
    rows, lines_read = [], [0]

    def lines(f) -> Iterator[str]:
        for raw in f:
            lines_read[0] += 1
            yield raw.decode("utf-8-sig" if lines_read[0] == 1 else "utf-8")  # -sig: skip a byte-order mark

    number = 0
    with open(path, "rb") as f:
        try:
            for number, record in enumerate(csv.DictReader(lines(f)), start=1):
                if None in record:  # DictReader files surplus values under the key None
                    raise DataError("row has more values than the header has columns", file=str(path), row=number,
                                    fix="quote values that contain commas")
                rows.append({k: _csv_cell(v) for k, v in record.items() if v})  # an empty cell = field absent
        except UnicodeDecodeError:
            raise _not_utf8(path, line=1) if lines_read[0] == 1 else _not_utf8(path, row=number + 1) from None
    return rows, list(range(1, len(rows) + 1))


_BOM = b"\xef\xbb\xbf"


def _decode(raw: bytes, path: Path, *, row: int) -> str:
    """One line of a text file as str; bytes that are not UTF-8 are a DataError naming the row."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path, row=row) from None


def _not_utf8(path: Path, *, row: int | None = None, line: int | None = None) -> DataError:
    return DataError(("" if line is None else f"line {line}: ") + "not UTF-8 text (the file was saved in another "
                     "encoding, e.g. Latin-1 or Windows-1252)", file=str(path), row=row,
                     fix=f"re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}")


def _csv_cell(value: str) -> Any:
    """Decode a cell holding a JSON list of objects (e.g. `messages`); leave every other cell a string."""
    if value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return value


def _read_dataset(dataset: Any, name: str) -> Rows:
    import datasets  # heavy import: only when a Dataset is passed

    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"can't read rows from a {type(dataset).__name__}", file=name,
                        fix="pass a file path, a datasets.Dataset (pick a split: dataset_dict['train']) "
                            "or a list of dicts")
    return Rows([dict(row) for row in dataset], name, list(range(1, len(dataset) + 1)))


def _check_objects(rows: Rows) -> None:
    for i, row in enumerate(rows.rows):
        if not isinstance(row, dict):
            raise rows.error(i, f"expected an object with named fields, got {type(row).__name__}",
                             fix='write each row as an object, e.g. {"prompt": "...", "completion": "..."}')


def _rename_columns(rows: Rows, columns: dict[str, str]) -> None:
    """Apply data.columns in place. A source column that no row has is almost surely a typo: fail."""
    present = set().union(*rows.rows)
    for old in columns:
        if old not in present:
            raise DataError(f"data.columns renames '{old}', but no row has that column "
                            f"(columns found: {', '.join(sorted(present))})", file=rows.source, field=old,
                            fix="fix the column name in data.columns")
    for i, row in enumerate(rows.rows):
        for old, new in columns.items():
            if old in row and new in row and new not in columns:  # (unless `new` is itself renamed)
                raise rows.error(i, f"data.columns renames '{old}' to '{new}', but the row already has '{new}'",
                                 field=new, fix=f"drop one of the two columns, or map '{old}' elsewhere")
        rows.rows[i] = {columns.get(k, k): v for k, v in row.items()}
