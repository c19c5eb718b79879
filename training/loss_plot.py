"""Draw the loss curves of SCAIL-2 Nano training runs as a PNG (Pillow only; no plotting library needed).

    python -m training.loss_plot RUN1/log.json RUN2/log.json --out docs/nano_loss.png

Two panels: the VAE's reconstruction PSNR and the DiT's flow-matching loss, against the optimizer step counted
across the runs given (each run continues the previous one), with a marker where each run starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

PANEL = (560, 300)
MARGIN = (56, 28, 16, 40)  # left, top, right, bottom
COLOURS = ((32, 96, 192), (200, 80, 40), (40, 150, 70), (130, 60, 170))


def curves(logs: list[dict]) -> dict[str, list[tuple[float, float, int]]]:
    """``{"vae": [(step, psnr, run)], "dit": [(step, loss, run)]}`` with steps continued across runs."""
    series: dict[str, list[tuple[float, float, int]]] = {"vae": [], "dit": []}
    offsets = {"vae": 0, "dit": 0}
    for run, log in enumerate(logs):
        last = dict(offsets)
        for row in log["rows"]:
            stage = row["stage"]
            value = row["psnr"] if stage == "vae" else row["loss"]
            step = offsets[stage] + row["step"]
            series[stage].append((step, value, run))
            last[stage] = step
        offsets = last
    return series


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], points: list[tuple[float, float, int]],
           title: str) -> None:  # fmt: skip
    left, top, right, bottom = MARGIN
    x0, y0 = origin[0] + left, origin[1] + top
    x1, y1 = origin[0] + PANEL[0] - right, origin[1] + PANEL[1] - bottom
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    draw.text((x0, origin[1] + 6), title, fill=(0, 0, 0))
    draw.text((x0, y1 + 22), "optimizer step (continued across runs)", fill=(0, 0, 0))
    if not points:
        draw.text((x0 + 10, y0 + 10), "no data", fill=(0, 0, 0))
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = 0.0, max(xs)
    ymin, ymax = min(ys), max(ys)
    pad = 0.05 * (ymax - ymin or 1.0)
    ymin, ymax = ymin - pad, ymax + pad

    def to_xy(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - xmin) / (xmax - xmin or 1) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)

    for k in range(5):
        value = ymin + k * (ymax - ymin) / 4
        _, y = to_xy(0, value)
        draw.line((x0 - 4, y, x0, y), fill=(0, 0, 0))
        draw.text((origin[0] + 4, y - 6), f"{value:.3g}", fill=(0, 0, 0))
        step = xmin + k * (xmax - xmin) / 4
        x, _ = to_xy(step, ymin)
        draw.line((x, y1, x, y1 + 4), fill=(0, 0, 0))
        draw.text((x - 12, y1 + 6), f"{step:.0f}", fill=(0, 0, 0))
    runs = sorted({p[2] for p in points})
    for run in runs:
        line = [to_xy(x, y) for x, y, r in points if r == run]
        colour = COLOURS[run % len(COLOURS)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        draw.ellipse((line[0][0] - 3, line[0][1] - 3, line[0][0] + 3, line[0][1] + 3), fill=colour)
        draw.text((x1 - 50, y0 + 6 + 14 * run), f"run {run + 1}", fill=colour)


def plot(logs: list[dict], out: Path) -> Path:
    series = curves(logs)
    image = Image.new("RGB", (PANEL[0] * 2, PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, (0, 0), series["vae"], "VAE: reconstruction PSNR (dB), higher is better")
    _panel(draw, (PANEL[0], 0), series["dit"], "DiT: flow-matching loss (weighted MSE on v)")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.loss_plot", description=__doc__.split("\n")[0])
    parser.add_argument("logs", type=Path, nargs="+", help="log.json of each run, in order")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"wrote {plot([json.loads(p.read_text()) for p in args.logs], args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
