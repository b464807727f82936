"""Coconut against its released code (github.com/facebookresearch/coconut), step by step.

tests/fixtures/reference_coconut/ holds what the released run.py's own `main()` did on a tiny GPT-2
(make_fixture.py says how it was run and patched): 8 epochs of 8 steps over 128 mixed 4x4/5x5
problems, 2 epochs a stage, so stages 0, 1, 2 and 3 (the last with every replaced step at its cap:
6 latents), the optimizer re-created every epoch. Here `CoconutTrainer` runs the same curriculum from
the same weights on the same batches and must give the same loss and gradient norm at every step,
the same weights at the end of every stage and the same generations; the released `Coconut.forward`
on one ragged batch is matched logit for logit, and each planted mistake must fail the comparison.

Tolerances and their margins (float32 CPU, measured on this fixture, lr 1e-4 as the GSM8K preset):
- per-step loss: noise (largest relative gap seen) 1.7e-7, tolerance 2e-6 (12x the noise); the smallest
  planted mistake moves it by 9.1e-4 (the latent fed from the wrong layer: 450x the tolerance);
- per-step gradient norm: noise 5.2e-8, tolerance 1e-6 (19x);
- weights after each stage, ||ours - theirs|| / ||theirs - initial|| per tensor: noise 1.5e-4 (GPT-2's
  attention biases, whose key part has a zero exact gradient, so AdamW moves it by float noise), tolerance
  1e-3 (6.7x); the smallest planted mistake moves a tensor by 0.45 of its update (450x).
Planted mistakes and what each changed (loss / weights, relative): latent fed from the wrong position
2.8e-3 / 0.61; from the wrong layer 9.1e-4 / 0.45; the stage switch one epoch late 2.9e-2 / 0.50; the
optimizer not reset 1.8e-2 / 0.81; the markers left in the loss 6.8e-3 / 0.85.
"""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "reference_coconut"
LOSS_RTOL, NORM_RTOL, WEIGHT_RTOL = 2e-6, 1e-6, 1e-3


def fixture_tokenizer():
    sys.path.insert(0, str(FIXTURE))
    try:
        from coconut_tokenizer import build_coconut_fixture_tokenizer
    finally:
        sys.path.remove(str(FIXTURE))
    return build_coconut_fixture_tokenizer()


@pytest.fixture(scope="module")
def summary():
    return json.loads((FIXTURE / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURE / "trajectory.safetensors")


def initial_lm(summary, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0, **summary["model"]))
    lm.load_state_dict(load_file(FIXTURE / "initial.safetensors"))
    return lm


class EpochBatches(torch.utils.data.Sampler):
    """The reference's example order of each epoch (the Trainer sets the epoch)."""

    def __init__(self, order):
        self.order, self.epoch = order, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(self.order[self.epoch])

    def __len__(self):
        return len(self.order[0])


