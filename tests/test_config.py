import argparse

import pytest

from rald_fast.config import (SCHEDULES, VARIANTS, Config, add_config_arguments, config_from_args,
                              make_config)


def parse(*argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(list(argv)))


def test_paper_preset_is_spec_5():
    cfg = make_config("paper")
    o = cfg.optim
    assert (o.batch_size, o.lr, o.momentum, o.epochs, o.lr_step) == (128, 0.01, 0.9, 300, 100)
    assert (cfg.model.scale, cfg.model.sigma, cfg.loss.k, cfg.model.heads) == (0.125, 500, 5, 8)


def test_cli_overrides_beat_presets_and_variants():
    cfg = parse("--preset", "paper", "--variant", "e", "--k", "7", "--no-lgifo", "--lr", "0.1")
    assert cfg.loss.k == 7 and cfg.optim.lr == 0.1 and cfg.optim.epochs == 300
    assert cfg.model.itrr and not cfg.model.lgifo and not cfg.loss.nnldl


def test_unknown_option_is_rejected():
    with pytest.raises(SystemExit):
        parse("--no-such-option", "1")


def test_round_trip_and_unknown_keys():
    cfg = make_config("quick", "c")
    assert Config.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["model"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        Config.from_dict(d)


@pytest.mark.parametrize("preset", list(SCHEDULES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_preset_and_variant_validates(preset, variant):
    make_config(preset, variant)


def test_invalid_combinations_name_the_option():
    with pytest.raises(ValueError, match="--heads"):
        make_config(heads=7)
    with pytest.raises(ValueError, match="--nnldl needs --itrr"):
        make_config(itrr=False)
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("fast")


# --- --help: a description and the effective default of the selected preset and variant ----------
def _config_actions(parser):
    keys = {k for sub in Config().to_dict().values() if isinstance(sub, dict) for k in sub}
    return [a for a in parser._actions if a.dest in keys]


def _help_of(parser, flag):
    return next(a.help for a in parser._actions if flag in a.option_strings)


def test_every_train_option_has_a_description():
    from rald_fast.train.command import build_parser

    p = build_parser()
    n_fields = sum(len(sub) for sub in Config().to_dict().values() if isinstance(sub, dict))
    options = [a for a in p._actions if a.option_strings and a.dest != "help"]
    assert len(options) == n_fields + 4  # every field, --resume, --overwrite, --preset, --variant
    for a in options:
        assert a.help and "before presets" not in a.help, a.option_strings
        if a.dest not in ("resume", "overwrite", "preset", "variant"):
            desc = a.help.split(" (default in quick/rald: ")[0]
            assert len(desc) > 10 and "(default in quick/rald: " in a.help, a.help
    assert "before presets" not in p.format_help()


def test_help_shows_the_selected_presets_values():
    from rald_fast.train.command import build_parser

    quick, paper = build_parser(), build_parser(["--preset", "paper", "--help"])
    assert _help_of(quick, "--epochs").endswith("(default in quick/rald: 5)")
    assert _help_of(quick, "--image-size").endswith("(default in quick/rald: 40)")
    assert _help_of(quick, "--lr").endswith("(default in quick/rald: 0.05)")
    assert _help_of(paper, "--epochs").endswith("(default in paper/rald: 300)")
    assert _help_of(paper, "--image-size").endswith("(default in paper/rald: 224)")
    text = " ".join(paper.format_help().split())  # undo argparse's wrapping
    assert "(default in paper/rald: 300)" in text and "(default in paper/rald: 224)" in text
    assert "(default in quick/rald: 5)" in " ".join(quick.format_help().split())
    # the variant too, switches as on/off, unset paths as none; --preset=NAME spelled either way
    a = build_parser(["--variant", "a", "--preset=tiny"])
    assert _help_of(a, "--itrr").endswith("(default in tiny/a: off)")
    assert _help_of(a, "--nnldl").endswith("(default in tiny/a: off)")
    assert _help_of(a, "--backbone-weights").endswith("(default in tiny/a: none)")
    assert _help_of(a, "--epochs").endswith("(default in tiny/a: 2)")


@pytest.mark.parametrize("argv", [["--preset", "fast", "--help"], ["--preset"], ["--variant", "zz"]])
def test_bad_preset_still_reported_by_argparse(argv, capsys):
    from rald_fast.train.command import build_parser

    p = build_parser(argv)  # the pre-parse falls back to quick/rald
    assert _help_of(p, "--epochs").endswith("(default in quick/rald: 5)")
    with pytest.raises(SystemExit) as e:
        p.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err or "expected one argument" in err


@pytest.mark.parametrize("argv", [
    [], ["--preset", "paper"], ["--preset", "tiny", "--variant", "c"], ["--variant", "rald-l"],
    ["--preset", "paper", "--variant", "e", "--k", "7", "--no-lgifo", "--lr", "0.1", "--image-size", "96"],
])
def test_train_parser_resolves_values_as_make_config(argv):
    from rald_fast.train.command import build_parser, resolve_config

    args = build_parser(argv).parse_args(argv)
    cfg = config_from_args(args)
    assert resolve_config(args, argv) == cfg
    overrides = {a.dest: getattr(args, a.dest) for a in _config_actions(build_parser()) if hasattr(args, a.dest)}
    assert cfg == make_config(args.preset, args.variant, **overrides)
    if len(argv) <= 4:  # no option besides the preset and the variant: exactly make_config's values
        assert not overrides and cfg == make_config(args.preset, args.variant)
    # the help's preset never leaks into the values: a quick-preset parser resolves paper's line the same
    assert config_from_args(build_parser().parse_args(argv)) == cfg


def test_experiment_help_shows_the_quick_preset():
    from rald_fast.experiments.__main__ import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["ablation"]
    assert _help_of(sub, "--epochs").endswith("(default in the quick preset: 5)")
    assert "unless the run's variant sets it" in _help_of(sub, "--itrr")
    assert "runs/experiments" in _help_of(sub, "--out")
    assert "before presets" not in sub.format_help()
    args = sub.parse_args(["--preset", "paper", "--k", "3"])
    assert args.preset == "paper" and args.k == 3 and not hasattr(args, "epochs")


def test_add_config_arguments_help_keeps_values():
    p = argparse.ArgumentParser()
    add_config_arguments(p, "paper", "a")
    cfg = config_from_args(p.parse_args([]))
    assert cfg == make_config("quick", "rald")  # the help's pair is not the default of the values
