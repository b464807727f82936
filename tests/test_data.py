"""Text format errors, token views, label masking, overflow handling, collation."""

import subprocess
import sys

import pytest
import torch
from datasets import Dataset, load_from_disk
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import REPO, SHARED_DATA
from icot_hf.data import (
    ICoTCollator, ICoTFormatError, dataset_from_text_files, load_icot_dataset, parse_icot_line, prompt_batch,
    read_icot_text, save_dataset_dict, tokenize_dataset,
)


@pytest.mark.parametrize(
    "content, message",
    [
        ("1 2 * 3 4||4 6 #### 8 0 4\n1 2 * 3 4 4 6 #### 8\n", r"bad\.txt:2: no '\|\|' between input and chain of thought"),
        ("1 2 * 3 4||4 6 8 0 4\n", r"bad\.txt:1: no '####' before the answer"),
        ("1 2 * 3 4||4 6 ####   \n", r"bad\.txt:1: empty answer after '####'"),
        ("||4 6 #### 8\n", r"bad\.txt:1: empty input"),
        ("", r"bad\.txt: no examples; the file is empty"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ICoTFormatError, match=message):
        read_icot_text(path)


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"1 2||3 #### 4\n5 6||\xff\xfe #### 7\n")
    with pytest.raises(ICoTFormatError, match=r"bad\.txt:2: bytes that are not UTF-8"):
        read_icot_text(path)


def test_convert_script_fails_cleanly_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2||3 #### 4\nno separator here\n")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "convert_icot_text.py"), "--train", str(bad), "--output_dir", str(out)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "bad.txt:2: no '||'" in result.stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").exists(), reason="../shared/data/icot_original not present")
def test_convert_gsm8k_files(tmp_path):
    out = tmp_path / "gsm8k"
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "convert_icot_text.py"), "--valid", str(SHARED_DATA / "gsm8k" / "valid.txt"),
                    "--test", str(SHARED_DATA / "gsm8k" / "test.txt"), "--output_dir", str(out)], check=True, capture_output=True)
    data = load_from_disk(str(out))
    assert len(data["valid"]) == 500 and len(data["test"]) == 1319
    assert data["test"][0]["cot"] == "<<16-3-4=9>> <<9*2=18>>" and data["test"][0]["answer"] == "18"


