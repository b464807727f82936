"""The recipes: one module per training stage (and evaluation, publishing, importing the paper's
checkpoints), each run as a script (`accelerate launch recipes/teacher.py ...` in a checkout),
as a module (`accelerate launch -m icot_hf.recipes.teacher ...` wherever icot_hf is installed) or
through the `icot-hf` command. Their presets (`configs/<task>/`, `configs/<task>/paper/`) and the
accelerate configs (`accelerate_configs/`) ship with the package."""
