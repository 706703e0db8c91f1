"""The tiny-BERT run shared by the training-side tests (fixtures in ``conftest.py``)."""

from pathlib import Path

from sw.admm import ADMMSettings
from sw.pipeline import CompressionConfig, TrainConfig

GLUE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glue"


def tiny_config(checkpoint, output_dir, **overrides):
    compression = CompressionConfig(
        projection={"kind": "pattern_quantize", "block_size": 4, "kept_per_block": 8, "pool_size": 16, "bits": 8},
        admm=ADMMSettings(rho=0.05, rho_growth=1.5, update_every=2),
        attention={"pattern": {"block_size": 4, "kept_per_block": 8, "pool_size": 8}},
    )
    settings = dict(
        model=str(checkpoint), task="mrpc", data_dir=str(GLUE), output_dir=str(output_dir), max_length=64,
        train_limit=64, eval_limit=32, batch_size=16, learning_rate=1e-3, finetune_epochs=1, admm_epochs=2,
        retrain_epochs=1, calibration_batches=2, compression=compression,
    )
    settings.update(overrides)
    return TrainConfig(**settings)