def test_save_replaces_atomically(tmp_path, small_dataset):
    from datasets import DatasetDict

    target = tmp_path / "ds"
    save_dataset_dict(DatasetDict({"train": small_dataset}), target)
    with pytest.raises(FileExistsError, match="already holds a dataset; pass --overwrite"):
        save_dataset_dict(DatasetDict({"train": small_dataset.select(range(3))}), target)
    save_dataset_dict(DatasetDict({"train": small_dataset.select(range(3))}), target, overwrite=True)
    assert len(load_from_disk(str(target))["train"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_missing_column_error_names_it(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"train": Dataset.from_dict({"question": ["1"], "answer": ["2"]})}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ICoTFormatError, match=r"missing column\(s\) \['input', 'cot'\]"):
        load_icot_dataset(str(tmp_path / "d"))


def test_views_labels_and_separators(tokenizer, small_dataset):
    data = tokenize_dataset(small_dataset, tokenizer)
    sep = tokenizer.eos_token_id
    for row in data:
        for view, parts in (("explicit", ("input", "cot", "answer")), ("implicit", ("input", "answer"))):
            ids, labels, seps = row[f"{view}_input_ids"], row[f"{view}_labels"], row[f"{view}_separators"]
            expected = []
            for part in parts:
                expected += tokenizer(row[part], add_special_tokens=False)["input_ids"] + [sep]
            assert ids == expected
            assert [i for i, t in enumerate(ids) if t == sep] == seps
            assert labels[: seps[0] + 1] == [-100] * (seps[0] + 1)
            assert labels[seps[0] + 1 :] == ids[seps[0] + 1 :]


def test_overflow_error_or_drop(tokenizer, small_dataset, caplog):
    lengths = [len(r) for r in tokenize_dataset(small_dataset, tokenizer)["explicit_input_ids"]]
    limit = min(lengths)  # the 2x2 rows fit, the 3x3 rows do not
    with pytest.raises(ValueError, match=f"exceed the model's context of {limit} tokens.*on_overflow='drop'"):
        tokenize_dataset(small_dataset, tokenizer, max_length=limit)
    kept = tokenize_dataset(small_dataset, tokenizer, max_length=limit, on_overflow="drop")
    assert len(kept) == sum(n <= limit for n in lengths)
    assert "dropped" in caplog.text


def test_empty_dataset_is_an_error(tokenizer):
    with pytest.raises(ICoTFormatError, match="empty"):
        tokenize_dataset(Dataset.from_dict({"input": [], "cot": [], "answer": []}), tokenizer)


@pytest.mark.parametrize("side", ["left", "right"])
def test_collator_pads_and_shifts_separators(tokenizer, small_dataset, side):
    data = tokenize_dataset(small_dataset, tokenizer)
    rows = [data[i] for i in range(6)]
    batch = ICoTCollator(tokenizer.pad_token_id, padding_side=side)(rows)
    for view in ("explicit", "implicit"):
        ids, mask, seps = batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"], batch[f"{view}_separators"]
        assert (ids.gather(1, seps) == tokenizer.eos_token_id).all()
        for i, row in enumerate(rows):
            assert ids[i][mask[i].bool()].tolist() == row[f"{view}_input_ids"]


def test_bpe_tokenizer_places_separators(small_dataset):
    """A real byte-level BPE tokenizer (trained here) merges digits; views still line up."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [f"{r['input']} {r['cot']} {r['answer']}" for r in small_dataset] * 20
    backend.train_from_iterator(text, trainer)
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    data = tokenize_dataset(small_dataset, bpe)
    row = data[0]
    ids, seps = row["explicit_input_ids"], row["explicit_separators"]
    assert len(ids) < 2 * len(row["input"].split() + row["cot"].split() + row["answer"].split())  # merges happened
    assert [ids[s] for s in seps] == [bpe.eos_token_id] * 3
    assert bpe.decode(ids[seps[1] + 1 : seps[2]]).strip() == row["answer"]
    prompts = prompt_batch(bpe, [r["input"] for r in small_dataset][:4], bpe.eos_token_id, bpe.eos_token_id)
    assert (prompts["input_ids"][:, -1] == bpe.eos_token_id).all()


def test_text_files_to_dataset_dict(tmp_path):
    (tmp_path / "a.txt").write_text("1 2||3 #### 4\n\n5 6||7 #### 8\n")
    data = dataset_from_text_files({"train": tmp_path / "a.txt"})
    assert data["train"]["answer"] == ["4", "8"]
    assert parse_icot_line("q||c #### 1,234")["answer"] == "1,234"
    assert torch.is_tensor(ICoTCollator(0, views=("implicit",))(tokenize_dataset(data["train"], __import__("icot_hf").build_digit_tokenizer(), views=("implicit",)).to_list())["implicit_input_ids"])


def test_answer_normalisation_like_the_paper():
    from icot_hf.evaluation import load_exact_match, normalize_answer

    assert normalize_answer(" 1,234 ") == "1234" == normalize_answer("#### 1,234")
    assert normalize_answer("The answer #### 8 5  6") == "8 5 6"
    metric = load_exact_match()
    assert metric.compute(predictions=["1,234", "5", "-3"], references=["1234", "6", "-3"])["exact_match"] == pytest.approx(2 / 3)


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").exists(), reason="../shared/data/icot_original not present")
def test_gsm8k_real_lines_parse_with_equations_and_negative_answers():
    rows = read_icot_text(SHARED_DATA / "gsm8k" / "train_no_aug.txt")
    assert len(rows) == 6973
    assert all(r["answer"] and "####" not in r["answer"] for r in rows)
    assert any(r["answer"].startswith("-") for r in rows)
    assert rows[0]["cot"].startswith("The annual budget for policing is 32 / 2 = $16 million.")
