"""`--threads` on every subcommand that runs a model, applied before the command runs."""

from __future__ import annotations

import pytest
import torch

from pretune.cli import main

MODEL_COMMANDS = (["pretrain"], ["finetune"], ["evaluate"], ["predict"], ["embed"], ["explain"], ["generate"],
                  ["run"], ["tune"], ["compare"])


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: c[0])
def test_every_model_command_takes_threads(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "--threads" in capsys.readouterr().out


def test_threads_are_set_before_the_command_and_checked(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a small bird\na tall tree\n", encoding="utf-8")
    args = ["embed", "--from", str(tiny_ckpt), "--input", str(tmp_path / "in.txt"), "--output"]
    assert main([*args, str(tmp_path / "x.npy"), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2  # the module's one-thread fixture restores the count afterwards
    assert main([*args, str(tmp_path / "y.npy"), "--threads", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "pretune: error: --threads must be >= 0 (0: torch's default), got -1"]
    assert not (tmp_path / "y.npy").exists()
