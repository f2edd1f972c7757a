"""translate's outputs beside the translation: the fusion (``--fuse``) and the side-by-side
comparison video (``--side_by_side``).

* ``--fuse METHOD --fuse_output PATH``: the infrared fused with its translation
  (:mod:`cptrans_jax.fusion`), computed on the device in the same jitted call as G, from the
  frame G saw and its quantised translation, so at the size G ran at (``--size``); with
  ``--output_size input`` it is resized back like the translation. It equals what
  ``python -m cptrans_jax.fuse`` makes of the same frames at that size.
* ``--side_by_side PATH``: infrared | translation (| fusion, with ``--fuse``) as one frame
  (:mod:`cptrans_jax.side_by_side`), each panel at the translation's output size, the infrared
  panel being the frame G saw (or, with ``--output_size input``, the input frame itself);
  ``--panel_labels "infrared,translation,fusion"`` puts a label over each panel. A video
  (``.mp4`` …), an animated ``.gif``, or a folder of PNGs.

Each is a :class:`cptrans_jax.frame_output.FrameOutput`: checked and opened before any work,
written under a temporary name and renamed into place only when every frame is written, and
removed on any failure, like the translation itself. The paths must differ from each other and
from ``--output``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from cptrans_jax import frame_io, fusion
from cptrans_jax.frame_output import FrameOutput
from cptrans_jax.side_by_side import SideBySide, parse_labels


@dataclasses.dataclass(frozen=True)
class ExtraOptions:
    """The command line's ``--fuse*``, ``--side_by_side`` and ``--panel_labels``."""

    fuse: str | None = None
    fuse_output: str | None = None
    fuse_weight: float = 0.5
    fuse_levels: int = fusion.DEFAULT_LEVELS
    side_by_side: str | None = None
    panel_labels: str | None = None


class ExtraOutputs:
    """The fusion and side-by-side outputs of one translation (module docstring).

    Raises:
        frame_io.FrameInputError: inconsistent options or a bad path, in one line.
        OutputError: an output path that cannot be written.
    """

    def __init__(
        self, options: ExtraOptions, source: frame_io.Source, output: str, fps: float
    ) -> None:
        o = options
        self.config: fusion.FusionConfig | None = None
        if o.fuse is not None:
            try:
                self.config = fusion.FusionConfig(o.fuse, o.fuse_weight, o.fuse_levels)
            except ValueError as e:
                raise frame_io.FrameInputError(f"--fuse: {e}") from None
            if o.fuse_output is None and o.side_by_side is None:
                raise frame_io.FrameInputError(
                    "--fuse needs somewhere to write the fusion: give --fuse_output PATH "
                    "and/or --side_by_side PATH"
                )
        elif o.fuse_output is not None:
            raise frame_io.FrameInputError(
                f"--fuse_output needs --fuse METHOD (one of {', '.join(fusion.METHODS)})"
            )
        if o.panel_labels is not None and o.side_by_side is None:
            raise frame_io.FrameInputError("--panel_labels needs --side_by_side PATH")
        paths = {
            "--output": output,
            "--fuse_output": o.fuse_output,
            "--side_by_side": o.side_by_side,
        }
        seen: dict[str, str] = {}
        for option, path in paths.items():
            if path is None:
                continue
            real = os.path.realpath(path)
            if real in seen:
                raise frame_io.FrameInputError(
                    f"{option} {path} is also {seen[real]}; expected a path of its own"
                )
            seen[real] = option
        self.compositor = None
        if o.side_by_side is not None:
            try:
                labels = parse_labels(o.panel_labels, 3 if self.config else 2)
            except ValueError as e:
                raise frame_io.FrameInputError(str(e)) from None
            self.compositor = SideBySide(labels)
        self.outputs: dict[str, FrameOutput] = {}
        for option in ("--fuse_output", "--side_by_side"):
            path = paths[option]
            if path is not None:
                kind, name = frame_io.output_kind(path, source, option)
                self.outputs[option] = FrameOutput(path, kind, source.path, fps, name=name)

    def open(self) -> None:
        """Opens every output (a bad path fails here, before any work)."""
        try:
            for out in self.outputs.values():
                out.open()
        except BaseException:
            self.discard()
            raise

    def infer_fn(self, generator: Any, mesh: jax.sharding.Mesh, translate_fn: Callable) -> Callable:
        """``(params, frames) → (translation, fusion or None)``: G alone, or G and the fusion in
        one jitted call."""
        if self.config is None:
            return lambda params, frames: (translate_fn(params, frames), None)
        return fusion.make_translate_fuse_fn(translate_fn, self.config, mesh)

    def write(
        self, infrared: np.ndarray, translation: np.ndarray, fused: np.ndarray | None
    ) -> None:
        """Writes one frame's fusion and side-by-side composite, each where asked."""
        if "--fuse_output" in self.outputs:
            self.outputs["--fuse_output"].write(fused)
        if self.compositor is not None:
            panels = [infrared, translation] + ([fused] if fused is not None else [])
            self.outputs["--side_by_side"].write(self.compositor.compose(panels))

    def commit(self) -> list[str]:
        """Moves every finished output into place; returns their notes and one line each."""
        lines = []
        for option, out in self.outputs.items():
            note = out.commit()
            if note:
                lines.append(note)
            what = f"fusion ({self.config.method})" if option == "--fuse_output" else "side-by-side"
            lines.append(f"wrote the {what} of {out.frames} frames -> {out.output}")
        return lines

    def discard(self) -> None:
        for out in self.outputs.values():
            out.discard()
