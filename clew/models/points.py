"""Hook points: the places in a block where a dictionary reads and writes, and their one owner.

Around each MLP the residual stream passes through up to two normalisations:

    resid_mid --ln2--> mlp_in --MLP--> mlp_out --mlp_post (Gemma-2/3 only)--> resid_delta --(+)--> resid

A dictionary *reads* at ``resid_mid`` or ``mlp_in`` and *writes* at ``mlp_out`` or ``resid_delta``.
Everything that depends on which (what a recorded cache holds there, which input an MLP replacement
hands the encoder, the model's own MLP output there, which frozen norm a gradient crosses on its way
between the point and the residual stream) is answered from the :class:`Point` table below, so a new
kind of point (attention outputs, residual-stream dictionaries) is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from clew.errors import ClewError


@dataclass(frozen=True)
class Point:
    """One hook point of a block."""

    name: str
    """The name in dictionary configs (``read: mlp_in``, ``write: resid_delta``)."""
    cache: str
    """The :class:`~clew.models.transformer.ActivationCache` field that records it."""
    norm: str | None
    """The block's normalisation between this point and the residual stream (``"ln2"``, ``"mlp_post"``),
    or None when the point is in the residual stream itself. A block without that norm (no post-MLP
    norm outside Gemma-2/3) makes the point coincide with the residual side."""
    doc: str
    """What the point is, in a phrase."""


READ_POINTS: dict[str, Point] = {
    "resid_mid": Point("resid_mid", "resid_mid", None, "the residual stream before the MLP's norm"),
    "mlp_in": Point("mlp_in", "mlp_in", "ln2", "the MLP's normalised input"),
}
WRITE_POINTS: dict[str, Point] = {
    "resid_delta": Point(
        "resid_delta",
        "mlp_delta",
        None,
        "what the MLP branch adds to the residual stream (after any post-MLP norm)",
    ),
    "mlp_out": Point("mlp_out", "mlp_out", "mlp_post", "the MLP module's output (before any post-MLP norm)"),
}


def read_point(name: str) -> Point:
    """The read point called ``name``, or a one-line error naming the choices."""
    try:
        return READ_POINTS[name]
    except KeyError:
        raise ClewError(f"read point {name!r} is not one of {', '.join(READ_POINTS)}") from None


def write_point(name: str) -> Point:
    """The write point called ``name``, or a one-line error naming the choices."""
    try:
        return WRITE_POINTS[name]
    except KeyError:
        raise ClewError(f"write point {name!r} is not one of {', '.join(WRITE_POINTS)}") from None


def read_input(name: str, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
    """Inside an MLP replacement, which of its two inputs a dictionary reading at ``name`` sees."""
    return {"resid_mid": resid_mid, "mlp_in": mlp_in}[read_point(name).cache]
