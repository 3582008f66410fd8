"""The command line: `posttrain <command> [-c config.yaml] [section.key=value ...] [--section.key value ...]`.

Each command is a config dataclass (posttrain/config/) and a function that runs it. `tyro` generates the parser and
`--help` from the dataclasses (field docstrings become help text); this module only adds the conveniences
users of other tools expect: a YAML overlay, `key=value` overrides, bare boolean flags, and the rule that a
user mistake exits with code 2 and one message (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import shutil
import sys
import typing
from pathlib import Path

from posttrain import config as C
from posttrain.errors import EXIT_USER_ERROR, ConfigError, UserError

# command → (config class, "module:function", one-line description)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "demo": (C.DemoConfig, "posttrain.demo:run", "a model learns arithmetic: tiny, or model= a pretrained one"),
    "pretrain": (C.PretrainConfig, "posttrain.train.sft:run", "train from scratch on a text corpus"),
    "sft": (C.SFTConfig, "posttrain.train.sft:run", "supervised fine-tuning, full or LoRA"),
    "rm": (C.RMConfig, "posttrain.train.reward:run", "reward model on pairs (Bradley–Terry), or per step (prm)"),
    "dpo": (C.DPOConfig, "posttrain.train.preference:run", "preference optimization: DPO, IPO, SimPO, ORPO, KTO, …"),
    "rl": (C.RLConfig, "posttrain.train.rl:run", "online RL: PPO, GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++, GSPO, …"),
    "rft": (C.RFTConfig, "posttrain.train.rft:run", "rejection sampling fine-tuning, STaR: sample, keep verified, SFT"),
    "explain": (C.RLConfig, "posttrain.explain:run", "print an rl config's batch arithmetic; refuse zero updates"),
    "generate": (C.GenerateConfig, "posttrain.generate:run_generate", "sample completions for a prompt file → JSONL"),
    "chat": (C.ChatConfig, "posttrain.generate:run_chat", "talk to a model in the terminal"),
    "eval": (C.EvaluateConfig, "posttrain.eval.run:run",
             "accuracy, pass@k, maj@k and test-time search (best-of-N, vote, PRM beam, MCTS) at equal tokens"),
    "export": (C.ExportConfig, "posttrain.export:run", "write a plain HF model directory (LoRA merged)"),
    "plot": (C.PlotConfig, "posttrain.track:plot_run", "draw PNG curves from RUN_DIR/metrics.jsonl"),
    "classic": (C.ClassicConfig, "posttrain.classic:run",
                "classic RL on gymnasium: tabular, DQN family, REINFORCE, A2C, PPO, DDPG/TD3, BC"),
    "distill": (C.DistillConfig, "posttrain.train.distill:run",
                "distill a teacher into a student: logit (KL, JSD), on-policy (GKD), chain-of-thought"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, args = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, list(COMMANDS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"commands: {', '.join(COMMANDS)}"
            raise ConfigError(f"unknown command '{command}' — {hint}")
        _quiet_libraries()
        cls, target, _ = COMMANDS[command]
        print_config = command == "rl" and "--print-config" in args
        args = _rl_arguments(command, args)
        cfg = parse_config(cls, args, prog=f"posttrain {command}")
        if print_config:
            import yaml
            from posttrain.presets import expand
            print(yaml.safe_dump(C.to_dict(expand(cfg)), sort_keys=False), end="")
            return 0
        module, function = target.split(":")
        try:
            getattr(importlib.import_module(module), function)(cfg)
        finally:
            from posttrain.run_dir import release
            release()  # the run directory's lock (a killed process's lock the kernel releases)
    except UserError as e:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank hits the same error; say it once
            print(f"posttrain {command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"posttrain {command}: error: {disk_full_message(e)}", file=sys.stderr)
        return 1
    return 0


def disk_full_message(e: OSError) -> str:
    """One line for a full disk: which file, how much space is left, and that the last checkpoint is intact."""
    path = Path(e.filename) if e.filename else None
    where = path
    while where is not None and not where.exists() and where != where.parent:
        where = where.parent
    free = f"{shutil.disk_usage(where).free / 2 ** 20:.1f} MiB free" if where is not None else "free space unknown"
    return (f"no space left on device writing {path or 'a file'} ({free} there) — the last complete checkpoint is "
            "intact; fix: free disk space (or move output_dir to a larger disk), then rerun the same command with "
            "checkpoint.resume=auto")


def _quiet_libraries() -> None:
    """Our progress bar and messages are the console output; silence the libraries' own bars and advice."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _rl_arguments(command: str, args: list[str]) -> list[str]:
    """rl: `--algo NAME` is `algo.name=NAME`, `--print-config` is handled by main; explain: `explain CONFIG`
    is `explain -c CONFIG`; classic: `classic ALGO --env ENV` is `algo=ALGO env=ENV`."""
    if command == "explain" and args and not args[0].startswith("-") and "=" not in args[0]:
        args = ["-c", *args]
    if command == "classic":
        algo = [f"algo={args.pop(0)}"] if args and not args[0].startswith("-") and "=" not in args[0] else []
        env, args = _pop_option(args, ("--env",))
        return args + algo + ([f"env={env}"] if env else [])
    if command not in ("rl", "explain"):
        return args
    algo, args = _pop_option(args, ("--algo",))
    args = [a for a in args if a != "--print-config"]
    return args + ([f"algo.name={algo}"] if algo else [])


