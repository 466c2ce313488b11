"""benchmarks/compare.py: which results share a table, and how an eval_variants result joins its run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train_eval(task, policy, dataset, budget, date, run_dir, success, step=1000, protocol="ours"):
    final = {"checkpoint": f"{run_dir}/checkpoints/latest.pt", "n_episodes": 100, "train_step": step,
             "train_minutes": budget, "mean_max_reward": success, "mean_max_coverage": None,
             "success_rate": success, "success_rate_ci95": [success - 0.1, success + 0.05]}
    return {"benchmark": "train_eval", "command": "python benchmarks/train_eval.py ...", "commit": "abc", "date": date,
            "protocol": protocol, "task": task, "policy": policy, "scheduler": "receding_horizon",
            "machine": "test", "dataset": dataset, "budget_minutes": budget, "run_dir": run_dir,
            "final": final, "best": final, "params_M": 1.0, "latency_ms": 10.0, "latency_threads": 1}


def variants(run_dir, step, success):
    return {"benchmark": "eval_variants", "command": "python benchmarks/eval_variants.py ...", "commit": "abc",
            "machine": "test", "checkpoint": f"{run_dir}/checkpoints/latest.pt",
            "rows": [{"variant": "TE", "scheduler": "temporal_ensembling", "n_episodes": 100, "train_step": step,
                      "mean_max_reward": success, "success_rate": success,
                      "success_rate_ci95": [success - 0.1, success + 0.01]}]}


def run_compare(tmp_path, results: dict) -> dict:
    names = []
    for name, r in results.items():
        (tmp_path / name).write_text(json.dumps(r))
        names.append(str(tmp_path / name))
    out = tmp_path / "compare.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), *names, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


def test_rows_share_a_table_only_on_one_task_dataset_and_budget(tmp_path):
    r = run_compare(tmp_path, {
        "lift-dp.json": train_eval("sim_lift", "diffusion", "runs/v3.zarr", 90, "2026-12-01 22:53", "runs/dp", 0.76),
        "lift-act.json": train_eval("sim_lift", "act", "runs/v3.zarr", 30, "2026-12-02 00:24", "runs/act", 0.95),
        "lift-act-old.json": train_eval("sim_lift", "act", "runs/v2.zarr", 30, "2026-12-01 19:45", "runs/act2", 0.6),
        "lift-dp-90b.json": train_eval("sim_lift", "act", "runs/v3.zarr", 90, "2026-12-02 01:00", "runs/act3", 0.9),
    })
    groups = {(t["dataset"], t["budget_minutes"]): sorted(x["file"] for x in t["rows"]) for t in r["tables"]}
    assert groups == {("runs/v3.zarr", 90): ["lift-dp-90b.json", "lift-dp.json"],
                      ("runs/v3.zarr", 30): ["lift-act.json"], ("runs/v2.zarr", 30): ["lift-act-old.json"]}


def test_a_variant_joins_the_run_that_wrote_its_checkpoint_and_keeps_its_own_scheduler(tmp_path):
    r = run_compare(tmp_path, {
        "dp.json": train_eval("sim_lift", "diffusion", "runs/v3.zarr", 90, "2026-12-01", "runs/dp", 0.76, step=8335),
        "dp-te.json": variants("runs/dp", 8335, 0.99),
        "act-te.json": variants("runs/act", 1241, 0.82),  # its run is not selected
        "dp-old-te.json": variants("runs/dp", 5000, 0.5),  # an earlier checkpoint of the same run
    })
    (table,) = r["tables"]
    rows = {(x["scheduler"], x["success"]) for x in table["rows"]}
    assert rows == {("receding_horizon", 0.76), ("temporal_ensembling", 0.99)}
    te = next(x for x in table["rows"] if x["scheduler"] == "temporal_ensembling")
    assert (te["budget_minutes"], te["policy"], te["steps"]) == (90, "diffusion", 8335)
    assert any(w.startswith("act-te.json") for w in r["left_out"])
    assert any(w.startswith("dp-old-te.json") and "5000" in w for w in r["left_out"])


def test_newest_result_per_task_policy_protocol_supersedes_the_rest():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import compare

    old = train_eval("sim_lift", "act", "runs/v2.zarr", 30, "2026-12-01 19:45", "runs/a", 0.6)
    new = train_eval("sim_lift", "act", "runs/v3.zarr", 30, "2026-12-02 00:24", "runs/b", 0.95)
    paper = train_eval("sim_lift", "act", "runs/v2.zarr", 30, "2026-11-30 10:00", "runs/c", 0.5, protocol="paper")
    kept, superseded = compare.newest([(Path("new.json"), new), (Path("old.json"), old), (Path("paper.json"), paper)])
    assert sorted(p.name for p, _ in kept) == ["new.json", "paper.json"]
    assert len(superseded) == 1 and superseded[0].startswith("old.json: superseded by new.json")
