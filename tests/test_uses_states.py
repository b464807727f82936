"""The student and the coupled model *use* the states they are given: a student whose answers
can only be known from the states learns them (and cannot without them), and the coupled
model's answers depend on what its emulator produces, only from the separator on."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.data import ICoTCollator, tokenize_dataset


def secret_answer_batch(tokenizer, rows=64, seed=0):
    """Questions that say nothing about their answers: the answer is one of 8 random 3-digit
    strings, and only the (random) state vector of that answer tells which."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    answers = [" ".join(str(int(d)) for d in torch.randint(0, 10, (3,), generator=generator)) for _ in range(8)]
    secret = torch.randint(0, 8, (rows,), generator=generator)
    data = Dataset.from_list([{"input": "1 2 * 3 4", "cot": "", "answer": answers[int(s)]} for s in secret])
    batch = ICoTCollator(tokenizer.pad_token_id, views=("implicit",))(tokenize_dataset(data, tokenizer, views=("implicit",)).to_list())
    return batch, secret


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_student_learns_what_only_the_states_say(kind, tokenizer):
    torch.manual_seed(0)
    config = tiny_config(kind, tokenizer, layers=2)
    batch, secret = secret_answer_batch(tokenizer)
    codes = torch.randn(8, config.num_hidden_layers, config.hidden_size)
    accuracies = {}
    # "shuffled": every step hands each row another row's states, so they carry nothing about its answer
    for name, states_for_step in (("informative", lambda: codes[secret]), ("shuffled", lambda: codes[secret[torch.randperm(len(secret))]])):
        torch.manual_seed(1)
        student = ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config))
        optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
        inputs = dict(input_ids=batch["implicit_input_ids"], attention_mask=batch["implicit_attention_mask"],
                      separator_positions=batch["implicit_separators"][:, 0], labels=batch["implicit_labels"])
        for _ in range(150):
            optimizer.zero_grad()
            student(teacher_states=states_for_step(), **inputs).loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = student(teacher_states=states_for_step(), **inputs).logits
        # the first answer digit: teacher-forced, the later ones follow from it among 8 answers
        first = batch["implicit_separators"][:, 0]
        rows = torch.arange(len(first))
        accuracies[name] = float((logits[rows, first].argmax(-1) == batch["implicit_input_ids"][rows, first + 1]).float().mean())
    assert accuracies["informative"] > 0.95, accuracies
    assert accuracies["shuffled"] < 0.6, accuracies  # a digit it cannot know: at best the most frequent first digit


def test_coupled_answers_depend_on_the_emulator_from_the_separator_on(tokenizer):
    torch.manual_seed(0)
    config = tiny_config("gpt2", tokenizer)
    coupled = ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(config)),
        ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config)), tokenizer.eos_token_id, tokenizer.pad_token_id).eval()
    batch, _ = secret_answer_batch(tokenizer, rows=4)
    separators = batch["implicit_separators"][:, 0]
    inputs = dict(input_ids=batch["implicit_input_ids"], attention_mask=batch["implicit_attention_mask"], separator_positions=separators)
    with torch.no_grad():
        before = coupled(**inputs).logits
        for parameter in coupled.emulator.out_proj.parameters():
            parameter.add_(torch.randn_like(parameter))
        after = coupled(**inputs).logits
    first = int(separators[0])
    assert torch.equal(before[:, :first], after[:, :first])  # before the separator: no state read yet
    assert (before[:, first:] - after[:, first:]).abs().max() > 1e-3  # from it on: the emulator's states decide
