"""CODI as a library: a plain LM becomes a CODI model with the released token ids, a TRL-style run from
raw multiplication data on a tiny Llama (LoRA or full), the saved folder through AutoModelForCausalLM
(and trust_remote_code), batched answers equal to one-at-a-time answers, the padding options, dropout's
second teacher pass, and bad input refused with a line that says why."""

import json

import pytest
import torch
from datasets import Dataset

from conftest import REPO

LINES = ["1 3 4 5 * 8 1 9 3||8 0 7 6 + 0 4 4 2 0 ( 8 4 1 9 0 ) + 0 0 9 5 1 1 ( 8 4 0 5 2 1 ) + 0 0 0 3 0 2 4 ( 8 4 0 8 2 3 4 ) #### 8 4 0 8 2 3 4",
         "2 4 * 5 1||0 2 + 0 4 2 1 ( 0 6 2 1 ) #### 0 6 2 1",
         "3 2 1 * 4||2 8 4 #### 2 8 4"]
QUESTIONS = ["1 3 4 5 * 8 1 9 3", "2 4 * 5 1", "3 2 1 * 4", "9 * 9", "5 5 5 5 * 1 1 1 1"]


def raw_dataset(n=24):
    rows = []
    for i in range(n):
        question, rest = LINES[i % len(LINES)].split("||")
        cot, answer = rest.split(" #### ")
        rows.append({"input": question, "cot": cot, "answer": answer})
    return Dataset.from_list(rows)


def digit_tokenizer():
    from icot_hf.tokenization import build_digit_tokenizer

    return build_digit_tokenizer()


def tiny_llama(tokenizer, dropout=0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, attention_dropout=dropout,
                                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))


def tiny_gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=256, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=tokenizer.eos_token_id,
                                      bos_token_id=tokenizer.eos_token_id))


def digit_args(tmp_path, **overrides):
    from icot_hf import CODIConfig

    settings = dict(output_dir=str(tmp_path / "codi"), num_latent=2, prj_dim=32, answer_prefix="#### ", num_train_epochs=2,
                    per_device_train_batch_size=8, learning_rate=3e-3, eval_exact_match_samples=6, max_new_tokens=12, eval_strategy="epoch",
                    save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True)
    return CODIConfig(**{**settings, **overrides})


@pytest.fixture(scope="module", params=["full", "lora"])
def trained(request, tmp_path_factory):
    from icot_hf import CODITrainer

    tmp_path = tmp_path_factory.mktemp(f"codi_{request.param}")
    tokenizer = digit_tokenizer()
    extra = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="q_proj,v_proj") if request.param == "lora" else {}
    trainer = CODITrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path, **extra), train_dataset=raw_dataset(),
                          eval_dataset=raw_dataset(6), processing_class=tokenizer)
    trainer.train()
    folder = tmp_path / "saved"
    trainer.save_model(folder)
    tokenizer.save_pretrained(folder)
    return trainer, folder, request.param


def test_a_plain_gpt2_gets_the_released_token_ids():
    """GPT-2's tokenizer has no pad: `[PAD]` becomes vocab_size, `<|bot|>` + 1, `<|eot|>` + 2, as the released
    code numbers them (here the fixture's 257-token byte-level GPT-2 tokenizer)."""
    from transformers import AutoTokenizer

    from icot_hf import CODIForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "reference_codi" / "tokenizer")
    model = CODIForCausalLM.from_base(tiny_gpt2(tokenizer), tokenizer, num_latent=3)
    assert (tokenizer.pad_token_id, model.config.bot_id, model.config.eot_id) == (257, 258, 259)
    assert model.get_input_embeddings().weight.shape[0] == 260
    assert [type(m).__name__ for m in model.prj] == ["Dropout", "Linear", "GELU", "Linear", "LayerNorm"]


