"""
Settings the nanoGPT way: a script keeps its defaults as module globals, then calls

    configure(globals(), sys.argv[1:], CHOICES, setting_problems, setting_warnings)

Each argument is either a preset file (`config/qwen25vl_7b_seedbench.py`, a few lines of assignments run in
order) or an override `--key=value`. Settings are the lower-case globals; UPPER_CASE globals are
constants, not settings.

Every value is brought to its setting's type before anything runs, the type of its default: an
int where a float belongs becomes a float (`--lr=1`), a list where a tuple belongs a tuple, one
value where a tuple belongs a one-element tuple (`--seeds=0`, `--arms=grpo`; a comma list of
words too: `--arms=grpo,reg_grpo`), and the elements of tuples and dicts are checked against the
default's own elements. A setting whose default is None declares its type in an annotation
(`fps: float | None = None`). Command-line values are read as Python literals (`--lr=3e-4`,
`--resume=True`); where the setting is a string the text is taken as it is (`--wandb_run_name=2024`).
An unknown key, a value of another type (`--fps=two`, `--num_frames=True`), or a float that is
not finite is an error naming the key, the value and the type wanted; a preset that fails to run
(a syntax error, an undefined name) is an error naming its file and line.

Then every setting is checked before anything is loaded: `CHOICES` maps a setting to its allowed
values (a typo gets a "did you mean"), and `setting_problems(config)` returns (holds, message)
pairs for ranges and relations; every failed rule is listed in one error. `setting_warnings(config,
given)` returns pairs of the same shape for settings that are allowed but would do nothing (a
setting the chosen method never reads); `given` is the set of keys a preset or the command line
set, and each failed rule prints one line, once (rank 0 under torchrun).
"""
import ast
import difflib
import math
import os
import sys
import tempfile
import traceback
import types


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def type_name(default, declared=None):
    """The type a setting takes, in words: "float", "float or None", "dict of str -> tuple of float"."""
    if declared is not None:
        members = declared.__args__ if isinstance(declared, types.UnionType) else (declared,)
        return " or ".join("None" if m is type(None) else m.__name__ for m in members)
    if isinstance(default, tuple) and element(default) is not None:
        return f"tuple of {type_name(element(default))}"
    if isinstance(default, dict) and default:
        value = element(tuple(default.values()))
        return f"dict of {type_name(next(iter(default)))} -> " + (type_name(value) if value is not None else "any")
    return type(default).__name__


def element(items):
    """A prototype of the elements of a tuple default (None when empty or of mixed types)."""
    names = {type_name(x) for x in items}
    return items[0] if items and len(names) == 1 else None


