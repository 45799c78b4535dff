"""
Settings the nanoGPT way: a script keeps its defaults as module globals, then calls

    configure(globals(), sys.argv[1:])

Each argument is either a preset file (`config/tiny_cpu.py`, a few lines of assignments run in
order) or an override `--key=value`. Values are read as Python literals when they parse as one
(`--lr=3e-4`, `--resume=True`, `--beta=None`) and as plain strings otherwise (`--loss=grpo`).
An unknown key, or a value whose type differs from the default's, is an error naming the key.
"""
import ast
import sys


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_and_set(config, key, value, source):
    if key not in config:
        known = ", ".join(sorted(config))
        raise SystemExit(f"{source}: unknown setting '{key}'. Known settings: {known}")
    default = config[key]
    if default is not None and value is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        else:
            raise SystemExit(f"{source}: '{key}' expects {type(default).__name__} "
                             f"(default {default!r}), got {value!r}")
    config[key] = value


def configure(module_globals, argv):
    """Apply presets and --key=value overrides to the settings in `module_globals`; return them."""
    config = {k: v for k, v in module_globals.items()
              if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None), tuple, list, dict))}
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
    module_globals.update(config)
    return config


if __name__ == "__main__":
    print(configure({"lr": 1e-3}, sys.argv[1:]))