def test_training_logs_the_loss_parts_and_exact_match(trained):
    trainer, _, _ = trained
    logged = [entry for entry in trainer.state.log_history if "ce_loss" in entry]
    assert logged and all(k in logged[0] for k in ("distill_loss", "ref_ce_loss"))
    evaluations = [entry for entry in trainer.state.log_history if "eval_exact_match" in entry]
    assert len(evaluations) == 2 and all(0.0 <= e["eval_exact_match"] <= 1.0 for e in evaluations)
    assert trainer.train_dataset.num_rows == 24


def test_the_saved_folder_loads_with_automodel_and_answers_in_batches(trained):
    """The folder (full, or LoRA with its base) loads through AutoModelForCausalLM; a left-padded batch gives
    every question the tokens it gets alone; the bundled code (trust_remote_code) answers the same."""
    import icot_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, folder, kind = trained
    assert json.loads((folder / "config.json").read_text())["model_type"] == "codi"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "CODIForCausalLM" and model.config.num_latent == 2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.check_tokenizer(tokenizer)
    batch = model.prompt_ids(tokenizer, QUESTIONS)
    out = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    for i, question in enumerate(QUESTIONS):
        alone = model.prompt_ids(tokenizer, [question])
        single = model.generate(**alone, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        single = single[0, alone["input_ids"].shape[1]:].tolist()
        assert out[i, width:].tolist()[:len(single)] == single, f"row {i}"
    trained_model = trainer.accelerator.unwrap_model(trainer.model).eval()
    assert model.answer(QUESTIONS, tokenizer, max_new_tokens=10) == trained_model.answer(QUESTIONS, tokenizer, max_new_tokens=10)
    if kind == "full":
        remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        assert torch.equal(remote.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id), out)


def test_generate_decodes_from_the_thoughts_even_where_the_folder_says_no_cache(trained):
    """A folder saved after training says use_cache=False. generate keeps the cache on regardless: the thoughts
    exist only there (without it, decoding recomputed each step from the ids, where they are placeholders, at
    1.6 examples/s on the 4x4 preset's model). Its tokens are a greedy decode written out by hand: the
    question and thoughts (`think`), then `<|eot|>` and one token at a time through the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, folder, kind = trained
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.lm.config.use_cache = model.lm.generation_config.use_cache = False
    batch = model.prompt_ids(tokenizer, QUESTIONS[:1])
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="needs the KV cache"):
        model.generate(**batch, max_new_tokens=6, use_cache=False)
    with torch.no_grad():
        cache, mask, position = model.think(batch["input_ids"], batch["attention_mask"])
        step = torch.tensor([[model.config.eot_id] + ([] if model.config.remove_eos else [model.config.eos_token_id])])
        written = []
        for _ in range(6):
            mask = torch.cat([mask, mask.new_ones(1, step.shape[1])], dim=1)
            positions = position + torch.arange(step.shape[1])
            result = model.lm(input_ids=step, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            cache, position = result.cache, positions[:, -1:] + 1
            logits = result.logits[0, -1]
            logits[model.config.eot_id] = float("-inf")  # never emitted, as released
            step = logits.argmax().view(1, 1)
            written.append(int(step))
    assert out[0, -6:].tolist() == written


def test_pipeline_text_generation_answers_from_the_documented_prompt(trained):
    """pipeline("text-generation") on the folder, prompted with `model.prompt(question, tokenizer)`, writes what
    `model.answer` reads (the thoughts' placeholders and the special tokens are not in its text)."""
    from transformers import pipeline

    _, folder, kind = trained
    if kind != "full":
        pytest.skip("the full run's folder")
    generator = pipeline("text-generation", model=str(folder))
    prompts = [generator.model.prompt(q, generator.tokenizer) for q in QUESTIONS[:3]]
    out = generator(prompts, max_new_tokens=10, do_sample=False)
    answers = generator.model.answer(QUESTIONS[:3], generator.tokenizer, max_new_tokens=10)
    for prompt, result, answer in zip(prompts, out, answers):
        text = result[0]["generated_text"]
        assert text.startswith(prompt) and answer in text[len(prompt):]


def test_lora_trains_the_adapters_and_the_projection_only(trained):
    trainer, _, kind = trained
    if kind != "lora":
        pytest.skip("the LoRA run")
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("prj.") for name in trainable)
    assert any(name.startswith("prj.") for name in trainable)


