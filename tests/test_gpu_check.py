"""scripts/gpu_check.py runs on a machine without CUDA: its CUDA-only checks say SKIP, the rest pass."""
import json

from conftest import run_script


def test_gpu_check_on_cpu_skips_cuda_and_passes_the_rest(tiny, tmp_path):
    out = tmp_path / "check"
    proc = run_script(["scripts/gpu_check.py", "--parts=evaltime,speed", f"--init_from={tiny['sft']}",
                       f"--data={tiny['data']}", f"--out_dir={out}"])
    rows = json.load(open(out / "results.json"))
    assert {r["status"] for r in rows} == {"SKIP"} and len(rows) == 4
    assert "SFT evaluation of 200 questions, fresh process" in proc.stdout
    assert rows[0]["accuracy"] >= 0 and rows[0]["seconds"] > 0              # it really evaluated
    assert "gpu_check: 0 passed, 0 failed, 4 skipped" in proc.stdout
