"""Each benchmark runs end to end at micro sizes and prints a markdown table (no timing asserts)."""

from __future__ import annotations

import torch

from bench import ceiling, data_path, pipeline_overhead, reference_loop

CPU = [ceiling.micro(ceiling.CPU_CASES[0])]


def _has_table(md: str, first_header: str) -> None:
    lines = md.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    assert lines[i + 1].startswith("|---|")
    assert lines[i + 2].startswith("| ")  # at least one data row


def test_ceiling_measures_cpu_and_skips_gpu_without_cuda():
    md, results = ceiling.run(CPU + ceiling.GPU_CASES, warmup=1, steps=2, repeats=1)
    _has_table(md, "case")
    assert results[0]["ceiling"] > 0 and results[0]["real"] > 0
    if not torch.cuda.is_available():
        assert md.count("skipped: no GPU") == len(ceiling.GPU_CASES)


def test_data_path():
    md = data_path.run(CPU, step_ips={CPU[0].name: 100.0}, warmup=1, steps=2)
    _has_table(md, "case")


def test_reference_loop_in_process():
    md = reference_loop.run(CPU, workers=0, warmup=1, steps=2)
    _has_table(md, "case")


def test_pil_reference_views_are_valid_images():
    ds = reference_loop.PILTwoViews(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    a, b = ds[0]
    assert a.shape == b.shape == (3, 16, 16) and 0 <= a.min() and a.max() <= 1


def test_pipeline_overhead(tmp_path):
    md = pipeline_overhead.run(sizes=(1, 2), repeats=1)
    _has_table(md, "what")
    assert "make run" in md
    row = pipeline_overhead.make_run_row(tmp_path / "make_run.txt")
    assert row[1] == "not measured here"
    (tmp_path / "make_run.txt").write_text("123 s\n")
    assert pipeline_overhead.make_run_row(tmp_path / "make_run.txt")[1] == "123 s"