def codi_batch(tokenizer, model, rows):
    from icot_hf.codi.data import CODICollator, CODIDataSettings, encode_example

    settings = CODIDataSettings(answer_prefix="#### ")
    return CODICollator(tokenizer.pad_token_id)([encode_example(r, tokenizer, model.config.bot_id, model.config.eot_id, settings) for r in rows])


@pytest.mark.parametrize("mask_padding", [True, False])
def test_mask_padding_trains_a_padded_row_as_it_would_alone(mask_padding):
    """With mask_padding the student's logits for a short question in a batch with a long one equal its
    logits alone; as released (mask_padding off), its thoughts attend to its padding and they differ."""
    from icot_hf import CODIForCausalLM
    from icot_hf.codi import CODILoss

    tokenizer = digit_tokenizer()
    model = CODIForCausalLM.from_base(tiny_gpt2(tokenizer), tokenizer, num_latent=2, prj_dim=32, answer_prefix="#### ").eval()
    rows = list(raw_dataset(3))
    long_and_short, short = codi_batch(tokenizer, model, [rows[0], rows[1]]), codi_batch(tokenizer, model, [rows[1]])
    settings = CODILoss(mask_padding=mask_padding)
    with torch.no_grad():
        together = model(**long_and_short, loss_settings=settings).logits[1]
        alone = model(**short, loss_settings=settings).logits[0]
    length = short["decoder_input_ids"].shape[1]
    assert torch.allclose(together[:length], alone, atol=1e-5) == mask_padding


def test_with_dropout_the_teacher_runs_twice_as_released():
    """Dropout on: a no-grad teacher pass for the targets and one with gradients for its loss (different
    masks, as released); dropout off: one pass whose detached states are the targets."""
    from icot_hf import CODIForCausalLM

    tokenizer = digit_tokenizer()
    calls = {}
    for dropout in (0.0, 0.1):
        model = CODIForCausalLM.from_base(tiny_llama(tokenizer, dropout=dropout), tokenizer, num_latent=2, prj_dim=32,
                                          answer_prefix="#### ").train()
        count = [0]
        model.lm.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        model(**codi_batch(tokenizer, model, list(raw_dataset(2))))
        calls[dropout] = count[0]
    assert calls == {0.0: 1 + 2 + 1 + 1, 0.1: 2 + 1 + 2 + 1}  # teacher(s), question, 2 thoughts, answer


def test_bad_input_is_refused_with_the_reason(tmp_path):
    from icot_hf import CODIConfig, CODITrainer

    tokenizer = digit_tokenizer()
    with pytest.raises(ValueError, match="needs columns input/cot/answer"):
        CODITrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path), processing_class=tokenizer,
                    train_dataset=Dataset.from_list([{"input": "1 * 2", "answer": "2"}]))
    negative = Dataset.from_list([{"input": "1 * 2", "cot": "2", "answer": "-2"}])
    with pytest.raises(ValueError, match="none of its 1 examples is kept"):
        CODITrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path), processing_class=tokenizer, train_dataset=negative)
    with pytest.raises(ValueError, match="num_latent must be >= 1"):
        CODIConfig(output_dir=str(tmp_path), num_latent=0, use_cpu=True)
    with pytest.raises(ValueError, match="answer_prefix 'The answer is: ' is not text this tokenizer can write"):
        CODITrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path, answer_prefix="The answer is: ", eval_strategy="no"), processing_class=tokenizer,
                    train_dataset=raw_dataset(2))
    coconut_folder = tmp_path / "coconut"
    coconut_folder.mkdir()
    (coconut_folder / "config.json").write_text(json.dumps({"model_type": "coconut"}))
    with pytest.raises(ValueError, match="another icot_hf method"):
        CODITrainer(model=str(coconut_folder), args=digit_args(tmp_path), processing_class=tokenizer, train_dataset=raw_dataset(2))


