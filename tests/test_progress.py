"""Progress a person can follow on a long run (icot_hf.progress): each stage's progress.json
while it trains, and the one-line summary `make reproduce` prints of both lanes and the run."""

import json

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from conftest import multiplication_dataset, tiny_config
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.progress import PROGRESS_FILE, ProgressFile, parse_phase, read_events, summary
from icot_hf.trainers import TeacherConfig, TeacherTrainer


def test_a_training_stage_keeps_its_progress_file_current(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 64, seed=1), tokenizer, views=("explicit",))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    args = TeacherConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, use_cpu=True, report_to="none",
                         logging_steps=1, save_strategy="no")
    trainer = TeacherTrainer(model=model, args=args, train_dataset=data, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("explicit",)),
                             processing_class=tokenizer, separator_id=tokenizer.eos_token_id)
    seen = []

    class Read(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(json.loads((tmp_path / PROGRESS_FILE).read_text()))

    trainer.add_callback(ProgressFile(every_seconds=0))
    trainer.add_callback(Read())
    trainer.train()
    assert [s["global_step"] for s in seen] == [1, 2, 3, 4, 5, 6] and all(s["max_steps"] == 6 for s in seen)
    assert seen[2]["seconds_left"] > 0 and not seen[2]["finished"]
    assert abs(seen[2]["seconds_left"] - 3 * seen[2]["seconds_per_step"]) < 1e-6
    final = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert final["finished"] and final["seconds_left"] == 0 and final["global_step"] == 6


def test_the_summary_names_each_lane_and_the_time_left(tmp_path):
    now = 100_000.0
    (tmp_path / "si").mkdir()
    (tmp_path / "si" / PROGRESS_FILE).write_text(json.dumps({"global_step": 1200, "max_steps": 5000, "seconds_per_step": 0.6,
                                                             "seconds_left": 2280.0, "updated_at": now - 5, "finished": False}))
    (tmp_path / "nc").mkdir()  # a progress file left by an earlier run (before this stage started): not read
    (tmp_path / "nc" / PROGRESS_FILE).write_text(json.dumps({"global_step": 7000, "max_steps": 7000, "seconds_left": 0.0,
                                                             "updated_at": now - 5000, "finished": True}))
    events = tmp_path / "events.txt"
    events.write_text(f"start teacher {now - 3000}\nend teacher {now - 2000}\nstart old {now - 99999}\n"
                      f"start stepwise {now - 2000}\nstart no_cot {now - 2000}\n")
    starts, ends = read_events(events, since=now - 4000)
    assert "old" not in starts and ends == {"teacher": now - 2000}
    phases = [parse_phase(f"teacher:{tmp_path}/t"), parse_phase(f"stepwise:{tmp_path}/si | no_cot:{tmp_path}/nc coupled:{tmp_path}/c"),
              parse_phase("evaluate")]
    reference = {"no_cot": 2600.0, "coupled": 600.0, "evaluate": 300.0}
    line = summary(phases, starts, ends, reference, now)
    assert "stepwise: step 1,200/5,000, 38 min left" in line
    assert "no_cot: starting, ~10 min left; then coupled (~10 min)" in line  # 2600 s planned, 2000 s gone; then 600 s
    assert "run: ~43 min left" in line  # the longer lane (2280 s) + the evaluation (300 s)
    unknown = summary(phases, starts, ends, {}, now)
    assert "run: at least 38 min left" in unknown  # stages never timed before are not guessed
    assert "then coupled (time unknown)" in unknown
    partly = summary([parse_phase(f"no_cot:{tmp_path}/nc coupled:{tmp_path}/c codi:{tmp_path}/d")], starts, ends, reference, now)
    assert "then coupled, codi (~10 min + ?)" in partly  # a method no earlier run timed is not counted as 0
