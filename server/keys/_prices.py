"""Per-token prices, found for a called model as the router finds its deployments.

The config prices a `model_list` entry, named by its `model_name`; a call names a model.
For a plain name they are the same, but a wildcard entry (`wild/*`) serves names of the
caller's choosing (`wild/foo`): looked up by the name called, its calls were charged
nothing and a budget never stopped them. A name is priced as the router serves it: a
configured plain name first, else the pattern `names.serving_pattern` finds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..names import serving_pattern

__all__ = ["Prices"]

#: (per prompt token, per completion token)
Price = tuple[float, float]
_FREE: Price = (0.0, 0.0)


class Prices:
    """The prices of the configured models, by the names callers call."""

    def __init__(self, entries: Iterable[tuple[str, Price]] = ()) -> None:
        """`entries`: every configured `model_name` with its prices, in config order (an
        unpriced one at (0, 0): a plain name the router serves is never priced by a
        pattern that also matches it). A name listed again keeps its last priced entry."""
        self._plain: dict[str, Price] = {}
        self._wild: dict[str, Price] = {}  # insertion order: the first to match serves
        for name, price in entries:
            table = self._wild if "*" in name else self._plain
            if price != _FREE or name not in table:
                table[name] = price

    @classmethod
    def of(cls, prices: Mapping[str, Price] | Prices | None) -> Prices:
        """A table from a mapping of model_name to prices (or a table, as it is)."""
        if isinstance(prices, Prices):
            return prices
        return cls((prices or {}).items())

    def __call__(self, model: str) -> Price:
        """The prices a call to `model` is charged at; (0, 0) when none is configured."""
        found = self._plain.get(model)
        if found is not None:
            return found
        served = serving_pattern(model, self._wild.items())
        return served[1] if served is not None else _FREE
