"""Ordinary runs print no warnings: ours are fixed at the source (the KV cache is passed under the name this
transformers version takes), the libraries' deprecations are filtered by message and module where only the
library can fix them. A warning a user can act on would still show."""

import re

import pytest

from conftest import run_cli, write_jsonl

COMMON = ["log.progress=false", "task.num_train=32", "task.num_eval=4", "eval.num_samples=4", "threads=1",
          "train.max_steps=1", "train.micro_batch_size=4", "train.lr=1e-3"]
COMMANDS = {
    "sft": ["sft"],
    "dpo": ["dpo"],
    "rl": ["rl", "rl.prompts_per_step=2", "rl.generations=2", "sampling.max_new_tokens=4",
           "train.micro_batch_size=2"],
    # the policy takes no step while the critic warms up: its lr schedule still advances (it counts steps)
    "ppo-warmup": ["rl", "--algo", "ppo", "algo.critic_warmup=1", "rl.prompts_per_step=2", "rl.generations=1",
                   "sampling.max_new_tokens=4", "train.micro_batch_size=2"],
}
NOISE = re.compile(r"warning|deprecat", re.IGNORECASE)


def noisy_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_training_commands_print_no_warnings(tmp_path, command, lora):
    name, *extra = COMMANDS[command]
    proc = run_cli(name, f"output_dir={tmp_path / 'run'}", f"lora.r={lora}", *COMMON, *extra, check=True)
    assert noisy_lines(proc.stderr) == [], proc.stderr


def test_generate_and_export_from_a_lora_run_print_no_warnings(tmp_path):
    run_cli("sft", f"output_dir={tmp_path / 'sft'}", "lora.r=4", *COMMON, check=True)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1="}, {"prompt": "2+3="}])
    proc = run_cli("generate", f"model={tmp_path / 'sft' / 'final'}", f"data_path={prompts}",
                   f"output={tmp_path / 'out.jsonl'}", "sampling.max_new_tokens=4", check=True)
    assert (tmp_path / "out.jsonl").is_file()
    assert noisy_lines(proc.stderr) == [], proc.stderr
    proc = run_cli("export", str(tmp_path / "sft"), str(tmp_path / "merged"), check=True)
    assert noisy_lines(proc.stderr) == [], proc.stderr


def test_the_filter_hides_exactly_one_message_from_one_module():
    import warnings

    import posttrain

    def shown(message: str, module: str) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()  # without pytest's own filters (which ignore every FutureWarning)
            posttrain._hide_library_deprecations()  # what `import posttrain` does
            warnings.simplefilter("always", append=True)
            warnings.warn_explicit(message, FutureWarning, filename=f"{module}.py", lineno=1, module=module,
                                   registry={})
        return bool(caught)

    peft_reads = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
    assert not shown(peft_reads, "transformers.modeling_utils")
    assert shown(peft_reads, "my_training_script")  # the same words from elsewhere still show
    assert shown("`some_other_argument` is deprecated", "transformers.modeling_utils")
