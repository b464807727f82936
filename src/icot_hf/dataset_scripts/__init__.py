"""The data scripts: make k-by-k multiplication data, convert the paper's text files, train a
tokenizer; each a script (`python dataset_scripts/make_multiplication.py ...`), a module
(`python -m icot_hf.dataset_scripts.make_multiplication ...`) or an `icot-hf` command."""
