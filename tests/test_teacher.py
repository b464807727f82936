"""Teacher state positions and extraction, explicit-CoT generation stopping per row."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from conftest import tiny_config
from icot_hf.hooks import get_decoder_layers
from icot_hf.data import ICoTCollator, prompt_batch, tokenize_dataset
from icot_hf.generation import cut_after_separators, generate_explicit, generation_kwargs, new_token_budget
from icot_hf.kd.teacher_states import extract_teacher_states, parse_delta, state_grid_positions


@pytest.mark.parametrize(
    "s1, s2, layers, delta, expected",
    [
        # dynamic: delta = (s2 - s1) / (L - 1), positions round half to even
        (5, 14, 4, "dynamic", [5, 8, 11, 14]),
        (5, 10, 4, "dynamic", [5, 7, 8, 10]),  # 6.67 -> 7, 8.33 -> 8
        (3, 8, 5, "dynamic", [3, 4, 6, 7, 8]),  # 4.25 -> 4, 5.5 -> 6 (even), 6.75 -> 7
        (0, 3, 3, "dynamic", [0, 2, 3]),  # 1.5 -> 2 (even)
        (2, 7, 3, "dynamic", [2, 4, 7]),  # 4.5 -> 4 (even)
        # integer delta, clamped to s2
        (5, 14, 4, 2, [5, 7, 9, 11]),
        (5, 10, 4, 3, [5, 8, 10, 10]),
    ],
)
def test_diagonal_positions(s1, s2, layers, delta, expected):
    layer_index, positions = state_grid_positions(torch.tensor([s1]), torch.tensor([s2]), layers, delta)
    assert positions.tolist() == [expected]
    assert layer_index.tolist() == [list(range(layers))]


def test_positions_vary_per_row_and_patterns():
    s1, s2 = torch.tensor([2, 6]), torch.tensor([8, 9])
    _, diagonal = state_grid_positions(s1, s2, 4, "dynamic")
    assert diagonal.tolist() == [[2, 4, 6, 8], [6, 7, 8, 9]]
    assert state_grid_positions(s1, s2, 4, pattern="first_column")[1].tolist() == [[2] * 4, [6] * 4]
    assert state_grid_positions(s1, s2, 4, pattern="last_column")[1].tolist() == [[8] * 4, [9] * 4]
    layers, positions = state_grid_positions(s1, s2, 4, pattern="top_row")
    assert layers.tolist() == [[3] * 4] * 2 and positions.tolist() == diagonal.tolist()
    assert state_grid_positions(s1, s2, 4, pattern="bottom_row")[0].tolist() == [[0] * 4] * 2


@pytest.mark.parametrize("bad", ["fast", 0, -2, "1.5", 1.5])
def test_bad_delta_is_rejected(bad):
    with pytest.raises(ValueError, match="delta must be 'dynamic' or a positive integer"):
        parse_delta(bad)


def test_extraction_matches_hidden_states_by_hand(tokenizer, small_dataset):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=4)).eval()
    data = tokenize_dataset(small_dataset, tokenizer, views=("explicit",))
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))([data[i] for i in range(8)])
    states = extract_teacher_states(teacher, batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], delta="dynamic")
    assert states.shape == (8, 4, 32)
    for row in range(8):
        ids = torch.tensor([data[row]["explicit_input_ids"]])
        hidden = teacher(ids, output_hidden_states=True).hidden_states
        s1, s2 = data[row]["explicit_separators"][:2]
        for layer in range(4):
            t = min(int(torch.round(torch.tensor(s1 + layer * (s2 - s1) / 3))), s2)
            expected = torch.nn.functional.layer_norm(hidden[layer][0, t], (32,), eps=1e-5)
            torch.testing.assert_close(states[row, layer], expected, atol=1e-5, rtol=1e-5)
    # normalised: zero mean, unit variance per state, no affine weights
    torch.testing.assert_close(states.mean(-1), torch.zeros(8, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("pattern", ["diagonal", "first_column", "last_column", "top_row", "bottom_row"])
def test_extraction_runs_only_the_blocks_it_reads(tokenizer, small_dataset, kind, pattern):
    """The same states as the full forward's hidden_states, without the output layer and the
    blocks after the last layer read (bottom_row reads layer 0 only: no block runs)."""
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer, layers=4)).eval()
    data = tokenize_dataset(small_dataset, tokenizer, views=("explicit",))
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))([data[i] for i in range(8)])
    ids, mask, seps = batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"]
    with torch.no_grad():
        hidden = torch.stack(teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[:4])
    layer_index, position = state_grid_positions(seps[:, 0], seps[:, 1], 4, "dynamic", pattern)
    expected = torch.nn.functional.layer_norm(hidden[layer_index, torch.arange(8).unsqueeze(1), position], (32,), eps=1e-5)
    calls = []
    handles = [teacher.get_output_embeddings().register_forward_hook(lambda *a: calls.append("output layer"))]
    handles += [block.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, block in enumerate(get_decoder_layers(teacher))]
    states = extract_teacher_states(teacher, ids, mask, seps, delta="dynamic", pattern=pattern)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(states, expected, atol=1e-5, rtol=1e-5)
    assert calls == list(range(int(layer_index.max())))  # blocks before the last one read, nothing after


class ForceSeparators(LogitsProcessor):
    """Makes row r emit the separator exactly at the generation steps in steps[r]."""

    def __init__(self, prompt_length, separator, steps, filler):
        self.prompt_length, self.separator, self.steps, self.filler = prompt_length, separator, steps, filler

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, -1e9)
        for row, steps in enumerate(self.steps):
            forced[row, self.separator if step in steps else self.filler[row]] = 0
        return forced


def test_explicit_generation_stops_each_row_after_its_answer(tokenizer):
    teacher = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).eval()
    sep, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    digit = tokenizer.convert_tokens_to_ids
    batch = prompt_batch(tokenizer, ["1 2 * 3 4", "5 6 7 * 8 9 1"], sep, pad)
    length = batch["input_ids"].shape[1]
    assert batch["attention_mask"][0].tolist()[:2] == [0, 0]  # left padded
    forced = LogitsProcessorList([ForceSeparators(length, sep, [{2, 4}, {3, 8}], [digit("7"), digit("3")])])
    output = teacher.generate(**batch, **generation_kwargs(sep, pad, length, 2, 20), logits_processor=forced)
    generated = output[:, length:]
    assert generated.shape[1] == 9  # stopped when the slower row finished its answer, not at 20
    assert cut_after_separators(generated, sep, 1) == [[digit("7")] * 2, [digit("3")] * 3]
    assert cut_after_separators(generated, sep, 2) == [[digit("7")], [digit("3")] * 4]
    plain = generate_explicit(teacher, **batch, separator_id=sep, pad_token_id=pad, max_new_tokens=6)
    assert len(plain["cot"]) == 2  # runs without forcing, cut at the budget


def test_generation_budget_stays_inside_the_context(tokenizer):
    """A budget past the context is capped (GPT-2 would index past its position table);
    a prompt that already fills the context is a clear error."""
    config = tiny_config("gpt2", tokenizer)
    config.n_positions = 16
    teacher = AutoModelForCausalLM.from_config(config).eval()
    sep, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = prompt_batch(tokenizer, ["1 2 3 * 4 5 6"], sep, pad)  # 8 tokens
    never_stop = LogitsProcessorList([ForceSeparators(batch["input_ids"].shape[1], sep, [set()], [tokenizer.convert_tokens_to_ids("7")])])
    out = teacher.generate(**batch, **generation_kwargs(sep, pad, 8, 2, new_token_budget(teacher, 8, 200)), logits_processor=never_stop)
    assert out.shape[1] == 16
    assert len(generate_explicit(teacher, **batch, separator_id=sep, pad_token_id=pad, max_new_tokens=200)["cot"][0]) <= 8
    with pytest.raises(ValueError, match="fill the model's 16-token context"):
        new_token_budget(teacher, 16, 10)
