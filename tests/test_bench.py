import math

from m3.bench import DEFAULT_SCALES, BenchResult, format_report, run_benchmark


def test_benchmark_one_repeat_tiny_designs_agree():
    result = run_benchmark(config_name="tiny", family="llava", batch_size=2, repeats=1, warmup=0)

    assert isinstance(result, BenchResult)
    assert set(result.times) == {"ours", "official"}
    for design in ("ours", "official"):
        assert len(result.times[design]) == 1 and result.times[design][0] > 0
        assert result.iqr(design) == 0.0
    assert math.isfinite(result.ratio) and result.ratio > 0
    assert result.setup["scales"] == list(DEFAULT_SCALES) and result.setup["repeats"] == 1

    agreement = result.agreement
    assert set(agreement.per_scale_ours) == set(agreement.per_scale_official) == set(DEFAULT_SCALES)
    assert math.isfinite(agreement.loss_ours) and agreement.loss_ours > 0
    assert abs(agreement.loss_ours - agreement.loss_official) < 1e-5
    for scale in DEFAULT_SCALES:
        assert abs(agreement.per_scale_ours[scale] - agreement.per_scale_official[scale]) < 1e-5
    # the training loss is the plain mean of the per-scale losses
    assert abs(agreement.loss_ours - sum(agreement.per_scale_ours.values()) / len(DEFAULT_SCALES)) < 1e-5
    assert agreement.same_grad_params and agreement.num_grads > 0 and agreement.max_grad_diff < 1e-4

    assert "ratio official / ours" in format_report(result)
