"""Progress of a long run that a person can follow: each training stage's step and time left,
and the whole run's time left.

Two halves:

- `ProgressFile`, a Trainer callback every recipe adds: it keeps `<output_dir>/progress.json`
  (step, steps planned, seconds a step in this process, time left) up to date, written at most
  every few seconds and atomically, so anyone can read it while the stage trains.
- `python -m icot_hf.progress`, what `make reproduce` prints at each stage start and every few
  minutes while its two lanes train: one line with each running stage's step of how many and
  time left, what comes after it in its lane, and the time left for the whole run.

The run is described as phases run one after another, each a set of lanes run side by side,
each lane a list of stages (`--phase "teacher:outputs/t"`, `--phase "stepwise:outputs/s |
no_cot:outputs/n coupled:outputs/c"`). `reproduce.sh` appends `start NAME TIME` and `end NAME
TIME` lines to an events file as stages begin and end; stages that have not started are
estimated from an earlier run's wall time per stage (`results.json`'s `stage_wall_seconds`,
the committed table's run), and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback

PROGRESS_FILE = "progress.json"


class ProgressFile(TrainerCallback):
    """Keep `output_dir/progress.json` current (main process; at most every `every_seconds`)."""

    def __init__(self, every_seconds: float = 5.0):
        self.every_seconds = every_seconds
        self._started = self._first_step = self._written = None

    def _write(self, args, state, finished: bool = False) -> None:
        now = time.time()
        done_here = state.global_step - self._first_step
        per_step = (now - self._started) / done_here if done_here > 0 else None
        left = max(state.max_steps - state.global_step, 0)
        record = {"global_step": state.global_step, "max_steps": state.max_steps, "seconds_per_step": per_step,
                  "seconds_left": 0.0 if finished else (left * per_step if per_step else None),
                  "updated_at": now, "finished": finished}
        path = Path(args.output_dir) / PROGRESS_FILE
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)
        self._written = now

    def on_train_begin(self, args, state, control, **kwargs):
        self._started, self._first_step = time.time(), state.global_step  # a resumed run starts past 0
        if state.is_world_process_zero:
            self._write(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and time.time() - self._written >= self.every_seconds:
            self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(args, state, finished=True)


# ---------------------------------------------------------------------------- the summary


def read_events(path: Path, since: float) -> tuple[dict[str, float], dict[str, float]]:
    """{stage: start time}, {stage: end time} of the events at or after `since` (the latest wins)."""
    starts, ends = {}, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] in ("start", "end") and float(fields[2]) >= since:
                (starts if fields[0] == "start" else ends)[fields[1]] = float(fields[2])
    return starts, ends


def parse_phase(text: str) -> list[list[tuple[str, str | None]]]:
    """'a:dir_a | b:dir_b c' -> [[('a', 'dir_a')], [('b', 'dir_b'), ('c', None)]]."""
    lanes = []
    for lane in text.split("|"):
        stages = [(token.split(":", 1)[0], token.split(":", 1)[1] if ":" in token else None) for token in lane.split()]
        if stages:
            lanes.append(stages)
    return lanes


def stage_status(name: str, output_dir: str | None, starts: dict, ends: dict, reference: dict, now: float) -> dict:
    """What one stage is doing: done, running (step, steps, seconds left) or pending (an estimate)."""
    if name in ends and ends[name] >= starts.get(name, 0):
        return {"state": "done", "seconds_left": 0.0}
    estimate = reference.get(name)
    if name not in starts:
        return {"state": "pending", "seconds_left": estimate, "estimated": True}
    elapsed = now - starts[name]
    status = {"state": "running", "elapsed": elapsed, "estimated": True,
              "seconds_left": max(estimate - elapsed, 0.0) if estimate is not None else None}
    progress = None
    if output_dir:
        try:
            progress = json.loads((Path(output_dir) / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            pass
    if progress and progress.get("updated_at", 0) >= starts[name] and not progress.get("finished"):
        status.update(step=progress["global_step"], max_steps=progress["max_steps"])
        if progress.get("seconds_left") is not None:
            status.update(seconds_left=progress["seconds_left"], estimated=False)
    return status


def minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def summary(phases: list[list[list[tuple[str, str | None]]]], starts: dict, ends: dict, reference: dict, now: float) -> str:
    """One line: each lane's running stage (step of steps, time left) and what follows it in its
    lane, then the whole run's time left (phases in turn, the longest lane of each)."""
    parts, total, unknown = [], 0.0, False
    for phase in phases:
        lane_lefts = []
        for lane in phase:
            statuses = [(name, stage_status(name, out, starts, ends, reference, now)) for name, out in lane]
            lefts = [s["seconds_left"] for _, s in statuses]
            unknown |= any(left is None for left in lefts)
            lane_lefts.append(sum(left or 0.0 for left in lefts))
            running = [(n, s) for n, s in statuses if s["state"] == "running"]
            pending = [n for n, s in statuses if s["state"] == "pending"]
            if running:
                name, s = running[0]
                text = f"{name}: " + (f"step {s['step']:,}/{s['max_steps']:,}, " if "step" in s else "starting, ")
                text += f"{'~' if s['estimated'] else ''}{minutes(s['seconds_left'])} left"
                if pending:
                    lefts = [s2["seconds_left"] for n2, s2 in statuses if n2 in pending]
                    known = [left for left in lefts if left is not None]
                    # a stage no earlier run timed (a method added since) has no estimate: say so rather than count it as 0
                    estimate = f"~{minutes(sum(known))}" + (" + ?" if len(known) < len(lefts) else "") if known else "time unknown"
                    text += f"; then {', '.join(pending)} ({estimate})"
                parts.append(text)
        total += max(lane_lefts, default=0.0)
    clock = time.strftime("%H:%M", time.localtime(now + total))
    run = f"run: {'at least ' if unknown else '~'}{minutes(total)} left (ends ~{clock})"
    return f"progress {time.strftime('%H:%M:%S', time.localtime(now))} | " + " | ".join(parts + [run])


def reference_times(path: str | None) -> dict[str, float]:
    """An earlier run's wall time per stage (`stage_wall_seconds` of a results.json), if any."""
    try:
        return {k: float(v) for k, v in json.loads(Path(path).read_text()).get("stage_wall_seconds", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", required=True, help="The events file (lines `start|end NAME UNIX_TIME`).")
    parser.add_argument("--since", type=float, default=0.0, help="Ignore events before this time (the run's start).")
    parser.add_argument("--reference", help="A results.json whose stage_wall_seconds estimate the stages not yet started.")
    parser.add_argument("--phase", action="append", default=[], help="'name:output_dir ... | name:output_dir ...' (lanes split by |).")
    args = parser.parse_args(argv)
    starts, ends = read_events(Path(args.events), args.since)
    print(summary([parse_phase(p) for p in args.phase], starts, ends, reference_times(args.reference), time.time()), flush=True)


if __name__ == "__main__":
    main()
