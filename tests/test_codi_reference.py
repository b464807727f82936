"""CODI against its released code (github.com/zhenyi4/codi), step by step.

tests/fixtures/reference_codi/ holds what the released train.py did on a tiny GPT-2 with LoRA and the
projection (make_fixture.py says how it was run and patched): 210 optimizer steps (30 epochs of 13
micro-batches of 4, 2 accumulated per step, the last of each epoch alone) over 49 GSM8k-Aug problems,
the GPT-2 preset's settings. Here `CODITrainer` runs from the same initial state on the same batches and
must give the same tokenised data, the same loss and loss parts at every micro-batch, the same gradient
norm at every step and the same weights after steps 20, 100 and 210.

Tolerances and their margins (float32 CPU, measured on this fixture; relative differences, the largest
over the run):
- loss and its three parts per micro-batch: noise 3.2e-6 (the distill part; 2.1e-7 for the others),
  tolerance 2e-5 (6x); the smallest planted mistake moves the distill part by 9.9e-4 (weight decay on the
  projection's norm and biases: 50x the tolerance);
- gradient norm per step: noise 1.7e-5, tolerance 1e-4 (6x); smallest mistake 2.4e-3 (the same: 24x);
- weights, ||ours - theirs|| / ||theirs - initial|| per tensor: noise 6.3e-6, tolerance 5e-5 (8x);
  smallest mistake 0.14 (the thought fed from the layer below: 2,700x).
The planted mistakes are tests/mutants.yaml's codi-* entries (`make mutants`), each with what it moved
(loss parts / gradient norm / final weights): the padded question rows' mask (0.92 / 0.73 / 1.25), the
std taken from the student (0.39 / 2.3 / 0.43), squared (24 / 26 / 1.5) or missing (0.83 / 1.1 / 0.40),
the teacher's states not detached (0.79 / 3.4 / 1.1), the embeddings left out of the layer mean (0.51 in
the distill part only: their gradient is zero under LoRA), the fed-back state not projected (0.27 / 0.66 /
1.1) or from the layer below (1.8e-2 / 0.12 / 0.14), the short last accumulation divided by its own count
(1.4 / 4.0 / 1.1), the distillation read one token late (0.99 / 27 / 1.7), weight decay on norms and biases
(9.9e-4 / 2.4e-3 / 0.87); two are harmless by measurement (masking the teacher's right padding; fused AdamW).

The released stack's two quirks reproduced here (CODILoss(mask_padding=False), the default):
its padded question positions, fully masked, attend evenly to the whole question (transformers 4.52's
additive mask), and the thoughts and the answer attend to them; an epoch's last, shorter accumulation
is divided by the full accumulation count.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "reference_codi"
LOSS_RTOL, NORM_RTOL, WEIGHT_RTOL = 2e-5, 1e-4, 5e-5
SETTINGS = json.loads((FIXTURE / "trajectory.json").read_text())["settings"] if (FIXTURE / "trajectory.json").exists() else {}


def fixture_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURE / "tokenizer")


def released_args(tmp_path, **overrides):
    from icot_hf import CODIConfig

    values = dict(output_dir=str(tmp_path / "codi"), per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=30,
                  learning_rate=3e-3, max_grad_norm=2.0, weight_decay=0.1, warmup_steps=0.03, lr_scheduler_type="cosine", seed=11,
                  num_latent=3, use_prj=True, prj_dim=64, prj_dropout=0.0, distill_loss_div_std=True, remove_eos=True,
                  logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, cpu_bf16="false", disable_dropout=False,
                  dataloader_num_workers=0)
    values.update(overrides)
    return CODIConfig(**values)


def build_reference_model(tokenizer):
    """The released CODI module's layout, then its recorded initial state (resized embeddings, LoRA's A, the projection)."""
    from peft import LoraConfig
    from transformers import GPT2Config, GPT2LMHeadModel

    from icot_hf import CODIForCausalLM

    config = GPT2Config(**{k: v for k, v in json.loads((FIXTURE / "model_config.json").read_text()).items()
                           if k not in ("architectures", "transformers_version", "torch_dtype")})
    model = CODIForCausalLM.from_base(GPT2LMHeadModel(config), tokenizer, num_latent=3, use_prj=True, prj_dim=64, remove_eos=True)
    model.add_lora(LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM"))
    state = {reference_key(k): v for k, v in load_file(FIXTURE / "initial.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm.base_model.model.lm_head.weight"}, (missing, unexpected)  # lm_head is tied to wte
    return model


def reference_key(key: str) -> str:
    return "lm." + key[len("codi."):] if key.startswith("codi.") else key


class ReplaySampler(torch.utils.data.Sampler):
    """The example order the released run read, epoch by epoch."""

    def __init__(self, order, epochs):
        self.orders = [order[i * len(order) // epochs:(i + 1) * len(order) // epochs] for i in range(epochs)]
        self.calls = 0

    def __iter__(self):
        order = self.orders[min(self.calls, len(self.orders) - 1)]
        self.calls += 1
        return iter(order)

    def __len__(self):
        return len(self.orders[0])


def run_library(tmp_path, model_hook=None, **overrides):
    """CODITrainer on the fixture's data in the released order; what it recorded."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from icot_hf import CODITrainer

    tokenizer = fixture_tokenizer()
    model = build_reference_model(tokenizer)
    if model_hook is not None:
        model_hook(model)
    rows = json.loads((FIXTURE / "data.json").read_text())["rows"]
    recorded = json.loads((FIXTURE / "trajectory.json").read_text())
    trainer = CODITrainer(model=model, args=released_args(tmp_path, **overrides), train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    ours = {"loss": [], "ce_loss": [], "distill_loss": [], "ref_ce_loss": [], "grad_norm": [], "weights": {}}
    epochs = int(trainer.args.num_train_epochs)
    trainer._get_train_sampler = lambda *a, **k: ReplaySampler(recorded["idx"], epochs)
    compute = trainer.compute_loss

    def recording_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = compute(model, inputs, return_outputs=True)
        ours["loss"].append(loss.item())
        for part in ("ce_loss", "distill_loss", "ref_ce_loss"):
            ours[part].append(float(getattr(outputs, part)))
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = recording_loss
    clip = trainer.accelerator.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        norm = clip(parameters, max_norm, *args, **kwargs)
        if max_norm != float("inf"):
            ours["grad_norm"].append(float(norm))
        return norm

    trainer.accelerator.clip_grad_norm_ = recording_clip

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in SETTINGS["mid_steps"]:
                ours["weights"][f"step{state.global_step}"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    trainer.add_callback(Snapshot())
    trainer.train()
    ours["weights"]["final"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return trainer, ours, recorded


@pytest.fixture(scope="module")
def library_run(tmp_path_factory):
    return run_library(tmp_path_factory.mktemp("codi"))


def test_the_data_is_tokenised_as_released():
    """Every kept example's three sequences, labels and distillation positions equal what the released
    `preprocess` built (49 of 50 rows: the negative answer is skipped; a one-step CoT is emptied)."""
    from datasets import Dataset

    from icot_hf.codi.data import CODIDataSettings, encode_example, keep_example
    from icot_hf.codi.modeling_codi import add_thought_tokens

    tokenizer = fixture_tokenizer()
    ids = add_thought_tokens(tokenizer)
    data = json.loads((FIXTURE / "data.json").read_text())
    released = data["preprocessed"]
    settings = CODIDataSettings()
    kept = [row for row in Dataset.from_list(data["rows"]) if keep_example(row, tokenizer, settings)]
    assert len(kept) == len(released["encoder_input_ids"]) == len(data["rows"]) - 1
    for i, row in enumerate(kept):
        ours = encode_example(row, tokenizer, ids["<|bot|>"], ids["<|eot|>"], settings)
        assert ours["encoder_input_ids"] == released["encoder_input_ids"][i]
        assert ours["decoder_input_ids"] == released["decoder_input_ids"][i] == released["labels"][i]
        assert ours["ref_input_ids"] == released["ref_input_ids"][i]
        assert ours["ref_labels"] == released["ref_labels"][i]
        # the released positions are one past the answer prefix; its forward subtracts 1
        assert ours["ref_distill_position"] == released["ref_answer_position"][i] - 1
        assert ours["model_distill_position"] == released["model_answer_position"][i] - 1


def test_every_micro_batch_has_the_released_loss_and_parts(library_run):
    _, ours, recorded = library_run
    assert len(ours["loss"]) == len(recorded["loss"]) == 30 * 13
    for part in ("loss", "ce_loss", "distill_loss", "ref_ce_loss"):
        assert ours[part] == pytest.approx(recorded[part], rel=LOSS_RTOL), part


def test_every_step_has_the_released_gradient_norm(library_run):
    _, ours, recorded = library_run
    assert len(ours["grad_norm"]) == len(recorded["grad_norm"]) == 30 * 7
    assert ours["grad_norm"] == pytest.approx(recorded["grad_norm"], rel=NORM_RTOL)


@pytest.mark.parametrize("point", ["step20", "step100", "final"])
def test_the_weights_match_the_released_run(library_run, point):
    _, ours, _ = library_run
    initial = {reference_key(k): v for k, v in load_file(FIXTURE / "initial.safetensors").items()}
    released = {reference_key(k): v for k, v in load_file(FIXTURE / f"{point}.safetensors").items()}
    weights = ours["weights"][point]
    moved = 0
    for key, theirs in released.items():
        change = (theirs - initial[key]).norm()
        if change == 0:
            assert torch.equal(weights[key], theirs), key  # frozen (the base under LoRA, the new tokens' rows)
            continue
        moved += 1
        assert float((weights[key] - theirs).norm() / change) < WEIGHT_RTOL, key
    assert moved == 2 * 4 * 2 + 6  # LoRA A and B on 4 modules x 2 layers, the projection's 6 tensors


def test_a_released_checkpoint_imports_as_a_codi_model_that_computes_what_it_computed(tmp_path):
    """The fixture's last state is a checkpoint as the released train.py saves it (LoRA names, the projection,
    three added rows). `icot-hf import-reference --codi` makes it a CODIForCausalLM folder (LoRA merged) whose
    student logits equal the LoRA model's with those weights, which loads through AutoModelForCausalLM and
    answers in batches; a .bin that would run code when unpickled is refused and its code never runs."""
    import os
    import pickle
    import shutil
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icot_hf.codi import CODILoss
    from icot_hf.codi.data import CODICollator

    base = tmp_path / "base"
    shutil.copytree(FIXTURE / "tokenizer", base)
    shutil.copy(FIXTURE / "model_config.json", base / "config.json")
    cli = [sys.executable, "-c", "from icot_hf.cli import main; main()", "import-reference"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([*cli, "--codi", str(FIXTURE / "final.safetensors"), "--base_model", str(base), "--codi_num_latent", "3",
                          "--output_dir", str(tmp_path / "imported")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    imported = AutoModelForCausalLM.from_pretrained(tmp_path / "imported" / "codi").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "imported" / "codi")
    assert type(imported).__name__ == "CODIForCausalLM" and not imported.has_lora and imported.config.num_latent == 3

    trained = build_reference_model(fixture_tokenizer())
    trained.load_state_dict({reference_key(k): v for k, v in load_file(FIXTURE / "final.safetensors").items()}, strict=False)
    data = json.loads((FIXTURE / "data.json").read_text())["preprocessed"]
    features = [{"encoder_input_ids": data["encoder_input_ids"][i], "decoder_input_ids": data["decoder_input_ids"][i],
                 "ref_input_ids": data["ref_input_ids"][i], "ref_labels": data["ref_labels"][i],
                 "ref_distill_position": data["ref_answer_position"][i] - 1, "model_distill_position": data["model_answer_position"][i] - 1}
                for i in range(4)]
    batch = CODICollator(257)(features)
    with torch.no_grad():
        ours = imported(**batch, loss_settings=CODILoss(distill_loss_div_std=True))
        theirs = trained.eval()(**batch, loss_settings=CODILoss(distill_loss_div_std=True))
    assert torch.allclose(ours.logits, theirs.logits, atol=1e-4) and abs(float(ours.loss - theirs.loss)) < 1e-4
    answers = imported.answer(["Tom has 3 apples.", "A box holds 4 pens. How many pens are in 2 boxes?"], tokenizer, max_new_tokens=4)
    assert len(answers) == 2

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    (tmp_path / "evil").mkdir()
    with open(tmp_path / "evil" / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"codi.x": Payload()}, handle)
    refused = subprocess.run([*cli, "--codi", str(tmp_path / "evil"), "--base_model", str(base), "--output_dir", str(tmp_path / "out2")],
                             capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "refused" in refused.stderr and not (tmp_path / "ran").exists()
    assert not (tmp_path / "out2" / "codi").exists()


def test_batched_generation_writes_what_the_released_evaluation_writes_alone(tmp_path):
    """generation.json (make_generation_fixture.py) holds the tokens the released test.py's greedy decoding
    wrote from this fixture's trained state for 8 questions, one at a time and in batches of 4. The imported
    model answers all 8 in one left-padded batch through `generate` (the KV cache, HF's decoding) and every
    row must be the released batch-1 answer token for token, up to and including eos. The released batch
    of 4 passes no attention mask after the question, so its shorter questions' thoughts and answers also
    read their padding; the fixture records how many of its answers that changed (the docstring of
    make_generation_fixture.py), which is why batch 1 is the reference here."""
    import shutil

    from icot_hf.codi.import_released import import_codi

    recorded = json.loads((FIXTURE / "generation.json").read_text())
    base = tmp_path / "base"
    shutil.copytree(FIXTURE / "tokenizer", base)
    shutil.copy(FIXTURE / "model_config.json", base / "config.json")
    model, tokenizer = import_codi(FIXTURE / "final.safetensors", str(base), num_latent=recorded["settings"]["latents"])
    questions = [row["question"] for row in recorded["rows"]]
    batch = model.prompt_ids(tokenizer, questions)
    assert batch["attention_mask"].eq(0).any()  # the batch pads some questions
    out = model.generate(**batch, max_new_tokens=recorded["settings"]["max_new_tokens"], do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    start = batch["input_ids"].shape[1] + model.config.num_latent + 1  # the thoughts' placeholders, then <|eot|> (remove_eos)
    for row, (question, released) in enumerate(zip(questions, recorded["tokens"]["1"])):
        ours = out[row, start:].tolist()
        if tokenizer.eos_token_id in ours:
            ours = ours[:ours.index(tokenizer.eos_token_id) + 1]
        assert ours == released, (question, tokenizer.decode(ours), tokenizer.decode(released))
