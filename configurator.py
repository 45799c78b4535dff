"""
Settings the nanoGPT way: a script keeps its defaults as module globals, then calls

    configure(globals(), sys.argv[1:], CHOICES, setting_problems)

Each argument is either a preset file (`config/tiny_cpu.py`, a few lines of assignments run in
order) or an override `--key=value`. Values are read as Python literals when they parse as one
(`--lr=3e-4`, `--resume=True`) and as plain strings otherwise (`--loss=grpo`); None is accepted only
where the default is None.
Settings are the lower-case globals; UPPER_CASE globals are constants, not settings.
An unknown key, or a value whose type differs from the default's, is an error naming the key.

Then every setting is checked before anything is loaded: `CHOICES` maps a setting to its allowed
values (a typo gets a "did you mean"), and `setting_problems(config)` returns (holds, message)
pairs for ranges and relations; every failed rule is listed in one error.
"""
import ast
import difflib
import os
import sys
import tempfile


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_and_set(config, key, value, source):
    if key not in config:
        known = ", ".join(sorted(config))
        hint = difflib.get_close_matches(key, list(config), n=1)
        hint = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise SystemExit(f"{source}: unknown setting '{key}'{hint}. Known settings: {known}")
    default = config[key]
    if default is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        else:
            raise SystemExit(f"{source}: '{key}' expects {type(default).__name__} "
                             f"(default {default!r}), got {value!r}")
    config[key] = value


def is_setting(name, value):
    return (not name.startswith("_") and not name.isupper()
            and isinstance(value, (int, float, bool, str, type(None), tuple, list, dict)))


def configure(module_globals, argv, choices=None, setting_problems=None):
    """Apply presets and --key=value overrides to the settings in `module_globals`, check them
    against `choices` and `setting_problems` (see the module docstring); return them."""
    config = {k: v for k, v in module_globals.items() if is_setting(k, v)}
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise SystemExit(f"command line: expected --key=value, got '{arg}'")
            key, text = arg[2:].split("=", 1)
            check_and_set(config, key, parse_value(text), "command line")
        else:
            try:
                source = open(arg).read()
            except OSError as e:
                raise SystemExit(f"{arg}: cannot read preset ({e.strerror})")
            preset = {}
            exec(compile(source, arg, "exec"), {}, preset)
            for key, value in preset.items():
                if not key.startswith("_"):
                    check_and_set(config, key, value, arg)
    resolve_auto(config)
    check_settings(config, choices or {}, setting_problems)
    module_globals.update(config)
    return config


def check_settings(config, choices, setting_problems=None):
    """Exit with one message listing every setting outside its choices or breaking a rule."""
    problems = [choice_problem(key, config[key], allowed) for key, allowed in choices.items()]
    if not any(problems) and setting_problems is not None:   # ranges may assume valid choices
        problems += [message for holds, message in setting_problems(config) if not holds]
    problems = [p for p in problems if p]
    if problems:
        raise SystemExit("bad settings:\n  " + "\n  ".join(problems))


def choice_problem(key, value, allowed):
    """None when `value` is one of `allowed`, else a message with the closest allowed value."""
    if value in allowed:
        return None
    names = [str(a) for a in allowed]
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1, cutoff=0.5)
    hint = f" (did you mean '{lower[close[0]]}'?)" if close else ""
    return f"{key}={value!r} is not one of {' | '.join(names)}{hint}"


def writable_dir(path):
    """True when `path` is (or can be made as) a directory we can write a file into; makes it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def device_ok(device):
    """'cpu', or 'cuda' / 'cuda:N' when torch sees a GPU (torch only imported for cuda)."""
    if device == "cpu":
        return True
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        return False
    import torch
    return torch.cuda.is_available()


def resolve_auto(config):
    """device="auto": cuda when torch sees a GPU, else cpu; dtype="auto": bfloat16 on cuda, float32 on cpu
    (the compute dtype; master_dtype stays as set). Resolved in place before the settings are checked."""
    if config.get("device") == "auto":
        import torch
        config["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if config.get("dtype") == "auto":
        config["dtype"] = "bfloat16" if str(config.get("device", "cpu")).startswith("cuda") else "float32"


def video_problems(c):
    """The rules every script that reads videos shares: frames, pixels, rate, device (as setting_problems
    pairs)."""
    return [
        (c["num_frames"] >= 1, f"num_frames={c['num_frames']}: need >= 1"),
        (c["max_pixels"] >= 28 * 28, f"max_pixels={c['max_pixels']}: need >= 784 (one 28x28 cell)"),
        (c["fps"] is None or c["fps"] > 0, f"fps={c['fps']}: need > 0, or None (spread over the clip)"),
        (device_ok(c["device"]), f"device={c['device']!r}: expected cpu, or cuda / cuda:N with a GPU that torch sees"),
    ]


DTYPES = ("float32", "bfloat16", "float16")


if __name__ == "__main__":
    print(configure({"lr": 1e-3}, sys.argv[1:]))
