"""The results writer: the Markdown table and the accuracy-vs-speed plot."""

import json

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt

from icot_hf.results import markdown_table, write_results

RESULTS = {
    "task": "4x4_mult",
    "evaluations": {
        "../data/4_by_4_mult/test_bigbench.txt": {
            "no_cot": {"accuracy": 0.0, "num_examples": 10, "throughput": {"1": 7.3, "64": 235.2}},
            "explicit_cot": {"accuracy": 1.0, "num_examples": 10, "throughput": {"1": 1.2, "64": 34.2}},
            "implicit_cot": {"accuracy": 0.0, "num_examples": 10, "throughput": {"1": 6.1, "64": 141.8}},
        }
    },
}


def test_table_has_speedup_against_the_teacher():
    table = markdown_table(RESULTS)
    assert "| Implicit CoT (ICoT-KD) | 0.0% (10) | 6.1 | 141.8 | 5.08x |" in table
    assert "| Explicit CoT (teacher) | 100.0% (10) | 1.2 | 34.2 | 1.00x |" in table


def test_plot_names_every_method_once_in_a_legend(tmp_path, monkeypatch):
    # Two methods at the same accuracy and similar speed: named in a legend, never as overlapping text.
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    paths = write_results(RESULTS, tmp_path)
    monkeypatch.undo()
    (figure,) = figures
    plt.close(figure)  # the artists stay readable after closing; only pyplot's registry lets go
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["No CoT", "Explicit CoT (teacher)", "Implicit CoT (ICoT-KD)"]
    assert not axes.texts
    assert axes.get_title() == "4_by_4_mult/test_bigbench.txt"
    assert json.loads(paths["json"].read_text()) == RESULTS
    assert paths["plot"].stat().st_size > 1000


def test_stage_times_with_two_lanes_overlap_icot_si_with_the_other_lane():
    times = {"teacher": 600, "stepwise": 3000, "no_cot": 1200, "mind_reading": 600, "emulator": 600, "coupled": 1200, "evaluate": 120}
    one_lane = markdown_table(dict(RESULTS, stage_wall_seconds=times))
    assert "| sum of the stages | 122.0 |" in one_lane and "two lanes" not in one_lane
    two_lanes = markdown_table(dict(RESULTS, stage_wall_seconds=times, stage_lanes=2))
    # teacher + evaluate + the longer lane (no-CoT and ICoT-KD: 3,600 s against ICoT-SI's 3,000)
    assert "| wall time, two lanes side by side | 72.0 |" in two_lanes
    shorter_kd = dict(times, coupled=100)
    assert "| wall time, two lanes side by side | 62.0 |" in markdown_table(dict(RESULTS, stage_wall_seconds=shorter_kd, stage_lanes=2))
