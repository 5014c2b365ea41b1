"""`jaxrnn bench`'s suite logic without timing anything: a row that fails is recorded and the others run;
the rows record their dtype and precision. (The suite itself runs in the slow set: test_readme.py.)"""

from __future__ import annotations

import argparse

import pytest

from jaxrnn import bench, bench_impls


def test_a_failing_row_is_recorded_and_the_suite_goes_on(monkeypatch) -> None:
    def one_row(case, impl, cfg, corpus, batch, reps, training):
        if impl == "jaxrnn-pallas":
            raise RuntimeError("Triton refused\nsecond line")
        return bench_impls.row(case, impl, 1.0, 0.5, 1000.0 if impl == "torch" else 2000.0, cell=cfg.cell)

    monkeypatch.setattr(bench, "_one_row", one_row)
    args = argparse.Namespace(cases=["seed-train"], impls=["jaxrnn-scratch", "jaxrnn-pallas", "torch"], cells=["lstm"],
                              data=None, quick=True, precision="default", dtype="bfloat16")
    monkeypatch.setattr(bench_impls, "torch_available", lambda: True)
    rows = bench.run_suite(args)
    assert [r["impl"] for r in rows] == ["jaxrnn-scratch", "jaxrnn-pallas", "torch"]
    assert rows[1]["error"].startswith("RuntimeError: Triton refused") and rows[1]["tokens_per_s"] is None
    assert all(r["dtype"] == "bfloat16" and r["precision"] == "default" for r in rows)
    lines = bench.table(rows).splitlines()
    assert lines[2].split()[-1] == "2.00"  # jaxrnn-scratch at twice torch's tokens/s
    assert "failed: RuntimeError: Triton refused" in lines[3]


def test_the_loop_and_the_parallel_form_are_rows_of_the_cells_that_have_both(tiny_cfg, tiny_corpus,
                                                                            monkeypatch) -> None:
    """`jaxrnn-scan` and `jaxrnn-sequence` train the scratch model with its loop forced to each form, for the
    cells with a whole-sequence form only; both train the same model (the same val perplexity, to float
    rounding), so their tokens/s compare the forms alone."""
    real = bench._one_row

    def tiny(case, impl, cfg, corpus, batch, reps, training):  # the suite's rows, each on a tiny config
        return real(case, impl, tiny_cfg(cell=cfg.cell, epochs=2, optimizer="adam", lr=0.02), tiny_corpus, batch,
                    reps, training)

    monkeypatch.setattr(bench, "_one_row", tiny)
    args = argparse.Namespace(cases=["seed-train"], impls=["jaxrnn-scan", "jaxrnn-sequence"],
                              cells=["minlstm", "slstm"], data=None, quick=True, precision="highest", dtype="float32")
    rows = bench.run_suite(args)
    assert [(r["cell"], r["impl"]) for r in rows] == [("minlstm", "jaxrnn-scan"), ("minlstm", "jaxrnn-sequence")]
    assert rows[0]["val_ppl"] == pytest.approx(rows[1]["val_ppl"], rel=1e-5) and rows[0]["tokens_per_s"] > 0
