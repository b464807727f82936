"""Train a byte-level BPE tokenizer on an ICoT dataset's training split (for tasks with
words, like GSM8K, when not starting from a pretrained model's own tokenizer).

    python dataset_scripts/train_tokenizer.py --dataset data/gsm8k --vocab_size 4096 --output_dir data/gsm8k_tokenizer

`--sequence_format reference` trains on the paper's strings (answers as '#### ' + digits, a space
before each separator), so the merges are those a BPE learns for that format; the separator
itself is the special token and is never merged.
"""

import argparse

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from icot_hf.data import SEQUENCE_FORMATS, load_icot_dataset, reference_answer
from icot_hf.tokenization import EOS_TOKEN


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--sequence_format", choices=SEQUENCE_FORMATS, default="compact",
                        help="whose strings the merges are learnt from: icot_hf's compact parts or the paper's (reference)")
    args = parser.parse_args(argv)
    data = load_icot_dataset(args.dataset, split=args.split)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if args.sequence_format == "reference":
        texts = (f" {row['input']}  {row['cot']}  {reference_answer(row['answer'])} " for row in data)
    else:
        texts = (f" {row['input']} {row['cot']} {row['answer']}" for row in data)
    backend.train_from_iterator(texts, trainer, length=len(data))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, model_max_length=1024)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved a {len(tokenizer)}-token BPE tokenizer to {args.output_dir}")


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
