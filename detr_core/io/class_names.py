"""Class names of a model a user brings: from its checkpoint, a sidecar file, or numbered.

A sidecar file (`read_class_names`) is one of:

- plain text, one name per line (line i is class i; blank lines at the end are ignored);
- a JSON list of names (entry i is class i);
- a JSON object mapping class ids to names (``{"0": "cat", "1": "dog"}``; ids missing from it are
  named ``class <id>``);
- a COCO annotation file (a JSON object with ``categories: [{"id": .., "name": ..}, ...]``): the
  official training uses the category ids as the class indices, so category id i is class i.

`class_names_for` picks the first source there is and checks that the count fits the model's class
head (K real classes; the head's K+1-th output is "no object").
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["ClassNamesError", "class_names_for", "numbered_classes", "read_class_names"]

MAX_CLASS_FILE_BYTES = 64 * 2**20  # a COCO annotation file with its images and annotations can be large


class ClassNamesError(CheckpointError):
    """A class-name file cannot be read or does not fit the model."""


def numbered_classes(num_classes: int) -> tuple[str, ...]:
    """("class 0", ..., "class K-1")."""
    return tuple(f"class {i}" for i in range(num_classes))


def _from_mapping(mapping: Mapping, source: str) -> dict[int, str]:
    names: dict[int, str] = {}
    for key, value in mapping.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ClassNamesError(f"{source}: the key {key!r} is not a class id (an integer)") from None
        if index < 0:
            raise ClassNamesError(f"{source}: the class id {index} is negative")
        if not isinstance(value, str):
            raise ClassNamesError(f"{source}: the name of class {index} is not a string")
        names[index] = value
    return names


def _dense(names: dict[int, str], num_classes: int | None) -> tuple[str, ...]:
    count = num_classes if num_classes is not None else (max(names) + 1 if names else 0)
    return tuple(names.get(i, f"class {i}") for i in range(count))


def _parse(text: str, source: str) -> tuple[list[str] | None, dict[int, str] | None]:
    """A list of names (index = class) or a sparse id -> name map."""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClassNamesError(f"{source} looks like JSON but is not valid JSON: {e}") from None
        if isinstance(data, list):
            if not all(isinstance(n, str) for n in data):
                raise ClassNamesError(f"{source}: a JSON list of class names must hold strings only")
            return data, None
        if isinstance(data, dict) and "categories" in data:  # COCO annotation file
            cats = data["categories"]
            if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
                raise ClassNamesError(f"{source}: 'categories' must be a list of {{'id': .., 'name': ..}}")
            return None, _from_mapping({c["id"]: c["name"] for c in cats}, source)
        if isinstance(data, dict):
            return None, _from_mapping(data, source)
        raise ClassNamesError(f"{source}: JSON class names are a list, an id -> name map or a COCO file")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines], None


def read_class_names(path: str | Path, num_classes: int | None = None) -> tuple[str, ...]:
    """The class names in `path`, one per class id; checked against `num_classes` when given.

    Raises:
        ClassNamesError: unreadable file, unknown format, or a count that does not fit the model.
    """
    path = Path(path)
    source = f"class-name file {path.name}"
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ClassNamesError(f"{source} is a folder, not a file: {path}")
        if not stat.S_ISREG(info.st_mode):  # /dev/zero would be read forever, a FIFO waited on
            raise ClassNamesError(f"{source} is not a regular file (a device, a FIFO or a socket): {path}")
        if info.st_size > MAX_CLASS_FILE_BYTES:
            raise ClassNamesError(f"{source} is larger than {MAX_CLASS_FILE_BYTES >> 20} MB")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClassNamesError(f"{source} not found: {path}") from None
    except UnicodeDecodeError:
        raise ClassNamesError(f"{source} is not UTF-8 text") from None
    except OSError as e:
        raise ClassNamesError(f"cannot read {source}: {e.strerror or e}") from None
    names, sparse = _parse(text, source)
    if names is not None:
        if num_classes is not None and len(names) != num_classes:
            raise ClassNamesError(
                f"{source} names {len(names)} classes, but the model has {num_classes} "
                f"(its class head has {num_classes + 1} outputs, the last being 'no object')"
            )
        return tuple(names)
    assert sparse is not None
    if num_classes is not None and sparse and max(sparse) >= num_classes:
        raise ClassNamesError(
            f"{source} has class id {max(sparse)}, but the model's class ids are 0..{num_classes - 1}"
        )
    return _dense(sparse, num_classes)


def class_names_for(
    num_classes: int,
    file: str | Path | None = None,
    id2label: Mapping | None = None,
    given: Sequence[str] | None = None,
) -> tuple[tuple[str, ...], str]:
    """(names, where they came from): an explicit list, a sidecar file, the checkpoint's id2label, or numbers."""
    if given is not None:
        names = tuple(str(n) for n in given)
        if len(names) != num_classes:
            raise ClassNamesError(f"{len(names)} class names were given, but the model has {num_classes} classes")
        return names, "given"
    if file is not None:
        return read_class_names(file, num_classes), f"file {Path(file).name}"
    if id2label:
        mapping = _from_mapping(id2label, "the checkpoint's id2label")
        if mapping and max(mapping) >= num_classes:
            raise ClassNamesError(
                f"the checkpoint's id2label has class id {max(mapping)}, but its class head has {num_classes} classes"
            )
        return _dense(mapping, num_classes), "id2label"
    return numbered_classes(num_classes), "numbered"
