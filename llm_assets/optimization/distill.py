"""Knowledge distillation: a smaller student learns the teacher's next-token distributions.

The training worker (llm_assets/training/worker.py) calls `distillation_loss` when run.json names a
`teacher_dir`: the frozen teacher scores the same batch, and the student's loss is

    alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · LM cross-entropy

(Hinton et al. 2015; T² keeps the soft-target gradients on the scale of the hard-target ones). Both
models must share the tokenizer, so their logits index the same vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-token KL(teacher ‖ student) of the temperature-softened distributions ([batch, seq, vocab])."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def distillation_loss(student_out, teacher: torch.nn.Module, input_ids: torch.Tensor, temperature: float,
                      alpha: float) -> torch.Tensor:
    """The mixed loss for one batch; `student_out` is the student's forward output with labels (it has .loss)."""
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids).logits
    kl = soft_target_kl(student_out.logits, teacher_logits, temperature)
    return alpha * temperature ** 2 * kl + (1 - alpha) * student_out.loss


def load_teacher(teacher_dir: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The teacher, frozen in eval mode."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def student_spec(teacher_dir: str | Path, n_layer: int = 0, n_embd: int = 0, n_head: int = 0,
                 name: str = "student") -> dict:
    """A run.json `model` entry for a GPT-2 student; 0 for a size means half the teacher's (at least 1 layer,
    a width that is a multiple of the heads)."""
    config_path = Path(teacher_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"teacher_dir {teacher_dir} is not a Hugging Face model directory (no config.json)")
    t = json.loads(config_path.read_text())
    if t.get("model_type") != "gpt2":
        raise ValueError(f"student_spec builds GPT-2 students; the teacher is {t.get('model_type')!r}")
    n_head = n_head or max(1, t["n_head"] // 2)
    n_embd = n_embd or max(n_head, (t["n_embd"] // 2) // n_head * n_head)
    if n_embd % n_head:
        raise ValueError(f"student n_embd={n_embd} is not a multiple of n_head={n_head}")
    config = {"n_layer": n_layer or max(1, t["n_layer"] // 2), "n_embd": n_embd, "n_head": n_head,
              "n_positions": t["n_positions"]}
    return {"name": name, "model_type": "gpt2", "config": config}
