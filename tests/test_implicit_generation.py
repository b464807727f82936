"""ImplicitCoTForCausalLM generation: batched equals one row at a time, stops at the answer."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import multiplication_dataset, tiny_config
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.data import ICoTCollator, prompt_batch, tokenize_dataset
from icot_hf.hooks import get_decoder_layers
from icot_hf.kd import CoupledConfig, CoupledTrainer


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def trained(request, tokenizer, tmp_path_factory):
    """A tiny coupled model trained briefly on 2x2 and 3x3 problems, so it emits separators."""
    torch.manual_seed(0)
    config = tiny_config(request.param, tokenizer)
    model = ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(config)),
        ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config)),
        tokenizer.eos_token_id, tokenizer.pad_token_id, max_answer_tokens=12,
    )
    rows = multiplication_dataset(2, 300, seed=5).to_list() + multiplication_dataset(3, 300, seed=6).to_list()
    from datasets import Dataset

    data = tokenize_dataset(Dataset.from_list(rows).shuffle(seed=0), tokenizer, views=("implicit",))
    args = CoupledConfig(output_dir=str(tmp_path_factory.mktemp("coupled")), max_steps=120, per_device_train_batch_size=32, learning_rate=5e-3,
                         save_strategy="no", report_to="none", use_cpu=True, logging_steps=50)
    CoupledTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("implicit",)), train_dataset=data).train()
    return model.eval()


QUESTIONS = ["1 2 * 3 4", "5 6 7 * 8 9 1", "9 9 * 9 9", "4 0 2 * 1 1 3", "3 1 * 2 7"]


def test_batched_equals_one_at_a_time(trained, tokenizer):
    batched = trained.answer(QUESTIONS, tokenizer, batch_size=len(QUESTIONS))
    single = [trained.answer([q], tokenizer)[0] for q in QUESTIONS]
    assert batched == single
    assert all(answer.replace(" ", "").isdigit() for answer in batched)  # it learned the answer format


def test_generation_stops_at_answer_end(trained, tokenizer):
    sep, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = prompt_batch(tokenizer, QUESTIONS, sep, pad)
    output = trained.generate(**batch, max_new_tokens=30)
    generated = output[:, batch["input_ids"].shape[1] :]
    assert generated.shape[1] < 30  # every row finished before the budget
    for row in generated.tolist():
        assert sep in row
        assert all(token == pad for token in row[row.index(sep) + 1 :])  # nothing after the answer's end


def answer_log_probability(model, question_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer | question) under one full forward (states substituted at the separator)."""
    ids = torch.tensor([question_ids + answer_ids])
    logits = model(ids, separator_positions=torch.tensor([len(question_ids) - 1])).logits[0].log_softmax(-1)
    return sum(float(logits[len(question_ids) - 1 + i, token].detach()) for i, token in enumerate(answer_ids))


def test_beam_search(trained, tokenizer):
    """Three beams run through the same prefill substitution and stop every row at its separator:
    each returned answer's beam score is its log-probability under one full forward divided by its
    length (the beam objective, length_penalty 1). (This used to compare with greedy's answer, which
    beam search does not promise to beat: it may prune greedy's prefix; a retrained fixture showed it.)"""
    sep = tokenizer.eos_token_id
    batch = prompt_batch(tokenizer, QUESTIONS, sep, tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    out = trained.generate(**batch, num_beams=3, max_new_tokens=30, return_dict_in_generate=True, output_scores=True)
    beams = out.sequences[:, width:]
    assert beams.shape[0] == len(QUESTIONS) and beams.shape[1] < 30
    for row, beam_row in enumerate(beams.tolist()):
        assert sep in beam_row
        question = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        answer = beam_row[: beam_row.index(sep) + 1]
        full = answer_log_probability(trained, question, answer) / len(answer)
        assert abs(float(out.sequences_scores[row]) - full) < 1e-4, (QUESTIONS[row], float(out.sequences_scores[row]), full)


def test_generate_matches_full_forward(trained, tokenizer):
    """Greedy tokens from cached generation equal the argmax of one full forward pass
    over the final sequence (emulator states substituted once, at the separator)."""
    sep, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = prompt_batch(tokenizer, QUESTIONS[:1], sep, pad)
    output = trained.generate(**batch, max_new_tokens=12)
    prompt_length = batch["input_ids"].shape[1]
    logits = trained(output, separator_positions=torch.tensor([prompt_length - 1])).logits
    assert torch.equal(logits[0, prompt_length - 1 : -1].argmax(-1), output[0, prompt_length:])


def test_generation_uses_the_cache_even_when_the_config_says_not_to(trained, tokenizer):
    """Training leaves `use_cache=False` in saved configs; without the cache each decode step
    would recompute the prompt without the substituted states. Decode steps must be length 1."""
    lm = trained.student.lm
    saved = lm.config.use_cache, lm.generation_config.use_cache
    lm.config.use_cache = lm.generation_config.use_cache = False
    lengths = []
    handle = get_decoder_layers(lm)[0].register_forward_pre_hook(lambda module, args, kwargs: lengths.append((args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        batch = prompt_batch(tokenizer, QUESTIONS[:2], tokenizer.eos_token_id, tokenizer.pad_token_id)
        with_config_off = trained.generate(**batch, max_new_tokens=6)
        with pytest.raises(ValueError, match="needs the KV cache"):
            trained.generate(**batch, max_new_tokens=6, use_cache=False)
    finally:
        handle.remove()
        lm.config.use_cache, lm.generation_config.use_cache = saved
    assert lengths[0] == batch["input_ids"].shape[1] and set(lengths[1:]) == {1}
    assert torch.equal(with_config_off, trained.generate(**batch, max_new_tokens=6))


def test_trained_coupled_model_needs_its_own_states(trained, tokenizer):
    """After training, the answer loss with each row's own emulated states is lower than with
    the same states handed to other rows: the student reads them."""
    rows = multiplication_dataset(2, 64, seed=11)
    batch = ICoTCollator(tokenizer.pad_token_id, views=("implicit",))(tokenize_dataset(rows, tokenizer, views=("implicit",)).to_list())
    ids, mask, separators = batch["implicit_input_ids"], batch["implicit_attention_mask"], batch["implicit_separators"][:, 0]
    with torch.no_grad():
        states = trained.emulator(ids, mask, separators).predicted_states
        loss = lambda s: trained.student(ids, s, attention_mask=mask, separator_positions=separators, labels=batch["implicit_labels"],  # noqa: E731
                                         states_are_mapped=True).loss
        own, shuffled = loss(states), loss(states[torch.roll(torch.arange(len(ids)), 1)])
    assert own < shuffled, (float(own), float(shuffled))
