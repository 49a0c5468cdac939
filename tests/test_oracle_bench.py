from oracle_data.bench import DESIGNS, format_report, run_oracle_benchmark


def test_oracle_benchmark_smoke(tmp_path):
    result = run_oracle_benchmark(
        num_images=1, hidden_size=32, batch_size=4, max_new_tokens=2, repeats=1, work_dir=tmp_path
    )
    assert set(result.times) == set(DESIGNS) and all(len(times) == 1 for times in result.times.values())
    assert result.setup["samples"] == 4 and result.total_answers == 4 * 5
    assert result.agreeing_answers == 4  # the oracle's full-scale answers are the plain pass's
    report = format_report(result)
    assert "oracle / plain" in report and "naive / oracle" in report and "ended with EOS" in report
    assert list(tmp_path.iterdir()) == []  # the temporary data, model and oracle folders are removed
