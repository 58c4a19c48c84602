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