def usage() -> str:
    lines = ["usage: posttrain <command> [-c config.yaml] [key=value ...] [--debug]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    lines += ["", "`posttrain <command> --help` lists every option with its default."]
    return "\n".join(lines)


def parse_config(cls: type, args: list[str], prog: str):
    """Defaults ← YAML (-c) ← overrides, then validated (every config class has `validate()`). tyro parses the
    final argument list."""
    import tyro

    config_path, args = _pop_option(args, ("-c", "--config"))
    base = C.load_yaml(config_path, cls) if config_path else None
    paths = C.field_paths(cls)
    cfg = tyro.cli(cls, args=_to_tyro_args(args, paths), prog=prog, default=base,
                   config=(tyro.conf.FlagConversionOff,), use_underscores=True)
    cfg.validate()
    return cfg


def _pop_option(args: list[str], names: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """Remove `-c FILE` / `--config=FILE` from args; return (FILE or None, the rest)."""
    rest, value, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a in names:
            if i + 1 >= len(args):
                raise ConfigError(f"{a} needs a file: {a} config.yaml")
            value, i = args[i + 1], i + 2
            continue
        if any(a.startswith(n + "=") for n in names):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


def _to_tyro_args(args: list[str], paths: dict[str, typing.Any]) -> list[str]:
    """Translate `a.b=v` into `--a.b v`, split comma lists, and let a bare boolean `--flag` mean true."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-") and "=" in a:
            key, value = a.split("=", 1)
            if key not in paths:
                raise C.unknown_key_error(key, list(paths), "command line")
            out += ["--" + key, *_values(value, paths[key])]
        elif a.startswith("--") and "=" not in a and _takes_bool(paths.get(a[2:])):
            nxt = args[i + 1] if i + 1 < len(args) else "-"
            is_value = not nxt.startswith("-") and "=" not in nxt
            out += [a, *(_values(nxt, bool) if is_value else ["True"])]
            i += is_value
        else:
            out.append(a)
        i += 1
    return out


def _takes_bool(ftype: typing.Any) -> bool:
    """A boolean field, or one whose type also admits a boolean (bool | None, bool | Literal["auto"])."""
    return ftype is bool or bool in typing.get_args(ftype)


def _values(value: str, ftype: typing.Any) -> list[str]:
    origin = typing.get_origin(ftype)
    if value.lower() in ("none", "null") and type(None) in typing.get_args(ftype):
        return ["None"]
    if _takes_bool(ftype) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        ftype = bool  # also an optional flag (unset = decided by another setting) or checkpoint.resume (or auto)
    if ftype is bool and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return ["True" if value.lower() in ("true", "1", "yes") else "False"]
    if origin is list:
        return [v.strip() for v in value.split(",") if v.strip()]
    if origin is dict:
        pairs = [p.split(":", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"'{value}' is not a mapping — write it as key:value,key:value")
        return [s.strip() for p in pairs for s in p]
    return [value]


if __name__ == "__main__":
    raise SystemExit(main())
