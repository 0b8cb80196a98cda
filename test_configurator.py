"""The nanoGPT-style configurator: files and flags override globals, with loud errors."""
import pytest

from configurator import configure


def defaults():
    return {"lr": 1e-6, "G": 8, "temporal": True, "name": "demo", "data_types": None,
            "betas": (0.9, 0.999), "_private": 1, "torch": __import__("math")}


def test_flags_override_and_coerce(tmp_path):
    g = defaults()
    cfg = configure(g, ["--lr=2e-6", "--G=4", "--temporal=False", "--name=7b", "--data_types=['video']",
                        "--betas=[0.9, 0.95]"])
    assert cfg == {"lr": 2e-6, "G": 4, "temporal": False, "name": "7b", "data_types": ["video"],
                   "betas": (0.9, 0.95)}
    assert g["G"] == 4 and g["betas"] == (0.9, 0.95)
    assert "_private" not in cfg and "torch" not in cfg


def test_int_for_float_and_none_and_string_digits():
    g = defaults()
    configure(g, ["--lr=1", "--name=123", "--data_types=None"])
    assert g["lr"] == 1.0 and isinstance(g["lr"], float)
    assert g["name"] == "123"           # a str knob keeps the text
    assert g["data_types"] is None
    configure(g, ["--name=None"])       # None turns any knob off
    assert g["name"] is None


def test_config_file_then_flag(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nG = 16\nlr = math.pi\n")
    g = defaults()
    configure(g, [str(f), "--G=2"])
    assert g["G"] == 2 and g["lr"] == pytest.approx(3.14159265)


@pytest.mark.parametrize("arg, err", [
    ("--nope=1", KeyError), ("--G=1.5", TypeError), ("--temporal=1", TypeError),
    ("--G=four", TypeError), ("--G", ValueError), ("--lr=True", TypeError),
])
def test_bad_flags_are_loud(arg, err):
    with pytest.raises(err):
        configure(defaults(), [arg])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("learning_rate = 1e-5\n")
    with pytest.raises(KeyError, match="bad.py"):
        configure(defaults(), [str(f)])
