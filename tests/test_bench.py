"""`jaxrnn bench`'s suite logic without timing anything: a row that fails is recorded and the others run;
the rows record their dtype and precision. (The suite itself runs in the slow set: test_readme.py.)"""

from __future__ import annotations

import argparse

from jaxrnn import bench


def test_a_failing_row_is_recorded_and_the_suite_goes_on(monkeypatch) -> None:
    def one_row(case, impl, cfg, corpus, batch, reps, training):
        if impl == "jaxrnn-pallas":
            raise RuntimeError("Triton refused\nsecond line")
        return bench.row(case, impl, 1.0, 0.5, 1000.0 if impl == "torch" else 2000.0, cell=cfg.cell)

    monkeypatch.setattr(bench, "_one_row", one_row)
    args = argparse.Namespace(cases=["seed-train"], impls=["jaxrnn-scratch", "jaxrnn-pallas", "torch"], cells=["lstm"],
                              data=None, quick=True, precision="default", dtype="bfloat16")
    monkeypatch.setattr(bench, "torch_available", lambda: True)
    rows = bench.run_suite(args)
    assert [r["impl"] for r in rows] == ["jaxrnn-scratch", "jaxrnn-pallas", "torch"]
    assert rows[1]["error"].startswith("RuntimeError: Triton refused") and rows[1]["tokens_per_s"] is None
    assert all(r["dtype"] == "bfloat16" and r["precision"] == "default" for r in rows)
    lines = bench.table(rows).splitlines()
    assert lines[2].split()[-1] == "2.00"  # jaxrnn-scratch at twice torch's tokens/s
    assert "failed: RuntimeError: Triton refused" in lines[3]
