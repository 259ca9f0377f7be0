"""JSON that came through protobuf's `Struct`, made faithful again."""

from __future__ import annotations

from typing import Any

__all__ = ["whole_numbers"]


def whole_numbers(value: Any) -> Any:
    """`value` with every whole float as an int (``1.0`` -> ``1``), recursively.

    A `Struct` holds every number as a double. JSON does not tell 1 from 1.0, but not
    every reader agrees: llama.cpp's schema converter (``{"minItems": 1.0}``), servers that
    type ``top_k`` as an integer, a C or Rust program parsing its JSON context.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value