def conform(value, default, declared=None):
    """`value` brought to the type of `default` (or the `declared` type); ValueError when it does not fit."""
    if declared is not None:
        members = declared.__args__ if isinstance(declared, types.UnionType) else (declared,)
        for m in members:
            if m is type(None):
                if value is None:
                    return None
                continue
            try:
                return conform(value, m())
            except ValueError:
                pass
        raise ValueError(type_name(default, declared))
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is type(default):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(default, (tuple, list)):
        proto = element(tuple(default))
        if isinstance(value, str) and isinstance(proto, str):
            value = tuple(v.strip() for v in value.split(","))
        elif not isinstance(value, (tuple, list)) and proto is not None:
            value = (value,)
        if isinstance(value, (tuple, list)):
            if proto is not None:
                value = [conform(v, proto) for v in value]
            return type(default)(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            if not default:
                return value
            key, proto = next(iter(default)), element(tuple(default.values()))
            return {conform(k, key): (conform(v, proto) if proto is not None else v) for k, v in value.items()}
    elif default is None:
        return value
    raise ValueError(type_name(default))


def check_and_set(config, key, value, source, types_=None, text=None):
    """Set config[key] to `value` brought to the setting's type; SystemExit naming the key otherwise.
    text: the command line's raw text, taken as it is where the setting is a string."""
    if key not in config:
        known = ", ".join(sorted(config))
        hint = difflib.get_close_matches(key, list(config), n=1)
        hint = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise SystemExit(f"{source}: unknown setting '{key}'{hint}. Known settings: {known}")
    default, declared = config[key], (types_ or {}).get(key)
    if text is not None and value is not None and not isinstance(value, str) and (
            isinstance(default, str) or declared is not None and str in getattr(declared, "__args__", (declared,))):
        value = text                                   # --wandb_run_name=2024 is the name "2024"
    try:
        config[key] = conform(value, default, declared)
    except ValueError:
        raise SystemExit(f"{source}: '{key}' expects {type_name(default, declared)} (default {default!r}), "
                         f"got {value!r}") from None


def is_setting(name, value):
    return (not name.startswith("_") and not name.isupper()
            and isinstance(value, (int, float, bool, str, type(None), tuple, list, dict)))


def declared_types(module_globals, config):
    """The annotations of the settings; a None default without one is a mistake in the script."""
    declared = dict(module_globals.get("__annotations__", {}))
    undeclared = [k for k, v in config.items() if v is None and k not in declared]
    if undeclared:
        raise TypeError(f"settings {undeclared} default to None: declare their type where they are set "
                        f"(e.g. `{undeclared[0]}: float | None = None`)")
    return declared


def run_preset(path):
    """The assignments of a preset file, {key: (value, line)}; SystemExit naming the file and line
    when it cannot be read or run."""
    try:
        source = open(path, encoding="utf-8").read()
    except OSError as e:
        raise SystemExit(f"{path}: cannot read preset ({e.strerror})")
    except UnicodeDecodeError as e:
        raise SystemExit(f"{path}: cannot read preset (not UTF-8 text: byte {e.object[e.start]:#04x} "
                         f"at offset {e.start})")
    try:
        tree = ast.parse(source, path)
        code = compile(tree, path, "exec")
    except SyntaxError as e:
        raise SystemExit(f"{path}:{e.lineno}: cannot read preset (syntax error: {e.msg})")
    lines = {t.id: node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    namespace = {}
    try:
        exec(code, namespace)
    except Exception as e:
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == path), "?")
        raise SystemExit(f"{path}:{line}: preset failed to run ({type(e).__name__}: {e})")
    return {k: (v, lines.get(k, "?")) for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def script_defaults(path):
    """A script's settings as its config block sets them, without importing it: {name: value} plus
    "__annotations__" (what configure takes for module_globals). Each module-level assignment of a
    lower-case name to a constant expression (literals and arithmetic, no names) counts; the
    measurement scripts read train.py's defaults this way instead of importing the training loop."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out, annotations = {}, {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
            if isinstance(target, ast.Name):
                annotations[target.id] = eval(compile(ast.Expression(node.annotation), path, "eval"),
                                              {"__builtins__": {}, "float": float, "int": int, "str": str,
                                               "bool": bool, "None": None})
        else:
            continue
        if not isinstance(target, ast.Name) or target.id.startswith("_") or target.id.isupper():
            continue
        if any(isinstance(n, (ast.Name, ast.Call, ast.Attribute)) for n in ast.walk(value)):
            raise ValueError(f"{path}:{node.lineno}: setting {target.id!r} is not a constant expression")
        out[target.id] = eval(compile(ast.Expression(value), path, "eval"), {"__builtins__": {}})
    return {**out, "__annotations__": annotations}


def configure(module_globals, argv, choices=None, setting_problems=None, setting_warnings=None):
    """Apply presets and --key=value overrides to the settings in `module_globals`, check them
    against `choices`, `setting_problems` and `setting_warnings` (see the module docstring); return them."""
    config = {k: v for k, v in module_globals.items() if is_setting(k, v)}
    declared = declared_types(module_globals, config)
    given = set()
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise SystemExit(f"command line: expected --key=value, got '{arg}'")
            key, text = arg[2:].split("=", 1)
            check_and_set(config, key, parse_value(text), "command line", declared, text)
            given.add(key)
        else:
            for key, (value, line) in run_preset(arg).items():
                check_and_set(config, key, value, f"{arg}:{line}", declared)
                given.add(key)
    resolve_auto(config)
    check_settings(config, choices or {}, setting_problems)
    if setting_warnings is not None and os.environ.get("RANK", "0") == "0":
        for holds, message in setting_warnings(config, given):
            if not holds:
                print(f"warning: {message}", file=sys.stderr, flush=True)
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


def inert_settings(c, given, acts_only_with):
    """setting_warnings pairs for settings the user gave that cannot act: `acts_only_with` maps a setting
    to {other setting: the values under which it acts} (reg_form acts only with loss=reg_grpo)."""
    pairs = []
    for key, needs in acts_only_with.items():
        off = [k for k, values in needs.items() if c[k] not in values]
        if key in given and off:
            needed = " and ".join(f"{k}={' | '.join(map(str, needs[k]))}" for k in off)
            pairs.append((False, f"{key}={c[key]!r} does nothing with "
                                 f"{', '.join(f'{k}={c[k]!r}' for k in off)} (it acts only with {needed})"))
    return pairs


def warmup_warning(c):
    """A setting_warnings pair: a warmup longer than the run never reaches the learning rate."""
    return (c["warmup_steps"] <= c["max_steps"],
            f"warmup_steps={c['warmup_steps']} > max_steps={c['max_steps']}: the learning rate ends at "
            f"{c['max_steps'] / max(1, c['warmup_steps']):.2g} x learning_rate={c['learning_rate']:g}, "
            "never reaching it")


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
