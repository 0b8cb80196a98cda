"""
Configuration the nanoGPT way: every knob is a module-level global at the top of a script, and
this helper lets config files and --key=value flags override them.

    python tgrpo.py                                   # the defaults at the top of tgrpo.py
    python tgrpo.py config/tgrpo_7b.py --lr=2e-6      # a named setup, then one flag on top
    python tgrpo.py --wandb_project=None              # None is a value too

A config file is plain Python whose assignments are applied in order. Values on the command line
are Python literals (numbers, True/False/None, lists, quoted strings); a bare word is a string.
Unknown keys and wrong types are errors, never silently ignored.
"""
import ast
import sys

CONFIG_TYPES = (bool, int, float, str, list, tuple, dict, type(None))


def _coerce(key, value, default, source):
    if default is None or value is None:
        return value  # a None default accepts any type; None turns any knob off
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)  # --lr=1 means 1.0
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    elif type(value) is type(default):
        return value
    raise TypeError(f"config {key!r} from {source}: expected {type(default).__name__} "
                    f"like the default {default!r}, got {type(value).__name__} {value!r}")


def configure(namespace, argv=None):
    """Apply config files and --key=value flags to `namespace` (a script's globals()) in place and
    return the resolved config as a dict (printed at start, saved with every checkpoint).

    >>> g = {"lr": 1e-6, "G": 8, "wandb_project": None}
    >>> configure(g, ["--lr=2e-6", "--wandb_project=r1"])
    {'lr': 2e-06, 'G': 8, 'wandb_project': 'r1'}
    """
    argv = sys.argv[1:] if argv is None else argv
    keys = [k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, CONFIG_TYPES)]

    def apply(key, value, source):
        if key not in keys:
            raise KeyError(f"unknown config key {key!r} from {source}; known keys: {', '.join(keys)}")
        namespace[key] = _coerce(key, value, namespace[key], source)

    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ValueError(f"flag {arg!r}: write --{key}=value")
            if text == "None":
                value = None
            elif isinstance(namespace.get(key), str):
                value = text  # a string knob takes the text as it is
            else:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    value = text  # a bare word is a string; apply() checks the type
            apply(key, value, arg)
        else:
            file_globals = {}
            with open(arg) as f:
                exec(compile(f.read(), arg, "exec"), file_globals)
            for key, value in file_globals.items():
                if not key.startswith("_") and isinstance(value, CONFIG_TYPES):
                    apply(key, value, arg)
    return {k: namespace[k] for k in keys}
