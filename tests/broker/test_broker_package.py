"""broker's public surface: `__all__` sorted, importable, and complete."""

from __future__ import annotations

import types

import broker


def test_all_is_sorted_and_importable() -> None:
    assert broker.__all__ == sorted(broker.__all__)
    for name in broker.__all__:
        assert hasattr(broker, name), name


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(broker).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(broker.__all__)
