"""Model/dataset cards from model_cards/ templates, and pushing when the Hub is unreachable."""

import pytest

from icot_hf.hub import HubUnavailableError, push_folder, render_dataset_card, render_model_card


def test_model_card_has_method_task_results_citation_and_usage():
    card = render_model_card("implicit", "me/icot-4x4", "4x4 multiplication", base_model="openai-community/gpt2", dataset="me/icot-4x4-data",
                             training_summary="lr 5e-5, batch 32", metrics={"eval_exact_match": 0.97, "train_loss": 0.01})
    assert card.startswith("---\nlibrary_name: transformers")
    assert "base_model: openai-community/gpt2" in card and "- me/icot-4x4-data" in card
    assert "| eval_exact_match | 0.97 |" in card and "lr 5e-5, batch 32" in card
    assert "@article{deng2023implicit" in card and 'AutoModelForCausalLM.from_pretrained("me/icot-4x4")' in card
    with pytest.raises(ValueError, match="stage must be one of"):
        render_model_card("critic", "me/x", "t")


def test_dataset_card_lists_splits():
    card = render_dataset_card("me/data", "4x4 multiplication", {"train": 808000, "test": 1000})
    assert "train: 808,000, test: 1,000" in card and 'load_dataset("me/data")' in card


def test_push_without_hub_fails_in_one_line_and_keeps_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(HubUnavailableError) as error:
        push_folder(str(tmp_path), "me/icot-4x4", "teacher", "4x4 multiplication")
    message = str(error.value)
    assert "\n" not in message and "me/icot-4x4" in message and "is intact" in message
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "README.md").exists()
