"""Model/dataset cards from model_cards/ templates, and pushing when the Hub is unreachable."""

import importlib.util

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
    assert "\n" not in message and "me/icot-4x4" in message and "nothing local was changed" in message
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "README.md").exists()  # the card is uploaded from memory, never written into the folder


class FakeApi:
    """Records what push_folder would send; `fail` makes create_repo fail as a network does."""

    def __init__(self, fail=None):
        self.fail, self.calls = fail, []

    def create_repo(self, repo_id, exist_ok=False):
        if self.fail:
            raise self.fail
        self.calls.append(("create_repo", repo_id))

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None):
        import fnmatch
        from pathlib import Path

        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        sent = [f for f in files if not any(fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f.split("/")[0], pattern) for pattern in ignore_patterns)]
        self.calls.append(("upload_folder", sorted(sent)))

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id):
        self.calls.append(("upload_file", path_in_repo, path_or_fileobj))


def test_push_leaves_the_users_readme_and_never_uploads_secrets(tmp_path, monkeypatch):
    import huggingface_hub

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    for name, content in (("model.safetensors", b"w"), ("config.json", b"{}"), ("README.md", b"my own notes"),
                          ("training_args.bin", b"hub_token=hf_secret"), ("run_settings.json", b"{}")):
        (tmp_path / name).write_bytes(content)
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "optimizer.pt").write_bytes(b"o")
    push_folder(str(tmp_path), "me/icot-4x4", "teacher", "4x4 multiplication")
    assert (tmp_path / "README.md").read_bytes() == b"my own notes"
    uploaded = dict((c[0], c[1:]) for c in api.calls)
    assert uploaded["upload_folder"] == (["config.json", "model.safetensors"],)
    assert uploaded["upload_file"][0] == "README.md" and b"Explicit-CoT teacher" in uploaded["upload_file"][1]


def test_push_without_network_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")  # what this huggingface_hub talks through
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: FakeApi(fail=httpx.ConnectError("[Errno -3] Temporary failure in name resolution")))
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(HubUnavailableError, match="could not push to the Hub repo me/x: .*name resolution; nothing local") as error:
        push_folder(str(tmp_path), "me/x", "teacher", "4x4")
    assert isinstance(error.value, OSError) and "\n" not in str(error.value)


def test_dataset_script_push_offline_is_one_line_after_saving(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "data"
    result = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "20",
                             "--valid_size", "5", "--test_size", "5", "--output_dir", str(out), "--push_to_hub", "me/icot-2x2"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert "could not push to the Hub repo me/icot-2x2" in result.stderr and (out / "dataset_dict.json").is_file()


def test_trainer_card_and_push_take_the_one_publishing_path(tmp_path, monkeypatch, tokenizer):
    """`trainer.create_model_card` renders icot_hf's card (stage, base model, dataset, results,
    both papers' citations); `trainer.push_to_hub` uploads through `push_folder`: the card from
    memory, never training_args.bin or checkpoints."""
    import huggingface_hub
    from transformers import AutoModelForCausalLM

    from conftest import multiplication_dataset, tiny_config
    from icot_hf import TeacherConfig, TeacherTrainer

    base = tmp_path / "tiny-base"
    AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=1)).save_pretrained(base)
    data = multiplication_dataset(2, 32, seed=1)
    args = TeacherConfig(output_dir=str(tmp_path / "teacher"), max_steps=2, per_device_train_batch_size=8, eval_strategy="steps",
                         eval_steps=2, save_strategy="no", report_to="none", use_cpu=True, hub_model_id="me/icot-2x2-teacher")
    trainer = TeacherTrainer(model=str(base), args=args, train_dataset=data, eval_dataset=data.select(range(8)), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(dataset_name="2x2 multiplication")
    card = (tmp_path / "teacher" / "README.md").read_text()
    for expected in ("- icot-teacher", "Stage: teacher", f"Base model: {base}", "2x2 multiplication", "eval_loss",
                     "deng2023implicit", "deng2024explicit", "TeacherTrainer, 2 steps"):
        assert expected in card, expected
    assert "https://github.com/" not in card

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    (tmp_path / "teacher" / "checkpoint-1").mkdir()
    trainer.push_to_hub(dataset_name="2x2 multiplication")
    uploaded = dict((c[0], c[1:]) for c in api.calls)
    assert api.calls[0] == ("create_repo", "me/icot-2x2-teacher")
    sent = uploaded["upload_folder"][0]
    assert "model.safetensors" in sent and "training_args.bin" not in sent and not any(f.startswith("checkpoint-") for f in sent)
    assert uploaded["upload_file"][0] == "README.md" and b"Stage: teacher" in uploaded["upload_file"][1]
