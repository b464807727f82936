"""Convert the checkpoints released with the paper's code into icot_hf model folders.

    python recipes/import_reference.py --teacher ckpt/4x4/teacher --student ckpt/4x4/student \
        --emulator ckpt/4x4/emulator --stepwise ckpt/4x4_si --output_dir outputs/4x4_mult-released

Each given folder is one component as the paper's code saved it (config.json + state_dict.bin).
Written: <output_dir>/teacher and <output_dir>/stepwise (plain causal LMs), <output_dir>/coupled
(ImplicitCoTForCausalLM from --student and --emulator), each with its tokenizer, ready for
`recipes/evaluate_models.py`, `from_pretrained` and `push_to_hub`. state_dict.bin is read with
torch.load(weights_only=True) only: a file that needs more is refused, never unpickled.
--base_model and --tokenizer default to what the checkpoints name ("gpt2" for the released ones,
fetched from the Hub); give a local folder to work offline.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from icot_hf import reference_checkpoints as rc

logger = logging.getLogger("icot_hf.import_reference")


@dataclass
class ImportArguments:
    output_dir: str = field(metadata={"help": "Folder to write teacher/, coupled/ and stepwise/ into (must not hold them yet)."})
    teacher: str | None = field(default=None, metadata={"help": "ICoT-KD teacher folder (config.json + state_dict.bin)."})
    student: str | None = field(default=None, metadata={"help": "ICoT-KD mind-reading student folder (with --emulator: the coupled model)."})
    emulator: str | None = field(default=None, metadata={"help": "ICoT-KD thought emulator folder (with --student)."})
    stepwise: str | None = field(default=None, metadata={"help": "ICoT-SI model folder."})
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
    if not jobs:
        raise SystemExit("nothing to import: give --teacher, --stepwise and/or --student with --emulator")
    out = Path(args.output_dir)
    taken = [name for name in jobs if (out / name).exists() and any((out / name).iterdir())]
    if taken:
        raise SystemExit(f"{out}: {', '.join(taken)} already there and not empty; choose another --output_dir (nothing is overwritten)")

    def tokenizer_for(folder):
        return rc.reference_tokenizer(folder, args.tokenizer)

    for name, (source, build) in jobs.items():
        model = build()
        target = out / name
        model.save_pretrained(target)
        tokenizer_for(source).save_pretrained(target)
        logger.info("%s: %s -> %s", name, source, target)
    print(f"imported into {out}: {', '.join(jobs)}. Evaluate on the paper's test file:\n"
          f"  python recipes/evaluate_models.py --task released"
          + (f" --teacher_model {out / 'teacher'}" if "teacher" in jobs else "")
          + (f" --implicit_model {out / 'coupled'}" if "coupled" in jobs else "")
          + (f" --stepwise_model {out / 'stepwise'}" if "stepwise" in jobs else "")
          + f" --test_files TEST_FILE --output_dir {out / 'results'}")


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
