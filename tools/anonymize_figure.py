"""Makes docs/images/anonymize_before_after.png: the tf-anonymize masks on a real photo.

The face box is given BY HAND (no trained weights ship with this project, and the untrained
network's boxes are meaningless); the masks are the ones tf-anonymize applies
(:func:`tinyfaces_trt.runtime.masks.apply_masks`). The photo is matplotlib's sample
grace_hopper.jpg.

    python tools/anonymize_figure.py [--out docs/images/anonymize_before_after.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package

from tinyfaces_trt.core.files import atomic_output  # noqa: E402
from tinyfaces_trt.runtime.imageio import load_image  # noqa: E402
from tinyfaces_trt.runtime.masks import MaskStyle, apply_masks  # noqa: E402

#: Grace Hopper's face in grace_hopper.jpg (512 x 600), x1, y1, x2, y2: read off by hand.
FACE = np.array([[170, 140, 350, 330, 1.0]])
PANELS = [("original (box given by hand)", None),
          ("--mode blur", MaskStyle(mode="blur", scale=1.1)),
          ("--mode pixelate (5x5 cells)", MaskStyle(mode="pixelate", cells=5, scale=1.1)),
          ("--mode solid --shape ellipse", MaskStyle(mode="solid", shape="ellipse", scale=1.1))]


def main() -> int:
    import matplotlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/images/anonymize_before_after.png")
    args = parser.parse_args()
    photo = load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    width, label_h = 240, 22
    height = round(photo.shape[0] * width / photo.shape[1])
    sheet = Image.new("RGB", (width * len(PANELS), height + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (label, style) in enumerate(PANELS):
        image = photo if style is None else apply_masks(photo, FACE, style)
        if style is None:
            from tinyfaces_trt.runtime.draw import draw_boxes

            image = draw_boxes(image, FACE[:, :4], width=3)
        sheet.paste(Image.fromarray(image).resize((width, height), Image.LANCZOS), (k * width, 0))
        draw.text((k * width + 6, height + 5), label, fill="black", font=ImageFont.load_default())
    with atomic_output(args.out) as tmp:
        sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
