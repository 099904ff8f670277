"""The launcher's settings count: `accelerate launch --mixed_precision bf16` (or `accelerate config`) trains in bf16
unless the tool's own --mixed-precision says otherwise, the dynamo backend likewise through --compile, and
result.json records what ran and where it came from (environment.launch). What the tool cannot honour (a
DeepSpeed or FSDP launch) is refused in one line, before any process group or output folder exists."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import (
    REPO,
    RUN_PY,
    a_result,
    assert_ok,
    assert_one_line_error,
    child_env,
    load_result,
    run_entry,
    run_in_process,
    run_script,
)
from scaling.build import launch_notes, resolve_launch
from scaling.config import ConfigError, RunConfig, make_config
from scaling.results import ResultError
from scaling.results import load_result as load_checked

TINY = ["--max-steps", "3", "--num-samples", "2000", "--progress", "false", "--cpu"]
LAUNCHER_ENV = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_USE_CPU", "WORLD_SIZE",
                "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_MEGATRON_LM",
                "ACCELERATE_USE_PARALLELISM_CONFIG")


@pytest.fixture
def env(monkeypatch):
    """No launcher around (as `python scaling/run.py`), then what the test sets."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def accelerate_launch(args: list[str], tmp_path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes 1 ARGS` for real (the module, as the `accelerate` command runs it),
    without any accelerate config file of this machine's user (HF_HOME is the test's own)."""
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                           "--num_machines", "1", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=child_env(HF_HOME=str(tmp_path / "hf")))


# ---- the precedence, from the environment accelerate launch sets (accelerate/utils/launch.py) ----

def test_without_a_launcher_or_a_flag_the_run_trains_in_fp32_and_eagerly(env):
    cfg, launch = resolve_launch(RunConfig())
    assert (cfg.mixed_precision, cfg.compile) == ("no", None)
    assert launch["mixed_precision"] == {"value": "no", "source": "default", "launcher": None}
    assert launch["compile"] == {"value": None, "source": "default", "launcher": None}
    assert launch["num_processes"] == {"value": 1, "source": "default", "launcher": None}


def test_the_launchers_precision_and_backend_apply_when_the_tools_flags_are_unset(env):
    env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    env.setenv("ACCELERATE_DYNAMO_BACKEND", "AOT_EAGER")
    cfg, launch = resolve_launch(RunConfig())
    assert (cfg.mixed_precision, cfg.compile) == ("bf16", "aot_eager")
    assert launch["mixed_precision"] == {"value": "bf16", "source": "launcher", "launcher": "bf16"}
    assert launch["compile"] == {"value": "aot_eager", "source": "launcher", "launcher": "aot_eager"}
    assert launch["num_processes"]["source"] == "launcher"  # accelerate launch of one process: no WORLD_SIZE


def test_the_tools_own_flag_or_config_key_beats_the_launcher(env):
    env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    env.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    cfg, launch = resolve_launch(make_config({"mixed_precision": "no", "compile": None}))
    assert (cfg.mixed_precision, cfg.compile) == ("no", None)
    assert launch["mixed_precision"] == {"value": "no", "source": "flag", "launcher": "bf16"}
    assert launch["compile"] == {"value": None, "source": "flag", "launcher": "inductor"}
    cfg, _ = resolve_launch(cfg)  # resolved once, it stays as it is (build resolves, then starts processes)
    assert (cfg.mixed_precision, cfg.compile) == ("no", None)


def test_the_launchers_no_is_recorded_as_the_launchers(env):
    env.setenv("ACCELERATE_MIXED_PRECISION", "no")
    env.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    env.setenv("ACCELERATE_USE_CPU", "True")
    cfg, launch = resolve_launch(RunConfig())
    assert (cfg.mixed_precision, cfg.compile, cfg.cpu) == ("no", None, True)  # accelerate launch --cpu: --cpu
    assert launch["mixed_precision"]["source"] == launch["compile"]["source"] == "launcher"


def test_a_run_says_what_it_took_from_the_launcher_or_overrode_and_nothing_of_the_launchers_defaults(env):
    env.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate launch passes when not told otherwise
    env.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    assert launch_notes(resolve_launch(make_config({"mixed_precision": "bf16", "compile": "aot_eager"}))[1]) == []
    assert launch_notes(resolve_launch(RunConfig())[1]) == []
    env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    env.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    assert launch_notes(resolve_launch(RunConfig())[1]) == [
        "mixed precision bf16 from the launcher (accelerate launch --mixed_precision or accelerate config); "
        "--mixed-precision overrides it",
        "torch.compile backend inductor from the launcher (accelerate launch --dynamo_backend or accelerate "
        "config); --compile overrides it"]
    assert launch_notes(resolve_launch(make_config({"mixed_precision": "no", "compile": None}))[1]) == [
        "note: --mixed-precision no overrides the launcher's mixed precision bf16",
        "note: --compile none overrides the launcher's torch.compile backend inductor"]


def test_the_defaults_read_auto_in_the_printed_config_and_help(env):
    printed = run_in_process([*TINY, "--print-config"])
    assert_ok(printed)
    assert "mixed_precision: auto" in printed.stdout and "compile: auto" in printed.stdout
    assert "auto|no|bf16|fp16" in run_in_process(["--help"]).stdout


@pytest.mark.parametrize("name, value, fragments", [
    ("ACCELERATE_MIXED_PRECISION", "fp8", ("mixed precision 'fp8'", "--mixed-precision no, bf16 or fp16")),
    ("ACCELERATE_DYNAMO_BACKEND", "FASTEST", ("dynamo backend 'fastest'", "--compile none")),
])
def test_a_launcher_setting_the_tool_cannot_train_with_is_refused_unless_a_flag_replaces_it(env, name, value,
                                                                                          fragments):
    env.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        resolve_launch(RunConfig())
    assert all(fragment in str(refused.value) for fragment in fragments) and "\n" not in str(refused.value)
    resolve_launch(make_config({"mixed_precision": "bf16", "compile": None}))  # the tool's flags replace it


@pytest.mark.parametrize("name, what", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP"),
                                        ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_a_deepspeed_or_fsdp_launch_is_refused_whatever_the_flags(env, name, what):
    env.setenv(name, "true")
    with pytest.raises(ConfigError, match=f"asked for {what} .*DDP only") as refused:
        resolve_launch(make_config({"mixed_precision": "no"}))
    assert "\n" not in str(refused.value)
    env.setenv(name, "false")
    resolve_launch(RunConfig())


def test_compile_auto_and_none_are_valid_and_a_typo_is_refused():
    assert make_config({"compile": "auto"}).compile == "auto" and make_config({"compile": None}).compile is None
    with pytest.raises(ConfigError, match="--compile must name a torch.compile backend"):
        make_config({"compile": "fastest"})
    with pytest.raises(ConfigError, match="--mixed-precision must be one of auto, no, bf16, fp16"):
        make_config({"mixed_precision": "fp8"})


def test_results_without_the_launch_record_still_load_and_one_with_it_is_checked(tmp_path):
    old = a_result()
    old["environment"].pop("launch", None)
    old["config"]["mixed_precision"], old["config"]["compile"] = "no", None  # as versions before "auto" wrote
    path = tmp_path / "old" / "result.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    assert load_checked(path)["config"]["mixed_precision"] == "no"
    launch = {"mixed_precision": {"value": "bf16", "source": "launcher", "launcher": "bf16"}}
    path.write_text(json.dumps({**old, "environment": {**old["environment"], "launch": launch}}))
    assert load_checked(path)["environment"]["launch"] == launch
    path.write_text(json.dumps({**old, "environment": {**old["environment"], "launch": "bf16"}}))
    with pytest.raises(ResultError, match="launch"):
        load_checked(path)


# ---- real runs ----

@pytest.mark.slow
def test_a_real_accelerate_launch_with_bf16_trains_and_records_bf16_and_the_flag_beats_it(tmp_path):
    """The issue's case: `accelerate launch --mixed_precision bf16 scaling/run.py` trained in fp32 and recorded
    `no`. Now it records bf16 from the launcher, its losses are bf16's (not those of the fp32 run), and the
    tool's --mixed-precision no beats the launcher: the fp32 losses exactly."""
    launched = accelerate_launch(["--mixed_precision", "bf16", "--dynamo_backend", "no", str(RUN_PY), *TINY,
                                  "--output-dir", str(tmp_path / "bf16")], tmp_path)
    assert_ok(launched)
    assert "mixed precision bf16 from the launcher" in launched.stdout
    bf16 = load_result(tmp_path / "bf16")
    assert bf16["config"]["mixed_precision"] == "bf16" and bf16["compute"]["precision"] == "bf16"
    assert bf16["environment"]["launch"]["mixed_precision"] == {"value": "bf16", "source": "launcher",
                                                                "launcher": "bf16"}
    assert bf16["environment"]["launch"]["compile"] == {"value": None, "source": "launcher", "launcher": "no"}
    assert bf16["environment"]["launch"]["num_processes"] == {"value": 1, "source": "launcher", "launcher": 1}

    flagged = accelerate_launch(["--mixed_precision", "bf16", str(RUN_PY), *TINY, "--mixed-precision", "no",
                                 "--output-dir", str(tmp_path / "flag")], tmp_path)
    assert_ok(flagged)
    assert "--mixed-precision no overrides the launcher's mixed precision bf16" in flagged.stdout
    flag = load_result(tmp_path / "flag")
    assert flag["config"]["mixed_precision"] == "no"
    assert flag["environment"]["launch"]["mixed_precision"] == {"value": "no", "source": "flag", "launcher": "bf16"}

    plain = run_entry([*TINY, "--output-dir", str(tmp_path / "plain")])  # no launcher, no flag
    assert_ok(plain)
    default = load_result(tmp_path / "plain")
    assert default["config"]["mixed_precision"] == "no"
    assert default["environment"]["launch"]["mixed_precision"] == {"value": "no", "source": "default",
                                                                   "launcher": None}
    assert flag["train_loss"] == default["train_loss"]  # fp32 both
    assert bf16["train_loss"] != default["train_loss"]  # bf16 autocast ran


@pytest.mark.slow
def test_a_deepspeed_launch_is_refused_in_one_line_before_any_output(tmp_path):
    """What `accelerate launch --use_deepspeed` hands its processes (it needs deepspeed installed to start them
    at all), on a run of the script."""
    out = tmp_path / "out"
    assert_one_line_error(run_script([*TINY, "--output-dir", str(out)], ACCELERATE_USE_DEEPSPEED="true"),
                          "accelerate launch asked for DeepSpeed", "DDP only", "--use_deepspeed")
    assert not out.exists()


@pytest.mark.slow
def test_a_real_accelerate_launch_with_fsdp_is_refused_in_one_line(tmp_path):
    out = tmp_path / "out"
    launched = accelerate_launch(["--use_fsdp", str(RUN_PY), *TINY, "--output-dir", str(out)], tmp_path)
    assert launched.returncode != 0
    ours = [line for line in launched.stderr.splitlines() if line.startswith("scaling: ")]
    assert len(ours) == 1 and "accelerate launch asked for FSDP" in ours[0] and "DDP only" in ours[0], ours
    assert "exitcode  : 2" in launched.stderr  # the run's own exit status, as torchrun reports it
    assert not out.exists()
