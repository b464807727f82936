"""Model and dataset cards, and pushing artefacts to the Hugging Face Hub.

Cards are rendered from the templates in the package's `model_cards/` folder (method,
task, base model, training config, results, citation, how to load). Pushing uses the real
`huggingface_hub` API; when the Hub cannot be reached the error says so in one line and
nothing local is touched (we only read local folders here).
"""

from __future__ import annotations

import os
from pathlib import Path

TEMPLATES = Path(os.environ.get("ICOT_MODEL_CARDS", Path(__file__).resolve().parent / "model_cards"))  # package data

STAGES = {
    "teacher": ("Explicit-CoT teacher", "A causal LM that writes its chain of thought (`input S cot S answer S`) before the answer.",
                "from transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\ntokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")"),
    "no_cot": ("No-CoT baseline", "A causal LM trained to answer right after the question, with no chain of thought.",
               "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")"),
    "student": ("Mind-reading student", "A causal LM that answers from a teacher's hidden states, read at the separator of every layer.",
                "import icot_hf  # or trust_remote_code=True without icot_hf installed\nfrom transformers import AutoModel\nstudent = AutoModel.from_pretrained(\"{repo_id}\")"),
    "emulator": ("Thought emulator", "Predicts a CoT teacher's per-layer hidden states from the question alone.",
                 "import icot_hf  # or trust_remote_code=True without icot_hf installed\nfrom transformers import AutoModel\nemulator = AutoModel.from_pretrained(\"{repo_id}\")"),
    "stepwise": ("Implicit-CoT model (stepwise internalization, ICoT-SI)", "A causal LM trained while its chain of thought was removed step by step; it answers with the CoT that remains (none once fully removed). A model trained with keep_positions is an ImplicitCoTStepwiseForCausalLM, which applies the positions its removed CoT skips itself: answer with generate or pipeline('text-generation') on an `input S` prompt (import icot_hf, or trust_remote_code=True).",
                 "import icot_hf  # or trust_remote_code=True without icot_hf installed\nfrom transformers import pipeline\ngenerator = pipeline(\"text-generation\", model=\"{repo_id}\")\nprint(generator(\"1 2 3 4 * 5 6 7 8\" + generator.tokenizer.eos_token, max_new_tokens=64))"),
    "coconut": ("Continuous-thought model (Coconut)", "A causal LM that reasons in continuous thought (Hao et al. 2024): after the question, each `<|latent|>` position of its thought block is fed the last hidden state of the position before it, replacing reasoning steps it no longer writes. Prompt with model.prompt(question); generate in left-padded batches.",
                "import icot_hf  # or trust_remote_code=True without icot_hf installed\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\ntokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")\nprint(model.answer([\"1 2 3 4 * 5 6 7 8\"], tokenizer))"),
    "codi": ("Continuous-thought model (CODI)", "A causal LM trained as its own teacher (Shen et al. 2025): after the question and `<|bot|>` it runs a fixed number of continuous thoughts (each the projected last hidden state of the one before), then `<|eot|>` and the answer. Answer with model.answer(questions, tokenizer), in batches, or with pipeline('text-generation') on model.prompt(question, tokenizer).",
             "import icot_hf  # or trust_remote_code=True without icot_hf installed\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\ntokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")\nprint(model.answer([\"Tom has 3 apples and buys 4 more. How many apples does he have?\"], tokenizer))"),
    "implicit": ("Implicit-CoT model (emulator + student)", "Answers multi-step problems with no chain of thought: the emulator predicts the teacher's states, the student answers from them.",
                 "import icot_hf  # or trust_remote_code=True without icot_hf installed\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\ntokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")\nprint(model.answer([\"1 2 3 4 * 5 6 7 8\"], tokenizer))"),
}


class HubUnavailableError(OSError):
    """The Hub could not be reached; local artefacts are untouched. An OSError, so the command
    lines (icot_hf.cli.run) print it as one line."""


# Never uploaded: the Trainer's pickled arguments (they hold --hub_token when one was passed),
# run bookkeeping, checkpoints, staging files, and the folder's own README (the card replaces it
# on the Hub, uploaded from memory; the local file is left as it is).
NOT_UPLOADED = ["training_args.bin", "checkpoint-*", "incomplete-checkpoint-*", "*.tmp", "run_settings.json", "run_checkpoints.json",
                ".icot_run.lock", "README.md", "runs/*", "progress.json"]


def _template(name: str) -> str:
    path = TEMPLATES / name
    if not path.exists():
        raise FileNotFoundError(f"model card template {path} not found; set ICOT_MODEL_CARDS to the model_cards/ folder")
    return path.read_text(encoding="utf-8")


def results_markdown(metrics: dict | None) -> str:
    if not metrics:
        return "Not measured yet."
    rows = ["| metric | value |", "|---|---|"]
    for key, value in sorted(metrics.items()):
        rows.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(rows)


def render_model_card(stage: str, repo_id: str, task: str, base_model: str | None = None, dataset: str | None = None,
                      training_summary: str = "", metrics: dict | None = None) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    title, description, usage = STAGES[stage]
    return _template("model.md").format(
        title=f"{title}: {task}",
        description=description,
        stage=stage,
        stage_tag=f"icot-{stage}",
        task=task,
        base_model=base_model or "trained from scratch",
        base_model_line=f"base_model: {base_model}\n" if base_model and "/" in base_model and not os.path.exists(base_model) else "",
        dataset=dataset or "custom",
        training_summary=training_summary or "see training_args.bin",
        results=results_markdown(metrics),
        usage=usage.format(repo_id=repo_id),
    )


def render_dataset_card(repo_id: str, task: str, splits: dict[str, int], description: str = "") -> str:
    return _template("dataset.md").format(
        title=f"ICoT {task}", task=task, repo_id=repo_id, description=description,
        splits=", ".join(f"{name}: {size:,}" for name, size in splits.items()),
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, OSError, HfHubHTTPError]
    # huggingface_hub talks through httpx (1.x) or httpx2 (2.x): a refused connection is their
    # ConnectError, which is no OSError; older versions used requests.
    import importlib

    for module, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _push(action, repo_id: str, local: str | None = None):
    try:
        return action()
    except _network_errors() as error:
        kept = f"; nothing local was changed ({local} is as it was)" if local else "; nothing local was changed"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HubUnavailableError(f"could not push to the Hub repo {repo_id}: {reason}{kept}") from None


def push_folder(folder: str, repo_id: str, stage: str | None = None, task: str | None = None, card: str | None = None,
                **card_kwargs) -> str:
    """Upload `folder` (less NOT_UPLOADED) with the model card as its README.md: `card`, or one
    rendered for `stage` and `task`. The folder is only read: the card goes up from memory. The one
    publishing path: `recipes/push.py` and every trainer's `push_to_hub` come here."""
    from huggingface_hub import HfApi

    if card is None:
        card = render_model_card(stage, repo_id, task, **card_kwargs)
    api = HfApi()

    def upload():
        api.create_repo(repo_id, exist_ok=True)
        result = api.upload_folder(repo_id=repo_id, folder_path=folder, ignore_patterns=NOT_UPLOADED)
        api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id)
        return result

    return _push(upload, repo_id, folder)


def push_dataset(dataset, repo_id: str, task: str, description: str = "") -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard(render_dataset_card(repo_id, task, {k: len(v) for k, v in dataset.items()}, description))
    _push(lambda: dataset.push_to_hub(repo_id), repo_id, "the dataset saved on disk")
    _push(lambda: card.push_to_hub(repo_id, repo_type="dataset"), repo_id)
