"""Where users already are: transformers' Trainer (through accelerate) with the backend."""
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_transformers import llama  # noqa: E402


def trainer_losses(compile_model: bool, reports: list) -> list:
    torch.manual_seed(0)
    model = llama().train()
    if compile_model:
        model.compile(backend="sdpa_rewrite", options={"report": reports.append, "strict": True})
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(3, 128, (8, 16), generator=g)]
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(out, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3,
                                              logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_with_the_model_compiled_by_the_backend():
    """accelerate checks `torch_compile_backend` against its own list of backend names and refuses "sdpa_rewrite";
    compiling the model in place (`model.compile(backend="sdpa_rewrite")`) before handing it to the Trainer is the
    route that works. Three optimizer steps: every site rewritten, the same losses as without the backend."""
    reports = []
    ref = trainer_losses(False, [])
    got = trainer_losses(True, reports)
    sites = [s for r in reports for s in r.sites]
    assert sites and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert abs(a - b) <= 1e-5 * abs(b), (got, ref)
