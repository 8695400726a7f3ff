"""scripts/benchmark.py: the --quick run end to end (JAX only) and the pure helpers it is built on.

Timings are not asserted (they depend on the machine); the schema, the internal consistency of the
derived numbers and the helpers' arithmetic are.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args, timeout=900):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# The quick run


# The tests that read the quick run share one worker (pytest-xdist's loadgroup, set in pyproject):
# spread over both, each worker would run the minute-long quick benchmark itself.
QUICK = pytest.mark.xdist_group("benchmark-quick")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = run_script("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads(out.read_text())


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
@QUICK
def test_quick_machine_section(quick):
    _, r = quick
    assert r["schema"] == 1 and r["errors"] == []
    m = r["machine"]
    assert m["backend"] in ("cpu", "gpu", "tpu") and m["cpu_count"] >= 1 and m["device_kind"]
    for name in ("jax", "jaxlib", "flax", "optax", "jaxopt"):
        assert m["versions"][name]
    assert len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    assert r["settings"]["compare_torch"] is False


@pytest.mark.slow
@QUICK
def test_quick_gatys_entries(quick):
    _, r = quick
    (e,) = r["gatys"]
    assert e["size"] == 32 and e["optimizer"] == "adam" and e["iterations"] == 2
    for key in ("s_per_iter", "s_per_eval", "compile_s", "final_loss", "timing_process_peak_rss_mb"):
        assert positive(e[key]), (key, e[key])
    # Counted inside the compiled program: Adam evaluates once at the init and once per iteration.
    assert e["evaluations"] == 2 + 1 and e["evals_per_iter"] == e["evaluations"] / e["iterations"]
    # The warm-up compiles everything the timed run needs.
    assert e["recompiles_in_timed_run"] == 0
    assert "torch" not in e and "ratio_s_per_iter" not in e  # no --compare-torch
    (ev,) = r["gatys_eval"]
    assert ev["jax_s"] == e["s_per_eval"] and "torch_s" not in ev
    assert r["goals"] == []


@pytest.mark.slow
@QUICK
def test_quick_adain_and_train_entries(quick):
    _, r = quick
    (a,) = r["adain"]
    assert (a["size"], a["batch"]) == (32, 1) and a["recompiles"] == 0
    assert positive(a["latency_s"]) and math.isclose(a["images_per_s"], a["batch"] / a["latency_s"])
    (t,) = r["train"]
    assert (t["crop"], t["batch"]) == (32, 2) and t["devices"] >= 1 and t["recompiles"] == 0
    assert math.isfinite(t["loss_first_step"])
    assert math.isclose(t["images_per_s_per_device"], t["batch"] / t["step_s"] / t["devices"])


@QUICK
def test_quick_video_entries(quick):
    """The video section's quick path: run_adain over a 16:9 pan, one row per batch size, compiled once."""
    _, r = quick
    p = r["settings"]
    assert [(v["height"], v["batch"]) for v in r["video"]] == [(32, b) for b in p["video_batches"]] == [(32, 1), (32, 2)]
    for v in r["video"]:
        assert v["width"] == 56 and v["frames"] == p["video_frames"] == 4
        assert v["recompiles"] == 0 and positive(v["compile_s"]) and positive(v["first_clip_s"])
        assert positive(v["s_per_frame"]) and math.isclose(v["frames_per_s"], 1 / v["s_per_frame"])
        assert "torch" not in v and "ratio_frames_per_s" not in v  # no --compare-torch


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (the torch extra)")
def test_quick_video_against_torch(tmp_path):
    """With PyTorch: its frame loop gives the frames of run_adain (same weights and frames), and a ratio."""
    out = tmp_path / "video.json"
    proc = run_script("--quick", "--compare-torch", "--only", "video", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["video"]
    assert len(rows) == 2
    for v in rows:
        # float32 through the same ~20 convolutions summed in another order; outputs are in [0, 1].
        assert v["max_abs_diff"] <= 1e-3, v
        assert math.isclose(v["ratio_frames_per_s"], v["frames_per_s"] / v["torch"]["frames_per_s"])


def test_video_frames_are_16_9_and_decode_to_their_size():
    b = load_benchmark()
    for height, width in ((32, 56), (256, 456), (512, 912), (1080, 1920)):
        assert b.video_frame_width(height) == width and width % 8 == 0
        assert abs(width / height - 16 / 9) < 8 / height


@QUICK
def test_quick_ops_agree_with_jax_default_rules(quick):
    """Each custom-VJP op gives the values of JAX's own rule (timings are only recorded)."""
    _, r = quick
    ops = {row["op"]: row for row in r["ops"]}
    assert len(ops) == 6 and any("fori_loop" in name for name in ops)
    for row in ops.values():
        assert row["shape"] == [1, 16, 16, 8]
        assert row["max_rel_diff"] <= 1e-5, row
        assert positive(row["ours_s"]) and positive(row["default_s"])
        assert math.isclose(row["ratio"], row["ours_s"] / row["default_s"])


@pytest.mark.slow
@QUICK
def test_markdown_from_quick_json(quick):
    path, r = quick
    proc = run_script("--markdown", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert r["machine"]["versions"]["jax"] in text
    assert "| 32 | adam | 2 |" in text and "AdaIN stylization" in text and "training step" in text
    assert "| max pool, gradient | 1x16x16x8 |" in text
    assert "AdaIN video" in text and "| 32 | 56x32 | 2 | 4 |" in text


# ----------------------------------------------------------------------------------------------
# Pure helpers (no JAX, fast)


def test_module_does_not_import_jax_or_torch():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('b', {str(SCRIPT)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print('jax' in sys.modules, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_fit_memory_recovers_a_line_and_the_largest_side():
    b = load_benchmark()
    fixed, per_pixel = 300 * 2**20, 9000.0  # bytes, bytes per pixel
    scan = [{"size": s, "remat": remat, "dtype": dtype, "device_peak_bytes": None,
             "peak_rss_mb": (fixed + per_pixel * s * s) / 2**20}
            for s in (128, 256, 384) for remat, dtype in ((False, "float32"), (True, "bfloat16"))]
    fits = b.fit_memory(scan, [4, 0.25])
    assert set(fits) == {"no-remat/float32", "remat/bfloat16"}
    f = fits["no-remat/float32"]
    assert math.isclose(f["bytes_fixed"], fixed, rel_tol=1e-9)
    assert math.isclose(f["bytes_per_pixel"], per_pixel, rel_tol=1e-9)
    side = f["largest_side"]["4"]
    # The largest square that fits: side^2 pixels within the budget, one more pixel row does not.
    assert fixed + per_pixel * side**2 <= 4 * 2**30 < fixed + per_pixel * (side + 1) ** 2
    assert f["largest_side"]["0.25"] is None  # the fixed part alone exceeds 256 MiB


def test_fit_memory_needs_two_sizes():
    b = load_benchmark()
    scan = [{"size": 64, "remat": False, "dtype": "float32", "device_peak_bytes": 10**9, "peak_rss_mb": 1.0}]
    assert b.fit_memory(scan, [4]) == {}


def timing_fixture():
    return {
        "size": 64, "chunk": 2, "eval": {"jax_s": 0.5, "torch_s": 1.0, "ratio": 0.5},
        "runs": [
            {"optimizer": "lbfgs", "s_per_iter": 0.5, "compile_s": 3.0, "recompiles_in_timed_run": 0,
             "final_loss": 2.0, "losses": [10.0, 5.0, 3.0, 2.0], "iterations": 3, "evals_per_iter": 1.0,
             "torch_partners": ["lbfgs"]},
            {"optimizer": "adam", "s_per_iter": 0.4, "compile_s": 2.0, "recompiles_in_timed_run": 0,
             "final_loss": 6.0, "losses": [10.0, 10.0, 8.0, 7.0], "iterations": 3, "evals_per_iter": 0.8,
             "torch_partners": ["adam"]},
        ],
        "torch": {
            "lbfgs": {"s_per_iter": 1.0, "s_per_eval": 1.0, "evals": 3, "evals_per_iter": 1.0, "final_loss": 2.5,
                      "losses": [10.0, 6.0, 4.0, 2.5]},
            "adam": {"s_per_iter": 0.8, "s_per_eval": 0.8, "evals": 3, "evals_per_iter": 1.0, "final_loss": 5.0,
                     "losses": [10.0, 9.0, 7.0, 5.0]},
        },
    }


def gatys_entries(target=None):
    b = load_benchmark()
    entries = b.assemble_gatys(timing_fixture(), {}, {})
    b.apply_targets(entries, target)
    return entries


def test_assemble_gatys_ratios_and_time_to_target():
    lbfgs, adam = gatys_entries()
    # Default target: the largest final L-BFGS loss (JAX 2.0, torch 2.5), reached by every L-BFGS run.
    assert lbfgs["target_loss"] == adam["target_loss"] == 2.5
    assert lbfgs["iters_to_target"] == 3 and lbfgs["s_to_target"] == 3 * 0.5
    assert lbfgs["torch"]["lbfgs"]["iters_to_target"] == 3 and lbfgs["torch"]["lbfgs"]["s_to_target"] == 3.0
    assert lbfgs["ratio_s_per_iter"] == 0.5 and lbfgs["ratio_final_loss"] == 2.0 / 2.5
    assert set(lbfgs["torch"]) == {"lbfgs"} and set(adam["torch"]) == {"adam"}
    assert adam["ratio_s_per_iter"] == 0.4 / 0.8 and adam["ratio_final_loss"] == 6.0 / 5.0
    assert adam["iters_to_target"] is None and adam["s_to_target"] is None  # Adam never gets to 2.5
    explicit, _ = gatys_entries(target=5.0)
    assert explicit["iters_to_target"] == 1


def test_merge_replaces_matching_entries_and_keeps_the_rest():
    b = load_benchmark()
    video = [{"height": h, "batch": n, "frames_per_s": 1.0} for h in (256, 512) for n in (1, 8)]
    base = {"machine": {"cpu": "x"}, "settings": {}, "gatys": gatys_entries(), "adain": [], "train": [],
            "chunks": [], "gatys_eval": [], "memory": {"scan": [{"size": 1}], "fit": {"a": 1}}, "errors": [],
            "video": video}
    newer = dict(base["gatys"][0], s_per_iter=0.25)
    new = {"machine": {"loadavg_start": [1, 1, 1]}, "settings": {"sizes": [64]}, "gatys": [newer], "adain": [],
           "train": [], "chunks": [], "gatys_eval": [], "memory": {"scan": [], "static": [{"size": 2}]}, "errors": [],
           "video": [{"height": 512, "batch": 8, "frames_per_s": 2.0}]}
    merged = b.merge_results(base, new)
    assert [(e["optimizer"], e["s_per_iter"]) for e in merged["gatys"]] == [("adam", 0.4), ("lbfgs", 0.25)]
    assert [(v["height"], v["batch"], v["frames_per_s"]) for v in merged["video"]] == [
        (256, 1, 1.0), (256, 8, 1.0), (512, 1, 1.0), (512, 8, 2.0)]
    assert merged["memory"] == {"scan": [{"size": 1}], "fit": {"a": 1}, "static": [{"size": 2}]}
    assert merged["merged_runs"][0]["settings"] == {"sizes": [64]}
    new["machine"].update(cpu="other cpu", cpu_count=4)
    assert b.merge_results(base, new)["merged_runs"][0]["cpu"] == "other cpu"
    assert base["gatys"][0]["s_per_iter"] == 0.5  # the base is not modified


def test_goals_follow_the_issue_thresholds():
    b = load_benchmark()
    result = {"gatys": gatys_entries(), "adain": [{"size": 256, "batch": 1, "ratio_latency": 1.2}],
              "train": [{"crop": 256, "batch": 8, "ratio_step": 0.9}],
              "video": [{"height": 256, "batch": 1, "ratio_frames_per_s": 0.9},
                        {"height": 256, "batch": 8, "ratio_frames_per_s": 1.0},
                        {"height": 512, "batch": 8}]}  # no PyTorch run: no goal
    goals = {(g["goal"], g["where"]): g["met"] for g in b.check_goals(result)}
    assert goals == {("gatys_s_per_iter", "64px lbfgs"): True,  # 0.5 <= 0.8
                     ("gatys_final_loss", "64px lbfgs"): True,  # 0.8 <= 1
                     ("adain_latency", "256px batch 1"): False,
                     ("train_step", "256px batch 8"): True,
                     # frames/s: JAX must reach PyTorch's (>= 1.0), not stay under it
                     ("video_frames_per_s", "256px frames batch 1"): False,
                     ("video_frames_per_s", "256px frames batch 8"): True}


def test_markdown_renders_torch_columns_and_goals():
    b = load_benchmark()
    result = {"machine": {"cpu": "test cpu", "cpu_count": 2, "backend": "cpu", "device_kind": "cpu",
                          "versions": {"jax": "9.9"}, "loadavg_start": [1.0, 1.0, 1.0]},
              "settings": {"widths": None},
              "gatys": gatys_entries(), "adain": [], "train": [], "memory": {},
              "video": [{"height": 256, "width": 456, "batch": 8, "frames": 24, "frames_per_s": 2.5,
                         "s_per_frame": 0.4, "compile_s": 3.0, "torch": {"frames_per_s": 2.0},
                         "ratio_frames_per_s": 1.25}]}
    result["goals"] = b.check_goals(result)
    text = b.render_markdown(result)
    assert "jax 9.9" in text and "| 64 | lbfgs | 3 |" in text and "| 64 | lbfgs | 1 | 1 | 1.00 |" in text
    assert "| gatys_s_per_iter | 64px lbfgs | 0.50 | ≤ 0.8 | yes |" in text
    assert "| 256 | 456x256 | 8 | 24 | 2.5 | 0.4 | 3.0 | 2 | 1.25 |" in text
    assert "| video_frames_per_s | 256px frames batch 8 | 1.25 | ≥ 1.0 | yes |" in text
    assert "another machine" not in text
    # A section merged from another host says so (same host: nothing to say).
    result["merged_runs"] = [{"settings": {"sections": ["video"]}, "cpu": "test cpu", "cpu_count": 2},
                             {"settings": {"sections": ["video"]}, "cpu": "other cpu", "cpu_count": 4,
                              "loadavg_start": [2.5, 2, 2]}]
    text = b.render_markdown(result)
    assert text.count("another machine") == 1
    assert "Merged later from another machine: video on other cpu, 4 cores, load average at start 2.5." in text


@pytest.mark.skipif(HAS_TORCH, reason="checks the message shown when PyTorch is missing")
def test_compare_torch_without_torch_is_a_clear_error():
    proc = run_script("--compare-torch", "--quick", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --compare-torch needs PyTorch") and proc.stderr.count("\n") == 1


def test_bad_arguments_exit_2(tmp_path):
    proc = run_script("--markdown", str(tmp_path / "missing.json"), timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot read")
    proc = run_script("--only", "gatys,bogus", timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr
    proc = run_script("--optimizers", "lbfgs,sgd", timeout=60)
    assert proc.returncode == 2 and "unknown optimizer 'sgd'" in proc.stderr
    proc = run_script("--video-frames", "0", timeout=60)
    assert proc.returncode == 2 and "--video-frames" in proc.stderr


# ----------------------------------------------------------------------------------------------
# The GPU suite, smoke-sized: the same code paths as on the GPU, so the real run cannot fail on a typo


@pytest.mark.slow
def test_gpu_suite_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run_script("--suite", "gpu", "--smoke", "--no-torch", "--out", str(out))
    r = json.loads(out.read_text())
    assert proc.returncode == 0, (r.get("errors"), r.get("skipped"), proc.stderr[-2000:])
    assert r["suite"] == "gpu" and r["smoke"] and r["errors"] == [] and r["skipped"] == []
    p = r["settings"]
    assert {(g["size"], g["dtype"], g["optimizer"]) for g in r["gatys"]} == {
        (s, d, o) for s in p["sizes"] for d in p["dtypes"] for o in p["optimizers"]}
    assert all(positive(g["s_per_iter"]) and math.isfinite(g["final_loss"]) for g in r["gatys"])
    assert [a["batch"] for a in r["adain"]] == p["adain_batches"]
    assert all(positive(a["images_per_s"]) for a in r["adain"])
    static = r["largest"]["static"]
    assert len(static) == len(p["large_static"]) * len(p["static_variants"])
    assert all(s["peak_bytes"] > s["lbfgs_state_bytes"] > 0 for s in static)
    runs = r["largest"]["runs"]
    assert [(x["height"], x["width"]) for x in runs] == [tuple(p["large"])] * 3
    assert [x["tile_size"] for x in runs] == [None, None, p["large_tile"]] and all(x["finite"] for x in runs)
    assert [t["batch"] for t in r["train"]] == p["train_batches"]
    md = out.with_suffix(".md").read_text()
    assert sum(line.startswith("|---") for line in md.splitlines()) == 5 and "failed" not in md


def test_gpu_suite_records_a_failing_job_and_goes_on(tmp_path, monkeypatch):
    bench = load_benchmark()
    calls = []

    def fake_run_job(job, log, cache_dir=None, timeout=None):
        calls.append(job["kind"])
        return {"error": "boom", "job": job} if job["kind"] == "gatys" else {"rows": []}

    monkeypatch.setattr(bench, "run_job", fake_run_job)
    args = bench.parser().parse_args(["--suite", "gpu", "--smoke", "--no-torch", "--out", str(tmp_path / "g.json")])
    args.cache_dir = None
    result = bench.run_gpu_suite(args, {"backend": "cpu"}, lambda msg: None)
    saved = json.loads((tmp_path / "g.json").read_text())
    assert [e["error"] for e in saved["errors"]] == ["boom", "boom"]  # the two gatys jobs, saved
    # Every later section still ran: adain, the memory plan, three large runs, each train batch.
    assert calls.count("adain") == 1 and calls.count("memory-static") == 1 and calls.count("gatys-large") == 3
    assert calls.count("train") == len(bench.gpu_plan(True)["train_batches"])
