"""The command line and the demo: outputs, exit codes, argument errors, lazy imports, logging, README agreement."""

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmdguidance import cli
from mmdguidance.cli import build_parser, main
from mmdguidance.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    """The demo exactly as `mmdguidance demo` / the README run it (defaults: n=500, N=50, 100 steps, seed 0)."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out)


def _sane(summary):
    assert math.isfinite(summary["exact_mmd2_to_target"]) and summary["exact_mmd2_to_target"] >= 0
    assert 0 <= summary["frac_within_3sigma_of_target_mode"] <= 1
    assert len(summary["mode_weights"]) == 8 and 0 <= sum(summary["mode_weights"]) <= 1 + 1e-3  # weights rounded to 4 decimals


@pytest.mark.slow  # the full-size demo: ~3 s on an idle machine
def test_demo_writes_figure_and_table_and_meets_criteria(default_demo):
    out, m = default_demo
    for f in ("demo.png", "demo_metrics.json", "demo_metrics.md"):
        assert (out / f).stat().st_size > 0
    saved = json.loads((out / "demo_metrics.json").read_text())
    assert saved["guided"]["exact_mmd2_to_target"] == pytest.approx(m["guided"]["exact_mmd2_to_target"])
    for name in ("references", "unguided", "guided"):
        _sane(m[name])
    assert m["guided_better"] and m["mmd2_reduction_factor"] >= 5.0
    assert m["guided"]["frac_within_3sigma_of_target_mode"] >= 0.95
    # within-mode spread close to the unguided sampler's (no collapse)
    assert m["guided"]["min_within_mode_variance_ratio"] > 0.5 * m["unguided"]["min_within_mode_variance_ratio"]
    assert "| guided |" in (out / "demo_metrics.md").read_text()
    # diagnostics: one value per guided step for both runs; guidance lowers the guidance-kernel estimate
    c = m["guidance_kernel_mmd2_on_xt"]
    assert len(c["step"]) == len(c["guided"]) == len(c["unguided"]) >= 10
    assert c["guided"][-1] < 0.1 * c["unguided"][-1]


@pytest.mark.slow  # the full-size demo: ~3 s on an idle machine
def test_readme_demo_table_is_the_demo_output(default_demo):
    """The README's demo table quotes `mmdguidance demo` with its defaults (3 significant digits)."""
    _, m = default_demo
    readme = (ROOT / "README.md").read_text()
    for label, key in (("references", "references"), ("unguided", "unguided"), ("MMD-guided", "guided")):
        row = re.search(rf"^\| {label} \|(.*)\|$", readme, flags=re.M)
        assert row, f"README demo table has no row {label!r}"
        cells = [c.strip() for c in row.group(1).split("|")]
        s = m[key]
        assert float(cells[0]) == pytest.approx(s["exact_mmd2_to_target"], rel=5e-3)
        assert float(cells[1]) == pytest.approx(s["exact_mmd2_to_target_mode_scale"], rel=5e-3)
        assert cells[2] == f"{100 * s['frac_within_3sigma_of_target_mode']:.1f}%"
        assert [float(w) for w in cells[3].split()] == pytest.approx(s["mode_weights"], abs=0.0051)


def test_unguided_diagnostics_curve_matches_the_samplers_own_estimate(tmp_path):
    """At a negligible scale the guided trajectory is the unguided one, so the sampler's recorded estimate
    (guidance.py, on its own x_t) and the demo's recomputation (MMD.score on the unguided trajectory)
    must agree step by step: checks both the estimator and the step alignment."""
    m = run_demo(tmp_path, n=80, num_steps=12, scale=1e-12, make_plot=False)
    c = m["guidance_kernel_mmd2_on_xt"]
    assert len(c["step"]) >= 5
    assert c["guided"] == pytest.approx(c["unguided"], rel=1e-6)


@pytest.mark.parametrize("bad", [{"n": 0}, {"n_refs": 1}, {"num_steps": 0}, {"scale": -1.0}, {"scale": float("nan")},
                                 {"seed": -1}, {"n": 2.5}])
def test_run_demo_rejects_bad_arguments_naming_them(tmp_path, bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        run_demo(tmp_path / "never", make_plot=False, **bad)
    assert not (tmp_path / "never").exists()


def test_demo_is_reproducible(tmp_path):
    a = run_demo(tmp_path / "a", n=100, seed=3, make_plot=False)
    b = run_demo(tmp_path / "b", n=100, seed=3, make_plot=False)
    assert a["guided"] == b["guided"] and a["unguided"] == b["unguided"]


def test_cli_demo_exits_0_and_writes_sane_outputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "120", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "| guided |" in out and "exact MMD² to the target" in out
    for f in ("demo.png", "demo_metrics.json", "demo_metrics.md"):
        assert (tmp_path / f).stat().st_size > 0
    m = json.loads((tmp_path / "demo_metrics.json").read_text())
    assert m["setup"]["n_samples"] == 120 and len(m["guidance_kernel_mmd2_on_xt"]["step"]) > 0
    for name in ("references", "unguided", "guided"):
        _sane(m[name])
    assert m["guided_better"] == (m["guided"]["exact_mmd2_to_target"] < m["unguided"]["exact_mmd2_to_target"])


@pytest.mark.parametrize("scale", ["0", "1e6"])
def test_valid_run_exits_0_whatever_the_comparison(tmp_path, capsys, scale):
    assert main(["demo", "--out", str(tmp_path), "--n", "60", "--steps", "8", "--scale", scale, "--refs", "10"]) == 0
    m = json.loads((tmp_path / "demo_metrics.json").read_text())
    u, g = m["unguided"]["exact_mmd2_to_target"], m["guided"]["exact_mmd2_to_target"]
    if scale == "0":
        assert g == u and m["guided_better"] is False  # scale 0 is the unguided sampler
    verdict = "guidance reduced" if g < u else "guidance did NOT reduce"
    assert m["guided_better"] == (g < u) and f"{verdict} the exact MMD² to the target" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad", [["--n", "-5"], ["--n", "0"], ["--refs", "0"], ["--refs", "1"], ["--scale", "-1"], ["--scale", "nan"],
            ["--steps", "0"], ["--n", "abc"], ["--seed", "-1"]]
)
def test_bad_demo_arguments_are_argparse_errors(tmp_path, capsys, bad):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), *bad])
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert not out.exists()  # failed before any work


