import runpy
import sys
from pathlib import Path

from m3.data.granularity import VOCABULARY, write_split
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from oracle_data import build_oracle
from predictor import LGBMScalePredictor, MLPScalePredictor
from predictor.bench import bench_router, format_bench

REPO = Path(__file__).resolve().parents[1]


def test_bench_router_times_routing_against_generate(tmp_path, capsys):
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    model.save_pretrained(tmp_path / "model")
    M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(tmp_path / "model")
    split = write_split(tmp_path / "data", "test", num_images=3, seed=0)
    oracle = tmp_path / "oracle"
    build_oracle(tmp_path / "model", split, oracle, max_new_tokens=2, progress=False)
    mlp = MLPScalePredictor(max_epochs=2, validation_fraction=0).fit(oracle)
    mlp.save_pretrained(tmp_path / "mlp")
    lgbm = LGBMScalePredictor(n_estimators=3, min_child_samples=2, validation_fraction=0).fit(oracle)

    result = bench_router(tmp_path / "model", oracle, {"mlp": tmp_path / "mlp", "lgbm": lgbm}, 3, 1, False)
    assert len(result.times["generate"]) == 3 and result.median("generate") > 0
    assert result.setup["uses_image"] == {"mlp": False, "lgbm": True}
    assert 0 < result.ratio("lgbm") < 1 and result.routing_seconds("lgbm") > result.median("lgbm forward")
    assert len(result.times["lgbm routing, own loop"]) == 3 and 0 < result.ratio("mlp", own_loop=True) < 1
    text = format_bench(result)
    assert "| one generate at scale 576" in text and "/ generate (own loop)" in text

    sys_argv = sys.argv
    sys.argv = ["bench_router.py", "--model", str(tmp_path / "model"), "--oracle", str(oracle), "--predictor",
                str(tmp_path / "mlp"), "--num-queries", "2", "--repeats", "1", "--no-progress"]  # fmt: skip
    try:
        runpy.run_path(str(REPO / "scripts" / "bench_router.py"), run_name="__main__")
    finally:
        sys.argv = sys_argv
    assert "| mlp (MLPScalePredictor(target='correct'), no image features)" in capsys.readouterr().out
