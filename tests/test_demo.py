"""`posttrain demo --quick` through the real CLI: the model must measurably learn and the table must print."""

import re

from conftest import run_cli


def test_quick_demo_learns(tmp_path):
    proc = run_cli("demo", "--quick", f"output_dir={tmp_path}", timeout=300, check=True)
    table = dict(re.findall(r"^(before \(random init\)|after SFT)\s+([0-9.]+)", proc.stdout, re.M))
    assert set(table) == {"before (random init)", "after SFT"}, proc.stdout
    before, after = float(table["before (random init)"]), float(table["after SFT"])
    assert before <= 0.05 and after >= before + 0.15, proc.stdout
    assert (tmp_path / "plots" / "loss.png").is_file() and (tmp_path / "plots" / "eval_accuracy.png").is_file()
    assert (tmp_path / "sft" / "final" / "model.safetensors").is_file()
