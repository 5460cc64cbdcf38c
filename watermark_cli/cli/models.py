"""`wm models`."""

from __future__ import annotations

from rich.table import Table

from .app import app, emit_json, stdout
from .options import JsonOption


@app.command()
def models(json_output: JsonOption = False) -> None:
    """List the shipped models and their payload capacity."""
    from ..model.store import is_keyed, read_card, shipped_models_folder

    from ..marking.fragile import FRAGILE_PIXELS_AT_MOST, capacity_by_carriers
    from ..marking.image import frames_needed, smallest_markable_side

    folder = shipped_models_folder()
    rows = []
    for card_folder in sorted(p.parent for p in folder.glob("*/card.yaml")):
        card = read_card(card_folder)
        tile = int(card["architecture"].get("tile", 32))
        # Smaller frames are marked as a multi-frame instance of at least this many (each side ≥ one tile).
        by_side = {side: frames_needed(side, side, tile) for side in (64, 96, smallest_markable_side(tile))}
        rows.append({"name": card_folder.name, "path": str(card_folder), "raw_bits": card["payload"]["raw_bits"],
                     "capacity_bytes": card["payload"]["capacity_bytes"],
                     "smallest_side_px": smallest_markable_side(tile),
                     "frames_needed_by_side": {str(side): n for side, n in by_side.items() if n is not None},
                     # Instances this small, with fewer frames or whose robust mark does not read
                     # back, get the fragile mark (marking.fragile: lossless copies only).
                     "fragile_mark_up_to_pixels": FRAGILE_PIXELS_AT_MOST,
                     # Its message bytes by the pixels that may carry a bit (marking.fragile.carriers).
                     "fragile_mark_bytes_by_carriers": {
                         str(count): size for count, size in capacity_by_carriers(card["payload"]["raw_bits"]).items()},
                     "psnr_min_db": card.get("quality_floor", {}).get("psnr_min_db"),
                     # Keyed: without the key a mark cannot be read, removed or copied (README, Security).
                     "keyed": is_keyed(card),
                     "card_name": card.get("name")})
    if json_output:
        for row in rows:
            emit_json(row)
        return
    table = Table(title=f"models in {folder}")
    for column in ("name", "model", "keyed", "raw bits", "capacity (bytes)", "smallest frame (px)",
                   "frames needed by side", "trained floor (dB)"):
        table.add_column(column)
    for row in rows:
        frames = ", ".join(f"{side}²: {n}" for side, n in row["frames_needed_by_side"].items())
        table.add_row(row["name"], str(row["card_name"]), "yes" if row["keyed"] else "no (marks unprotected)",
                      str(row["raw_bits"]), str(row["capacity_bytes"]), str(row["smallest_side_px"]), frames,
                      str(row["psnr_min_db"]))
    stdout.print(table if rows else f"no models in {folder}")
