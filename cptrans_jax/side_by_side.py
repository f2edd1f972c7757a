"""Side-by-side comparison frames: infrared | translation (| fusion), optionally labelled.

:class:`SideBySide` composes one frame from its panels, left to right, each resized (bicubic)
to the first panel's size when it differs, with a ``gap`` of black pixels between panels. With
labels, a black strip above the panels carries each panel's label in white, centred over it
(Pillow's default font, 1/12 of the panel height, at least 10 px; a label too wide for its
panel is cut at the end with "…"). The strip is drawn once and reused for every frame, so a
long video costs one concatenation per frame. Sizes are rounded up to even numbers by the video
writer, as for any frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from cptrans_jax import video_io

GAP = 4  # black pixels between panels


def parse_labels(text: str | None, panels: int) -> tuple[str, ...] | None:
    """``"infrared,translation,fusion"`` → one label per panel (None without labels).

    Raises:
        ValueError: the number of labels is not the number of panels.
    """
    if text is None:
        return None
    labels = tuple(label.strip() for label in text.split(","))
    if len(labels) != panels:
        raise ValueError(
            f"--panel_labels has {len(labels)} label(s) ({text!r}) but the side-by-side video "
            f"has {panels} panels; expected {panels} comma-separated labels"
        )
    return labels


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, ImportError, OSError):  # a Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text``, cut with "…" until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


class SideBySide:
    """Composes panels into one frame (module docstring).

    Args:
        labels: one text per panel, or None for no label strip.
        gap: black pixels between panels.
    """

    def __init__(self, labels: Sequence[str] | None = None, gap: int = GAP) -> None:
        self.labels = tuple(labels) if labels is not None else None
        self.gap = gap
        self._strip: tuple[tuple[int, int, int], np.ndarray] | None = None

    def _label_strip(self, panels: int, height: int, width: int) -> np.ndarray:
        from PIL import Image, ImageDraw

        key = (panels, height, width)
        if self._strip is not None and self._strip[0] == key:
            return self._strip[1]
        font_px = max(height // 12, 10)
        strip_h = font_px + max(font_px // 2, 4)
        total_w = panels * width + (panels - 1) * self.gap
        image = Image.new("RGB", (total_w, strip_h))
        draw = ImageDraw.Draw(image)
        font = _font(font_px)
        for i, label in enumerate(self.labels or ()):
            text = _fit(draw, label, font, width - 4)
            left = i * (width + self.gap) + (width - draw.textlength(text, font=font)) / 2
            draw.text((left, strip_h / 2), text, fill=(255, 255, 255), font=font, anchor="lm")
        strip = np.asarray(image)
        self._strip = (key, strip)
        return strip

    def compose(self, panels: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H', W', 3) from uint8 (H, W, 3) panels (resized to the first one's size)."""
        if self.labels is not None and len(self.labels) != len(panels):
            raise ValueError(f"{len(self.labels)} labels for {len(panels)} panels")
        h, w = panels[0].shape[:2]
        row = []
        for i, panel in enumerate(panels):
            if i:
                row.append(np.zeros((h, self.gap, 3), np.uint8))
            row.append(video_io.resize_image(panel, w, h))
        frame = np.concatenate(row, axis=1)
        if self.labels is None:
            return frame
        return np.concatenate([self._label_strip(len(panels), h, w), frame], axis=0)