def _no_work(*a, **k):
    raise AssertionError("the command ran although its --out is unusable")


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_unusable_out_fails_before_any_work(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(cli, "_run_demo", _no_work)
    monkeypatch.setattr(cli, "_run_generate", _no_work)
    afile = tmp_path / "a_file"
    afile.write_text("x")
    args = ["--out", str(afile / "sub")]
    if command == "generate":
        args += ["--pipeline", str(tmp_path), "--refs", str(tmp_path), "--prompt", "p"]
    assert main([command, *args]) == 2  # an argument error, returned (the process exits 2)
    assert "output folder" in capsys.readouterr().err


def test_generate_without_diffusers_prints_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    args = ["generate", "--pipeline", str(tmp_path), "--refs", str(tmp_path), "--prompt", "p", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "pip install 'mmdguidance[diffusers]'" in capsys.readouterr().err


HELP_ARGS = [["--help"], ["demo", "--help"], ["figures", "--help"], ["experiment", "--help"], ["generate", "--help"],
             ["demo", "--n", "0"], ["experiment", "no_such_experiment"]]


@pytest.mark.parametrize("args", HELP_ARGS, ids=lambda a: " ".join(a))
def test_help_and_argument_errors_do_not_import_torch(args):
    code = (
        "import sys\nfrom mmdguidance.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'CODE', code)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] CODE" in r.stdout, r.stdout + r.stderr
    assert r.stdout.strip().endswith("CODE 0" if "--help" in args else "CODE 2")


def test_python_dash_m_mmdguidance_works():
    from mmdguidance import __version__

    r = subprocess.run([sys.executable, "-m", "mmdguidance", "--version"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"mmdguidance {__version__}"


def test_version_is_the_packages_single_source():
    import tomllib

    import mmdguidance

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", mmdguidance.__version__)
    assert not any(re.fullmatch(r"torch==.*", d) for d in project["dependencies"])  # a range; tasks.py pins


def test_cli_configures_only_the_package_logger(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_run_demo", lambda args: 0)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    for _ in range(2):
        assert main(["demo", "--out", str(tmp_path)]) == 0
    assert (root.level, list(root.handlers)) == before
    pkg = logging.getLogger("mmdguidance")
    assert sum(getattr(h, "_mmdguidance_cli", False) for h in pkg.handlers) == 1
    assert pkg.level == logging.INFO


def test_experiment_names_are_the_registry_and_unknown_names_fail(capsys):
    import experiments

    assert cli.experiment_names() == experiments.EXPERIMENTS
    for args in (["experiment", "no_such_experiment"], ["figures", "no_such_experiment"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        assert experiments.EXPERIMENTS[0] in capsys.readouterr().err


def test_every_option_has_help_text():
    """Every option defined in cli.py (`generate`'s own options live in adapters/generate_cli.py)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in [("mmdguidance", parser), *((c, commands[c]) for c in ("demo", "figures", "experiment"))]:
        for action in sub._actions:
            assert action.help, f"{name}: option {action.option_strings or action.dest} has no help text"


def test_parser_rejects_unknown_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train"])


def _tasks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tasks_pins_cpu_torch_and_installs_per_job(capsys):
    tasks = _tasks()
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", tasks.TORCH)
    assert tasks.EXTRAS["demo"] == () and tasks.EXTRAS["figures"] == ()  # core only
    assert {"dev", "diffusers"} <= tasks._covered(tasks.EXTRAS["test"])
    assert tasks._covered(()) == set() and not tasks._covered(("diffusers",)) >= {"dev"}
    assert tasks.main(["--help"]) == 0 and tasks.main(["no_such_job"]) == 2  # neither installs anything
    assert "python3 tasks.py demo" in capsys.readouterr().out


def test_benchmarks_runner_help_lists_the_benchmarks():
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "time_gradient" in r.stdout and "time_diffusers" in r.stdout


def test_figures_skips_the_retraining_experiments(monkeypatch):
    """`mmdguidance figures` must not retrain (and overwrite) the bundled pipeline; by name it still runs."""
    import experiments

    ran = []
    monkeypatch.setattr(experiments, "load", lambda name: type("M", (), {"run": staticmethod(lambda **kw: ran.append(name))}))
    assert cli.run_figures() == 0
    assert "t2i_train" in experiments.EXPERIMENTS and "t2i_train" not in ran
    assert ran == [n for n in experiments.EXPERIMENTS if n != "t2i_train"]
    ran.clear()
    assert cli.run_figures(["t2i_train"]) == 0 and ran == ["t2i_train"]
