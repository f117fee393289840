"""The smoke-number pins fail when a number moves, name it, and say how to re-pin on purpose."""
import json

import pytest

import pinned


def _metrics(loss=0.5, fid=12.0, seconds=3.0):
    return {"train": {"final_loss": loss, "train_seconds": seconds},
            "eval": {"fid": {"value": fid, "ci95": [10.0, 14.0], "n": 16, "extractor": "inception-v3-fid"}},
            "wall_seconds": seconds * 10, "profile": "smoke"}


def test_pins_catch_a_moved_number_and_ignore_timings(tmp_path, monkeypatch):
    monkeypatch.setattr(pinned, "FIXTURE", tmp_path / "pins.json")
    monkeypatch.setenv("MEDKIT_REPIN", "1")
    pinned.check_pinned("demo", _metrics())
    pins = json.loads((tmp_path / "pins.json").read_text())["demo"]
    assert pins == {"train.final_loss": 0.5, "eval.fid": 12.0, "eval.fid.ci95_lo": 10.0, "eval.fid.ci95_hi": 14.0,
                    "eval.fid.n": 16.0}                      # no seconds, no text
    monkeypatch.delenv("MEDKIT_REPIN")
    pinned.check_pinned("demo", _metrics(seconds=99.0))       # a slower machine passes
    pinned.check_pinned("demo", _metrics(loss=0.5 * (1 + 5e-5)))  # within the tolerance
    with pytest.raises(AssertionError, match=r"(?s)train\.final_loss: pinned 0\.5, now 0\.501.*MEDKIT_REPIN=1"):
        pinned.check_pinned("demo", _metrics(loss=0.501))
    extra = _metrics()
    extra["eval"]["kid"] = {"value": 0.01}
    with pytest.raises(AssertionError, match=r"eval\.kid: reported \(0\.01\) but not pinned"):
        pinned.check_pinned("demo", extra)
    with pytest.raises(AssertionError, match="no pinned numbers for 'other'"):
        pinned.check_pinned("other", _metrics())


def test_paired_differences_get_an_absolute_floor_but_still_catch_a_real_move():
    """mDice differences near 0 (mean +- t se): 1.1e-5 of cross-machine drift passes, 1e-3 (0.1 points) fails."""
    key = "segmentation.real+1x random masks.Overall.mdice_minus_real.ci95_hi"
    assert pinned._same(-0.0029019918347606755, -0.0028908291667307045, key)
    assert not pinned._same(-0.0029, -0.0019, key)
    assert not pinned._same(-0.0029019918347606755, -0.0028908291667307045, "train.final_loss")  # elsewhere: 1e-3 rel
