"""Coconut's training step and generation, icot_hf against the released code, on the same model and data.

    python benchmarks/coconut_speed.py --coconut_src COCONUT_CHECKOUT --reference_python REF_VENV/bin/python \
        --output_dir results

The released code (github.com/facebookresearch/coconut: coconut.py, dataset.py) runs under the
transformers it pins (4.46.2) in its own interpreter (`--reference_python`; make one with
`python -m venv REF && REF/bin/pip install torch transformers==4.46.2 datasets==3.1.0`), icot_hf in this one.
Both read one random GPT-2 (saved once) and the same batches: 4x4 multiplication problems in Coconut's
format at the last stage (every replaced step latent: max_latent_stage x c_thought latents), collated by
each side's own collator. Timed, one thread each, one side at a time:
- training: forward, backward and an AdamW step over the same `--train_batches` batches (after one warm-up);
- generation (first, on the same untrained weights): the released `generate` (batch 1, the only size it takes) over `--generate_examples`
  questions, against `CoconutForCausalLM.generate` at batch `--generate_batch` (greedy, KV cache).
Writes coconut_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "reference_coconut"
sys.path.insert(0, str(FIXTURE))

REFERENCE_DRIVER = r'''
import json, sys, time, torch
spec = json.load(open(sys.argv[1]))
sys.path.insert(0, spec["coconut_src"]); sys.path.insert(0, spec["fixture"])
from coconut import Coconut
from dataset import MyCollator
from transformers import AutoModelForCausalLM
from coconut_tokenizer import build_coconut_fixture_tokenizer
torch.set_num_threads(1)
tok = build_coconut_fixture_tokenizer(); tok.pad_token = tok.eos_token
for t in ("<|start-latent|>", "<|end-latent|>", "<|latent|>"):
    tok.add_tokens(t)
ids = [tok.convert_tokens_to_ids(t) for t in ("<|latent|>", "<|start-latent|>", "<|end-latent|>")]
lm = AutoModelForCausalLM.from_pretrained(spec["model"])
model = Coconut(lm, *ids, tok.eos_token_id)
collate = MyCollator(tok, latent_id=ids[0])
batches = [collate([dict(f) for f in b]) for b in spec["train_batches"]]
model.eval()
t0 = time.perf_counter()
outputs = []
with torch.no_grad():
    for p in spec["prompts"]:
        x = torch.tensor([p])
        outputs.append(model.generate(x, torch.ones_like(x), max_new_tokens=spec["max_new_tokens"])[0].tolist())
generate_seconds = time.perf_counter() - t0
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
model.train()
def step(batch):
    out = model(**{k: v for k, v in batch.items() if k != "idx"})
    out.loss.backward(); opt.step(); opt.zero_grad()
step(batches[0])
t0 = time.perf_counter()
for b in batches:
    step(b)
train_seconds = time.perf_counter() - t0
json.dump({"train_seconds": train_seconds, "generate_seconds": generate_seconds, "outputs": outputs}, open(sys.argv[2], "w"))
'''


def problems(n: int) -> list[dict]:
    import random

    from coconut_tokenizer import icot_line_to_coconut

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(1000, 10000), rng.randrange(1000, 10000)
        digits_a, digits_b = str(a)[::-1], str(b)[::-1]
        running, cot = 0, []
        for i, d in enumerate(digits_b):
            partial = a * int(d) * 10**i
            running += partial
            step = " ".join(str(partial)[::-1].ljust(5 + i, "0")[:5 + i])
            cot.append(step if i == 0 else f"{step} ( {' '.join(str(running)[::-1])} )")
        line = f"{' '.join(digits_a)} * {' '.join(digits_b)}||{' + '.join(cot)} #### {' '.join(str(a * b)[::-1])}"
        rows.append(icot_line_to_coconut(line))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coconut_src", required=True, help="a checkout of facebookresearch/coconut")
    parser.add_argument("--reference_python", required=True, help="a Python with the released code's transformers (4.46.2)")
    parser.add_argument("--output_dir", default="results")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--train_batches", type=int, default=8)
    parser.add_argument("--c_thought", type=int, default=2)
    parser.add_argument("--max_latent_stage", type=int, default=3)
    parser.add_argument("--generate_examples", type=int, default=64)
    parser.add_argument("--generate_batch", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    args = parser.parse_args()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from coconut_tokenizer import build_coconut_fixture_tokenizer
    from icot_hf.coconut import CoconutForCausalLM
    from icot_hf.coconut.data import CoconutCollator, CoconutFormat, CurriculumSettings, question_prompt, stage_example, tokenize_example

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="coconut_speed_"))
    tokenizer = build_coconut_fixture_tokenizer()
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer) + 3, n_layer=args.layers, n_embd=args.width, n_head=4, n_positions=256,
                                    bos_token_id=0, eos_token_id=0))
    model = CoconutForCausalLM.from_base(lm, tokenizer, init_token="<<")
    with torch.no_grad():  # the new rows start as copies of `<<` (as released); move them apart, as training does, so that
        rows = model.lm.get_input_embeddings().weight  # greedy decoding never meets an exact tie between copies
        rows[-3:] += 0.02 * torch.randn_like(rows[-3:])
    model.lm.save_pretrained(work / "model")  # both sides read these weights
    settings = CurriculumSettings(c_thought=args.c_thought, max_latent_stage=args.max_latent_stage, pad_latent_to_max=True)
    ids = {"latent": model.config.latent_token_id, "start": model.config.start_latent_id, "end": model.config.end_latent_id}
    examples = [tokenize_example(p, tokenizer, CoconutFormat()) for p in problems(args.batch_size * args.train_batches + args.generate_examples)]
    stage = args.max_latent_stage + 1
    features = [stage_example(e, stage, settings, ids) for e in examples[:args.batch_size * args.train_batches]]
    batches = [features[i:i + args.batch_size] for i in range(0, len(features), args.batch_size)]
    prompts = [question_prompt(e, stage, settings, ids) for e in examples[len(features):]]

    spec = work / "spec.json"
    spec.write_text(json.dumps({"coconut_src": args.coconut_src, "fixture": str(FIXTURE), "model": str(work / "model"),
                                "train_batches": [[{"input_ids": f["input_ids"], "labels": f["labels"], "attention_mask": f["attention_mask"],
                                                    "position_ids": list(range(len(f["input_ids"])))} for f in b] for b in batches],
                                "prompts": prompts, "max_new_tokens": args.max_new_tokens}))
    (work / "driver.py").write_text(REFERENCE_DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    subprocess.run([args.reference_python, str(work / "driver.py"), str(spec), str(work / "reference.json")], check=True, env=env)
    reference = json.loads((work / "reference.json").read_text())

    model.eval()
    t0 = time.perf_counter()
    generated = []
    with torch.no_grad():
        for start in range(0, len(prompts), args.generate_batch):
            chunk = prompts[start:start + args.generate_batch]
            width = max(len(p) for p in chunk)
            x = torch.tensor([[0] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=0,
                                 pad_token_id=0)
            generated += out[:, width:].tolist()
    generate_seconds = time.perf_counter() - t0
    collate = CoconutCollator(tokenizer.eos_token_id, ids["latent"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()

    def step(batch):
        model(**collate(batch)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(batches[0])
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    train_seconds = time.perf_counter() - t0
    examples_trained = args.batch_size * args.train_batches
    result = {
        "model": f"GPT-2 {args.layers} x {args.width}, vocab {len(tokenizer)}", "batch_size": args.batch_size,
        "latents": args.max_latent_stage * args.c_thought, "threads": 1,
        "train_examples_per_second": {"icot_hf": examples_trained / train_seconds, "released": examples_trained / reference["train_seconds"]},
        "generate_examples_per_second": {f"icot_hf_batch{args.generate_batch}": len(prompts) / generate_seconds,
                                         "released_batch1": len(prompts) / reference["generate_seconds"]},
    }
    result["train_speedup"] = result["train_examples_per_second"]["icot_hf"] / result["train_examples_per_second"]["released"]
    result["generate_speedup"] = reference["generate_seconds"] / generate_seconds
    # the same answers (the released generate stops at eos without writing it)
    same = sum(out[len(p):] == (g[:g.index(0)] if 0 in g else g)[:len(out) - len(p)] for p, out, g in zip(prompts, reference["outputs"], generated))
    result["same_generations"] = f"{same}/{len(prompts)}"
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "coconut_speed.json").write_text(json.dumps(result, indent=2))
    lines = ["# Coconut: icot_hf against the released code", "", f"{result['model']}, batch {args.batch_size}, {result['latents']} latents, "
             f"one thread. Command: `python benchmarks/coconut_speed.py --coconut_src ... --reference_python ...`", "",
             "| what | icot_hf | released | ratio |", "|---|---|---|---|",
             f"| training examples/s | {result['train_examples_per_second']['icot_hf']:.1f} | {result['train_examples_per_second']['released']:.1f} | "
             f"{result['train_speedup']:.2f}x |",
             f"| generation examples/s (ours batch {args.generate_batch}, theirs batch 1) | "
             f"{result['generate_examples_per_second'][f'icot_hf_batch{args.generate_batch}']:.1f} | "
             f"{result['generate_examples_per_second']['released_batch1']:.1f} | {result['generate_speedup']:.2f}x |",
             "", f"Same generations: {result['same_generations']}."]
    (out_dir / "coconut_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
