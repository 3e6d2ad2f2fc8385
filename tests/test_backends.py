"""CPU vs GPU: `scripts/benchmark.py --backends` as a user runs it (one process per backend JAX sees; here
the CPU only, which it must say), and the study report's "CPU vs GPU" section over a real study whose runs
are given a second backend by editing their summary.json and metrics.jsonl (no GPU here to train on)."""

import importlib.util
import json
import re
import statistics

import numpy as np
import pytest

from jaxcnn.benchmark import LOADED_CORES, LOOPS, PROJECTED_EPOCHS, unavailable_line
from jaxcnn.report.markdown import duration
from jaxcnn.report.run import read_history, read_summary, write_history
from jaxcnn.study import runner
from scripts.torch_reference import TORCH_METHOD
from tests.helpers import ROOT, cli, one_error_line

TINY = "configs/lenet.py:3,data.max_train=200,data.max_test=100"


def test_backends_measures_every_backend_jax_sees_and_says_which_it_does_not(tmp_path):
    out = tmp_path / "backends.json"
    proc = cli("benchmark.py", "--config", TINY, "--epochs", "2", "--backends=all", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    backends = list(data["backends"])
    assert backends[0] == "cpu" and data["reference"] == "cpu" and data["projected_epochs"] == PROJECTED_EPOCHS == 100
    assert data["unavailable"] or len(backends) > 1  # this machine has no GPU: the line below must be there
    if data["unavailable"]:  # e.g. "no GPU/TPU visible to JAX (jax.devices('gpu') failed: ...); measured the CPU only"
        line = unavailable_line(data["unavailable"], backends)
        assert line in proc.stdout.splitlines() and line.startswith("no ")
        assert all(f"jax.devices('{b}') failed: " in line for b in data["unavailable"])
        if backends == ["cpu"]:
            assert line.endswith("; measured the CPU only")
    torch = importlib.util.find_spec("torch") is not None  # then the study's PyTorch loop runs beside jaxcnn
    assert [row["method"] for row in data["methods"]] == [*LOOPS, *([TORCH_METHOD] if torch else [])]
    table = proc.stdout.split("Across backends: ", 1)[1]
    for row in data["methods"]:
        for b in backends:
            report = data["backends"][b]
            assert report["backend"] == b  # its child process really computed there
            result = next(r for r in report["results"] if r["method"] == row["method"])
            assert len(result["epoch_times_s"]) == 2
            # the median of the samples not taken under load (all of them if every one was: Result.kept_times_s)
            loaded = [c is not None and c > LOADED_CORES for c in result["other_cores"]]
            kept = [t for t, bad in zip(result["epoch_times_s"], loaded) if not bad] or result["epoch_times_s"]
            t = statistics.median(kept)
            assert row["epoch_time_s"][b] == pytest.approx(t, rel=1e-12) and t > 0
            assert row["projected_s"][b] == pytest.approx(PROJECTED_EPOCHS * t, rel=1e-12)
        assert row["speedup"] == pytest.approx({b: row["epoch_time_s"]["cpu"] / row["epoch_time_s"][b]
                                                for b in backends[1:]})
        name = f"jax {row['method']}" if row["method"] in LOOPS else row["method"]
        printed = next(line for line in table.splitlines() if line.startswith(name + " "))
        for b in backends:
            assert f"{row['epoch_time_s'][b]:.3f} s" in printed and duration(row["projected_s"][b]) in printed
    # each backend's own table came before the comparison
    assert proc.stdout.index("== cpu (JAX_PLATFORMS=cpu) ==") < proc.stdout.index("Across backends: ")


@pytest.mark.parametrize("args, expected", [
    (["--backends=cuda2"], "--backends=cuda2: unknown backend 'cuda2'; valid: all, cpu, gpu, tpu"),
    (["--backends=cpu,gpus"], "--backends=cpu,gpus: unknown backend 'gpus'; valid: all, cpu, gpu, tpu"),
    (["--backends=cpu", "--devices=1,2"], "--backends and --devices measure different things"),
])
def test_bad_backends_are_one_line(args, expected):
    assert expected in one_error_line(cli("benchmark.py", "--config", TINY, *args))


LENET = str(ROOT / "configs" / "lenet.py")
SMALL = "data.max_train=200,data.max_test=100,epochs=2"
GPU = "NVIDIA H100 80GB HBM3"
ON_GPU = {("3", 1): 8.0, ("2", 0): 5.0, ("2", 1): 10.0}  # (variant, seed) -> how many times faster "on the GPU"


def _study(workdir):
    return runner.run_study(LENET, workdir, seeds=2, variants=["3", "2"], overrides=SMALL, group="no",
                            progress=False, log=lambda *_: None)


def _section(md: str) -> str:
    return md.split("## CPU vs GPU\n", 1)[1].split("\n## ", 1)[0]


def test_study_report_compares_backends_from_the_run_folders(tmp_path):
    _study(tmp_path)
    assert "## CPU vs GPU" not in (tmp_path / "report.md").read_text()  # all runs on this CPU: no section

    # What a GPU would have left: the run's backend, device and faster epochs (summary.json and metrics.jsonl).
    for (variant, seed), factor in ON_GPU.items():
        run = tmp_path / variant / f"seed_{seed}"
        history = [dict(h, epoch_time_s=h["epoch_time_s"] / factor) for h in read_history(run)]
        write_history(run, history)
        summary = dict(read_summary(run), backend="gpu", device=GPU, group_size=2,
                       mean_epoch_time_s=float(np.mean([h["epoch_time_s"] for h in history])),
                       total_train_time_s=float(np.sum([h["epoch_time_s"] for h in history])))
        (run / "summary.json").write_text(json.dumps(summary))
    assert _study(tmp_path)["trained"] == 0  # finished runs are skipped; the report is written again
    section = _section((tmp_path / "report.md").read_text())
    rows = {(cells[0], cells[1]): cells for line in section.splitlines() if line.startswith("| ")
            for cells in [line.strip("| ").split(" | ")]}
    assert list(rows)[1:] == [("3", "cpu"), ("3", "gpu"), ("2", "gpu")]  # after the header

    def epoch_time(variant, seeds):  # from the run folders' metrics.jsonl, checked against their summary.json
        per_run = []
        for seed in seeds:
            run = tmp_path / variant / f"seed_{seed}"
            per_run.append(float(np.mean([h["epoch_time_s"] for h in read_history(run)])))
            assert read_summary(run)["mean_epoch_time_s"] == pytest.approx(per_run[-1], rel=1e-12)
        return float(np.mean(per_run))

    cpu_3, gpu_3, gpu_2 = epoch_time("3", [0]), epoch_time("3", [1]), epoch_time("2", [0, 1])
    machine = read_summary(tmp_path / "3" / "seed_0")["machine"]
    assert rows["3", "cpu"] == ["3", "cpu", machine, "0", f"{cpu_3:.3f} s", duration(100 * cpu_3), "1", "1.00×"]
    assert rows["3", "gpu"] == ["3", "gpu", GPU, "1", f"{gpu_3:.3f} s", duration(100 * gpu_3), "2",
                                f"{cpu_3 / gpu_3:.2f}×"]
    assert rows["2", "gpu"] == ["2", "gpu", GPU, "0, 1", f"{gpu_2:.3f} s", duration(100 * gpu_2), "2", "–"]
    assert re.search(r"trained on 2 backends \(cpu, gpu;", section)


def test_comparison_of_two_backends_gives_each_method_its_speed_up():
    """The arithmetic and table with a second backend (no GPU here to measure one): the reports as the
    child processes write them, read back as `--backends` reads them."""
    from jaxcnn.benchmark import Report, Result, compare_backends, format_backends

    def report(backend, kind, times):
        results = tuple(Result(m, 4000, t, (1.0,) * len(t), None if m == TORCH_METHOD else 1.5)
                        for m, t in times.items())
        written = json.dumps(Report("setup", "machine", backend, kind, results, None).to_json())
        return Report.from_json(json.loads(written))

    cpu = report("cpu", "cpu", {"python": (0.5, 0.4, 0.6), "scan": (2.0, 2.2, 2.1), TORCH_METHOD: (1.0, 1.1, 1.2)})
    gpu = report("gpu", GPU, {"python": (0.05, 0.04, 0.06), "scan": (0.01, 0.012, 0.011)})
    data = compare_backends({"gpu": gpu, "cpu": cpu}, {"tpu": "no libtpu"})
    assert data["reference"] == "cpu" and list(data["backends"]) == ["gpu", "cpu"]
    rows = {r["method"]: r for r in data["methods"]}
    assert rows["python"]["speedup"] == {"gpu": pytest.approx(0.5 / 0.05)}
    assert rows["scan"]["speedup"] == {"gpu": pytest.approx(2.1 / 0.011)}
    assert rows["scan"]["projected_s"] == {"gpu": pytest.approx(1.1), "cpu": pytest.approx(210.0)}
    assert rows[TORCH_METHOD]["speedup"] == {} and list(rows[TORCH_METHOD]["epoch_time_s"]) == ["cpu"]
    text = format_backends(data)
    assert "no TPU visible to JAX (jax.devices('tpu') failed: no libtpu); measured the GPU and CPU only" in text
    assert f"gpu: {GPU}; machine" in text and "gpu vs cpu" in text
    assert re.search(r"^jax scan +0\.011 s +1\.1 s +2\.100 s +210 s \(3\.5 min\) +190\.91x$", text, re.M)
    assert re.search(r"^pytorch eager +- +- +1\.100 s +110\.0 s +-$", text, re.M)
