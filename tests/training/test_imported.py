"""A few training steps on real EM imported by ``cellseg import`` (the gala FIB-SEM crops): the
imported layout serves the datasplit, the class frequencies and the trainer unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from imported_training import train_on_imported

from cellseg.data.importer import import_mapping

REPO = Path(__file__).resolve().parents[2]
GALA = REPO.parent / "shared" / "real_em" / "gala_fibsem_mini"


@pytest.mark.skipif(
    not GALA.is_dir(), reason=f"{GALA} absent (the shared real EM sits beside the clone)"
)
def test_a_model_trains_on_imported_real_em(tiny_config, tmp_path):
    data = tmp_path / "data"
    import_mapping(REPO / "config/import/gala_fibsem_mini.yaml", data, source_root=GALA)
    # pm is the only class the import maps: the other 13 train with an imputed prior
    _, history, _ = train_on_imported(data, tiny_config, tmp_path)
    assert list(history["epoch"]) == [0, 1]
    assert history["train_loss"].notna().all()
    assert history["val_dice_pm"].between(0, 1).all()  # pm is annotated in the validation crop
    assert history["val_dice_nuc"].isna().all()  # nothing else is