def run_like_the_reference(summary, tmp_path, mutate=None):
    """CoconutTrainer on the fixture's run; returns (trainer, losses, grad norms, weights per saved epoch)."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from icot_hf import CoconutConfig, CoconutTrainer

    s = summary["settings"]
    tokenizer = fixture_tokenizer()
    args = CoconutConfig(output_dir=str(tmp_path / "coconut"), c_thought=s["c_thought"], epochs_per_stage=s["epochs_per_stage"],
                         max_latent_stage=s["max_latent_stage"], pad_latent_to_max=s["pad_latent_to_max"], uniform_prob=s["uniform_prob"],
                         num_train_epochs=s["num_epochs"], per_device_train_batch_size=s["batch_size_training"],
                         gradient_accumulation_steps=s["gradient_accumulation_steps"], learning_rate=s["lr"], weight_decay=s["weight_decay"],
                         seed=s["seed"], optim="adamw_torch", save_strategy="no", eval_strategy="no", logging_steps=1000,
                         report_to="none", disable_tqdm=True, use_cpu=True)
    if mutate is not None:
        mutate(args)
    losses, norms, saved = [], [], {}

    class Record(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad.detach().double().norm() ** 2 for p in model.parameters() if p.grad is not None]
            norms.append(float(torch.stack(grads).sum().sqrt()))

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            epoch = round(state.epoch)
            if epoch in (2, 4, 6, 8):
                saved[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    class FollowingTheReference(CoconutTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return EpochBatches(summary["order"])

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    data = Dataset.from_list(json.loads((FIXTURE / "train.json").read_text()))
    trainer = FollowingTheReference(model=initial_lm(summary, tokenizer), args=args, train_dataset=data, processing_class=tokenizer,
                                    callbacks=[Record()])
    trainer.train()
    return trainer, losses, norms, saved


def relative_weight_gaps(ours: dict, reference: dict, epoch: int, initial: dict) -> dict:
    gaps = {}
    for key, theirs in reference.items():
        if not key.startswith(f"epoch{epoch}/base_causallm."):  # `embedding.weight` is the same tensor as wte
            continue
        name = key.split("/", 1)[1].replace("base_causallm.", "lm.")
        if name.endswith(".attn.bias") or name.endswith("masked_bias"):
            continue
        start = initial.get(name.replace("lm.", "", 1))
        mine = ours[name]
        if start is not None and start.shape != theirs.shape:  # the embedding rows the new tokens added
            start = torch.cat([start, theirs[start.shape[0]:]])
        moved = (theirs - start).norm() if start is not None else theirs.norm()
        gaps[name] = float((mine - theirs).norm() / moved.clamp(min=1e-12))
    return gaps


@pytest.fixture(scope="module")
def our_run(summary, tmp_path_factory):
    return run_like_the_reference(summary, tmp_path_factory.mktemp("coconut_run"))


def test_every_step_matches_the_released_loop(summary, reference, our_run):
    trainer, losses, norms, _ = our_run
    theirs_loss, theirs_norm = reference["loss"].tolist(), reference["grad_norm"].tolist()
    assert len(losses) == len(theirs_loss) == 64
    loss_gap = max(abs(a - b) / abs(b) for a, b in zip(losses, theirs_loss))
    norm_gap = max(abs(a - b) / abs(b) for a, b in zip(norms, theirs_norm))
    assert loss_gap < LOSS_RTOL, f"per-step loss differs by {loss_gap:.2e} (relative)"
    assert norm_gap < NORM_RTOL, f"per-step gradient norm differs by {norm_gap:.2e} (relative)"
    assert trainer.optimizer_resets == [e for e in summary["resets"] if e > 0]  # epoch 0 is the optimizer's creation


def test_weights_match_at_the_end_of_every_stage(reference, our_run):
    _, _, _, saved = our_run
    initial = load_file(FIXTURE / "initial.safetensors")
    for epoch in (2, 4, 6, 8):
        gaps = relative_weight_gaps(saved[epoch], reference, epoch, initial)
        worst = max(gaps, key=gaps.get)
        assert gaps[worst] < WEIGHT_RTOL, f"after epoch {epoch}, {worst} differs by {gaps[worst]:.2e} of its update"


def test_batched_generation_matches_the_released_batch_one_generate(summary, our_run):
    from datasets import Dataset

    from icot_hf.coconut.data import CoconutFormat, question_prompt, tokenize_example

    trainer, *_ = our_run
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    valid = Dataset.from_list(json.loads((FIXTURE / "valid.json").read_text()))
    examples = [tokenize_example(ex, tokenizer, CoconutFormat()) for ex in valid]
    prompts = [question_prompt(ex, 3, trainer.settings, trainer.ids) for ex in examples]
    prompts[1] = prompts[1][1:]  # one shorter prompt, so the batch is left-padded
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=128, do_sample=False, eos_token_id=0, pad_token_id=0)
    for i, row in enumerate(out[:, width:].tolist()):
        generated = row[:row.index(0)] if 0 in row else row
        if i == 1:  # compare the shortened prompt with its own batch-1 generation
            alone = model.generate(input_ids=torch.tensor([prompts[1]]), max_new_tokens=128, do_sample=False, eos_token_id=0, pad_token_id=0)
            alone = alone[0, len(prompts[1]):].tolist()
            assert generated == (alone[:alone.index(0)] if 0 in alone else alone)
            continue
        released = summary["generated"]["7"][str(i)]
        assert prompts[i] + generated == released, f"question {i}"


def test_single_pass_matches_the_released_forward(summary, reference):
    """The released Coconut.forward on a ragged, left-padded stage-3 batch: logits, loss and every gradient."""
    from icot_hf.coconut import CoconutForCausalLM

    tokenizer = fixture_tokenizer()
    model = CoconutForCausalLM.from_base(initial_lm(summary, tokenizer), tokenizer, init_token="<<")
    weights = {k.split("/", 1)[1].replace("base_causallm.", "lm."): v for k, v in reference.items() if k.startswith("epoch8/base_causallm.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(".attn.bias" in k for k in missing), (missing, unexpected)
    model.train()
    batch = {k.split("/")[1]: v for k, v in reference.items() if k.startswith("single/") and k.count("/") == 1}
    assert (batch["attention_mask"][:, 0] == 0).any(), "the fixture batch must be left-padded"
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], labels=batch["labels"])
    real = batch["attention_mask"].bool()  # padding rows attend to nothing; their logits are arbitrary in both
    gap = (out.logits - batch["logits"])[real].abs().max()
    assert gap < 2e-5, f"logits differ by {gap:.2e}"
    assert abs(float(out.loss) - float(batch["loss"])) < 1e-6
    out.loss.backward()
    for key, theirs in reference.items():
        if key.startswith("single/grad_norm/"):
            name = key.removeprefix("single/grad_norm/").replace("base_causallm.", "lm.")
            mine = dict(model.named_parameters())[name].grad.norm()
            assert torch.isclose(mine, theirs, rtol=1e-4, atol=1e-9), name


def mutated(monkeypatch, owner, name, old, new):
    """Replace `owner.name` (a function or method) by a copy whose source has `old` replaced by `new`."""
    import inspect
    import textwrap

    function = getattr(owner, name)
    module = sys.modules[function.__module__]
    source = textwrap.dedent(inspect.getsource(function))
    assert source.count(old) == 1, f"{old!r} is not in {name} once"
    namespace = dict(vars(module))
    exec(compile(source.replace(old, new), module.__file__, "exec"), namespace)
    monkeypatch.setattr(owner, name, namespace[name])


def planted(monkeypatch, mistake):
    from icot_hf.coconut import coconut_trainer, data, modeling_coconut

    model = modeling_coconut.CoconutForCausalLM
    mistakes = {  # name: (owner, function, correct text, mistaken text)
        "latent fed from the wrong position": (model, "latent_columns", "column = int(columns)", "column = int(columns) + 1"),
        "latent fed from the wrong layer": (model, "latent_forward", "fed = out.hidden_states[-1][:, -1]", "fed = out.hidden_states[-2][:, -1]"),
        "stage switch one epoch late": (data.CurriculumDataset, "stage_of", "(self.start_epoch + epoch) //",
                                        "max(self.start_epoch + epoch - 1, 0) //"),
        "optimizer not reset": (coconut_trainer.CurriculumCallback, "on_epoch_begin", "inner.state.clear()", "pass"),
        "markers left in the loss": (data, "stage_example", '"labels": [-100] * len(prefix) + rest',
                                     '"labels": [-100] * (len(prefix) - 1) + [ids["end"]] + rest'),
    }
    mutated(monkeypatch, *mistakes[mistake])


MISTAKES = ["latent fed from the wrong position", "latent fed from the wrong layer", "stage switch one epoch late", "optimizer not reset",
            "markers left in the loss"]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_planted_mistakes_are_caught(summary, reference, tmp_path, monkeypatch, mistake):
    """Each plausible mistake, planted in the library, moves the loss or the weights past the tolerances."""
    planted(monkeypatch, mistake)
    _, losses, norms, saved = run_like_the_reference(summary, tmp_path)
    theirs = reference["loss"].tolist()
    loss_gap = max(abs(a - b) / abs(b) for a, b in zip(losses, theirs)) if len(losses) == len(theirs) else float("inf")
    initial = load_file(FIXTURE / "initial.safetensors")
    weight_gap = max(max(relative_weight_gaps(saved[e], reference, e, initial).values()) for e in saved)
    print(f"{mistake}: loss {loss_gap:.2e} (tolerance {LOSS_RTOL:.0e}), weights {weight_gap:.2e} (tolerance {WEIGHT_RTOL:.0e})")
    assert loss_gap > 10 * LOSS_RTOL or weight_gap > 10 * WEIGHT_RTOL, f"{mistake} passes the comparison"
