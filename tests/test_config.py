import pytest

from conftest import assert_one_line_error, run_in_process
from scaling.config import ConfigError, RunConfig, make_config, parse_args


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_arguments():
    cfg, _ = parse_args([])
    assert cfg == RunConfig()


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = write(tmp_path, "global_bs: 512\nbase_lr: 0.2\nlr_scaling: linear\n")
    cfg, _ = parse_args(["--config", path, "--base-lr", "0.3"])
    assert cfg.global_bs == 512  # from YAML
    assert cfg.base_lr == 0.3  # CLI wins over YAML
    assert cfg.lr_scaling == "linear"
    assert cfg.optimizer == "sgd"  # default


def test_yaml_int_widens_to_float_but_other_type_changes_are_refused(tmp_path):
    cfg, _ = parse_args(["--config", write(tmp_path, "base_lr: 1\n")])
    assert cfg.base_lr == 1.0 and isinstance(cfg.base_lr, float)
    with pytest.raises(ConfigError, match="'global_bs' expects int, got float 64.5"):
        parse_args(["--config", write(tmp_path, "global_bs: 64.5\n")])
    with pytest.raises(ConfigError, match="'cpu' expects bool"):
        parse_args(["--config", write(tmp_path, "cpu: 1\n")])


def test_boolean_flags_alone_or_with_a_value():
    assert parse_args(["--cpu"])[0].cpu is True
    assert parse_args(["--cpu", "false"])[0].cpu is False


def test_list_values_from_cli_and_yaml(tmp_path):
    assert parse_args(["--lr-decay", "step", "--lr-step-epochs", "3,6"])[0].lr_step_epochs == [3.0, 6.0]
    cfg, _ = parse_args(["--config", write(tmp_path, "lr_decay: step\nlr_step_epochs: [2, 4]\n")])
    assert cfg.lr_step_epochs == [2.0, 4.0]


def test_per_device_bs_accepts_auto():
    assert parse_args(["--per-device-bs", "auto"])[0].per_device_bs == "auto"
    assert parse_args(["--per-device-bs", "64"])[0].per_device_bs == 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--global-bz", "64"], "unknown flag --global-bz (did you mean --global-bs?)"),
        (["--global-bs", "abc"], "--global-bs expects int, got 'abc'"),
        (["--global-bs", "0"], "--global-bs must be > 0"),
        (["--global-bs", "-8"], "--global-bs must be > 0"),
        (["--base-lr", "0"], "--base-lr must be > 0"),
        (["--base-lr", "nan"], "--base-lr expects float"),
        (["--per-device-bs", "0"], "--per-device-bs must be > 0"),
        (["--per-device-bs", "big"], "--per-device-bs must be a positive integer or 'auto'"),
        (["--per-device-bs", "8", "--accumulation-steps", "2"], "at most one of --per-device-bs and --accumulation-steps"),
        (["--lr-scaling", "cubic"], "--lr-scaling must be one of none, linear, sqrt"),
        (["--optimizer", "lamb"], "--optimizer must be one of sgd, adamw"),
        (["--warmup-steps", "5", "--warmup-epochs", "1"], "at most one of --warmup-steps and --warmup-epochs"),
        (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
        (["--target-accuracy", "90"], "--target-accuracy is a fraction"),
        (["--lr-decay", "cosine", "--max-epochs", "none"], "--lr-decay cosine needs a length"),
        (["--lr-decay", "step"], "--lr-decay step needs --lr-step-epochs"),
        (["--target-accuracy", "none", "--max-epochs", "none"], "nothing would stop this run"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["--config", "/nonexistent/x.yaml"], "does not exist"),
    ],
)
def test_bad_flags_are_refused_naming_the_key(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("global_bs: 64\nbase_lrr: 0.1\n", "unknown key 'base_lrr'"),
        ("global_bs: [1, 2\n", "is not valid YAML at line"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("optimizer: 3\n", "'optimizer' expects str"),
        ("global_bs: true\n", "'global_bs' expects int"),
    ],
)
def test_bad_yaml_is_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        parse_args(["--config", write(tmp_path, text)])
    assert message in str(err.value)


def test_make_config_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key 'global_batch'"):
        make_config({"global_batch": 64})


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--global-bs", "100", "--per-device-bs", "30"], ["per-device 30", "90 or 120"]),
        (["--global-bs", "abc"], ["--global-bs expects int"]),
        (["--bogus", "1"], ["unknown flag --bogus"]),
        (["--model", "nope"], ["unknown model 'nope'"]),
        (["--model", "no_such_module:build"], ["cannot import module 'no_such_module'"]),
        (["--dataset", "no_such_module:make"], ["cannot import module 'no_such_module'"]),
        (["--dataset", "./missing-dir/data.csv"], ["no such file or folder"]),
        (["--global-bs", "16384", "--num-samples", "2000"], ["fewer than one global batch of 16384", "--num-samples 20480"]),
    ],
)
def test_entry_exits_2_with_one_line_and_writes_no_result(tmp_path, argv, fragments):
    out = tmp_path / "out"
    proc = run_in_process([*argv, "--output-dir", str(out), "--num-samples", "2000"] if "--num-samples" not in argv
                          else [*argv, "--output-dir", str(out)])
    assert_one_line_error(proc, *fragments)
    assert not (out / "result.json").exists()


def test_unparseable_yaml_through_the_entry(tmp_path):
    proc = run_in_process(["--config", write(tmp_path, "global_bs: [\n")])
    assert_one_line_error(proc, "not valid YAML")


def test_every_field_has_one_line_of_help_in_exactly_one_group():
    from scaling.config import FIELDS
    from scaling.flags import GROUPS

    listed = [name for _, fields in GROUPS for name, _ in fields]
    assert sorted(listed) == sorted(FIELDS), "scaling/flags.py must list every RunConfig field once"
    assert all(text and "\n" not in text for _, fields in GROUPS for _, text in fields)


def test_help_shows_groups_descriptions_and_choices():
    text = run_in_process(["--help"], COLUMNS="80").stdout
    for fragment in ("batch: global = per-device x processes x accumulation steps", "learning rate:", "stopping:",
                     "data and model:", "measurement:", "machine and output:", "--lr-scaling none|linear|sqrt",
                     "how the LR follows the global batch", "(default: sqrt)"):
        assert fragment in text, fragment
    probe = run_in_process(["--help"], command="probe", COLUMNS="80").stdout
    assert probe.startswith("usage: scaling probe")


def test_print_config_is_the_resolved_yaml_and_reads_back(tmp_path):
    import yaml

    (tmp_path / "base.yaml").write_text("global_bs: 1024\nlr_scaling: linear\n")
    proc = run_in_process(["--config", str(tmp_path / "base.yaml"), "--lr-scaling", "sqrt", "--print-config"])
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["global_bs"] == 1024 and printed["lr_scaling"] == "sqrt"  # flags > YAML > defaults
    assert "scaling: global batch" not in proc.stdout  # nothing was built or trained
    (tmp_path / "resolved.yaml").write_text(proc.stdout)
    again, _ = parse_args(["--config", str(tmp_path / "resolved.yaml")])
    assert again.to_dict() == printed
