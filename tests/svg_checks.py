"""Checks on the SVG pictures clew draws, shared by the tests of each picture."""

from __future__ import annotations

import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"


def assert_text_inside(root: ET.Element) -> None:
    """Every left-aligned text of the picture ends inside its width, at a narrow half a font size per
    character (Helvetica's average is wider, so a line that fails here surely runs off the edge)."""
    width = float(root.get("width", "0").removesuffix("px"))
    for t in root.iter(f"{SVG}text"):
        if t.get("text-anchor") == "start":
            assert float(t.get("x")) + 0.5 * float(t.get("font-size")) * len(t.text or "") <= width, t.text