@pytest.mark.parametrize("preset", ["4x4_mult/codi.yaml", "gsm8k/paper/codi.yaml", "gsm8k/paper/codi_llama1b.yaml"])
def test_presets_parse(preset, tmp_path):
    from icot_hf import CODIConfig
    from icot_hf.recipe_utils import ScriptArguments, parse_args

    path = REPO / "recipes" / "configs" / preset
    script, args = parse_args(ScriptArguments, CODIConfig, argv=["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false"])
    assert args.num_latent == 6 and args.use_prj and args.distill_loss_div_std
    if preset.endswith("llama1b.yaml"):  # the released scripts/train_llama1b_gsm8k-aug.sh
        assert (args.learning_rate, args.num_train_epochs, args.distill_loss_factor, args.prj_dim, args.max_token_num) == (8e-4, 10, 20.0, 2048, 200)
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 128 and args.distill_offset == -1
    elif "paper" in preset:  # the released scripts/train_gpt2_gsm8k-aug.sh
        assert script.model_name_or_path == "gpt2" and args.prj_dim == 768 and args.remove_eos and args.answer_prefix == "The answer is: "
        assert (args.learning_rate, args.weight_decay, args.warmup_steps, args.max_grad_norm, args.seed) == (3e-3, 0.1, 0.03, 2.0, 11)
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 128 and args.num_train_epochs == 40
        lora = args.lora_config()
        assert (lora.r, lora.lora_alpha, lora.lora_dropout, sorted(lora.target_modules)) == (128, 32, 0.1, ["c_attn", "c_fc", "c_proj"])


def test_recipe_trains_from_a_teacher_folder_and_is_a_row_of_the_results_table(tmp_path):
    """`icot-hf codi` on the CPU preset, shrunk: a teacher folder and a saved dataset in, a CODIForCausalLM folder with
    its completion marker out; then `icot-hf evaluate --codi_model` puts it in the shared table (and refuses it under
    another method's flag)."""
    import os
    import subprocess
    import sys

    from datasets import DatasetDict
    from transformers import AutoModelForCausalLM

    import icot_hf  # noqa: F401

    tokenizer = digit_tokenizer()
    tiny_gpt2(tokenizer).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    DatasetDict(train=raw_dataset(16), valid=raw_dataset(4), test=raw_dataset(8)).save_to_disk(str(tmp_path / "data"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-c", "from icot_hf.cli import main; main()"]
    run = subprocess.run([*cli, "codi", "--config", "4x4_mult/codi", "--teacher_name_or_path", str(tmp_path / "teacher"),
                          "--dataset_name_or_path", str(tmp_path / "data"), "--output_dir", str(tmp_path / "codi"), "--max_train_samples", "16",
                          "--num_train_epochs", "1", "--num_latent", "2", "--prj_dim", "32", "--per_device_train_batch_size", "8",
                          "--eval_exact_match_samples", "4", "--cpu_bf16", "false", "--use_cpu", "true", "--report_to", "none"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "codi" / "training_complete.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "codi")
    assert type(model).__name__ == "CODIForCausalLM" and model.config.num_latent == 2 and not model.config.remove_eos
    evaluate = [*cli, "evaluate", "--task", "tiny", "--dataset_name_or_path", str(tmp_path / "data"), "--codi_model", str(tmp_path / "codi"),
                "--batch_sizes", "1", "4", "--max_examples", "8", "--max_examples_batch1", "2", "--output_dir", str(tmp_path / "results")]
    run = subprocess.run(evaluate, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    entry = next(iter(json.loads((tmp_path / "results" / "results.json").read_text())["evaluations"].values()))["codi"]
    assert entry["num_examples"] == 8 and 0.0 <= entry["accuracy"] <= 1.0 and set(entry["throughput"]) == {"1", "4"}
    assert "Continuous thought (CODI)" in (tmp_path / "results" / "results.md").read_text()
    wrong = subprocess.run([*evaluate[:8], "--coconut_model", str(tmp_path / "codi"), *evaluate[10:]], capture_output=True, text=True, env=env)
    assert wrong.returncode != 0 and "it needs a CoconutForCausalLM" in wrong.stderr
