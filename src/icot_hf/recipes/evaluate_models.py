"""Evaluate no-CoT, explicit-CoT and implicit-CoT models: exact match and examples/s.

    python recipes/evaluate_models.py --task 4x4_mult --dataset_name_or_path data/4x4_mult \
        --no_cot_model outputs/4x4_mult/no_cot --teacher_model outputs/4x4_mult/teacher \
        --implicit_model outputs/4x4_mult/coupled [--stepwise_model outputs/4x4_mult/stepwise] \
        --test_files ../shared/data/icot_original/4_by_4_mult/test_bigbench.txt \
        --output_dir results/4x4_mult

Accuracy is measured at the largest batch size over the whole set; throughput at each
batch size (batch 1 on the first --max_examples_batch1 examples, to bound the time).
Writes results.json, results.md and accuracy_vs_throughput.png to --output_dir.

--frontier_dir (an ICoT-SI run's frontier/ folder, written with save_frontier_points) adds the
accuracy-against-CoT-length frontier: every model saved at the end of a removal stage answers
each set, writing the CoT it has left and then the answer; results.json gets `frontier`, and
frontier.png plots exact match against CoT tokens generated beside the other methods.

Re-running is cheap and safe: results.json records the inputs it was measured on (every
argument, a fingerprint of every model, data set and test file); a re-run with the same inputs
evaluates nothing and rewrites nothing unless make reproduce's stage times changed, and an
evaluation interrupted midway resumes from results.partial.json, measuring only what it lacks.
"""

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from icot_hf import ImplicitCoTForCausalLM
from icot_hf.data import load_icot_dataset, read_icot_text
from icot_hf.evaluation import CODIAnswerer, CoconutAnswerer, DirectAnswerer, ExplicitCoTAnswerer, ImplicitCoTAnswerer, evaluate_answerer
from icot_hf.results import write_results
from icot_hf.run_record import artefact_fingerprint, read_json, write_json_atomically

logger = logging.getLogger("icot_hf.evaluate")


@dataclass
class EvalArguments:
    task: str = field(default="4x4_mult", metadata={"help": "Task name for the results table."})
    dataset_name_or_path: str | None = field(default=None, metadata={"help": "Dataset whose --split is evaluated."})
    split: str = field(default="test", metadata={"help": "Split of --dataset_name_or_path to evaluate."})
    test_files: list[str] = field(default_factory=list, metadata={"help": "Extra ICoT text files to evaluate (e.g. the paper's test set)."})
    no_cot_model: str | None = field(default=None, metadata={"help": "No-CoT baseline folder or Hub id."})
    teacher_model: str | None = field(default=None, metadata={"help": "Explicit-CoT teacher folder or Hub id."})
    implicit_model: str | None = field(default=None, metadata={"help": "ImplicitCoTForCausalLM folder or Hub id."})
    coconut_model: str | None = field(default=None, metadata={"help": "Coconut model folder or Hub id (CoconutForCausalLM)."})
    codi_model: str | None = field(default=None, metadata={"help": "CODI model folder or Hub id (CODIForCausalLM)."})
    stepwise_model: str | None = field(default=None, metadata={"help": "Stepwise-internalization (ICoT-SI) model folder or Hub id: a plain causal LM."})
    frontier_dir: str | None = field(default=None, metadata={"help": "An ICoT-SI run's frontier/ folder (save_frontier_points): "
                                                             "evaluate the model saved at each removal stage's end."})
    frontier_batch1_examples: int = field(default=64, metadata={"help": "Examples timed at batch size 1 for each frontier point "
                                                                "(on the first test file, else the split)."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64], metadata={"help": "Batch sizes to time."})
    max_examples: int | None = field(default=None, metadata={"help": "Evaluate only the first N examples of each set."})
    max_examples_batch1: int = field(default=200, metadata={"help": "Examples timed at batch size 1."})
    output_dir: str = field(default="results/4x4_mult", metadata={"help": "Where results.json/.md/.png go."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda when available, else cpu)."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})
    stage_lanes: int = field(default=1, metadata={"help": "2 when `make reproduce` trained ICoT-SI beside the no-CoT and ICoT-KD "
                                                  "stages (LANES=2): the table then also gives the wall time with the lanes overlapped."})


def evaluation_sets(args: EvalArguments) -> dict[str, tuple[list[str], list[str]]]:
    sets = {}
    if args.dataset_name_or_path:
        data = load_icot_dataset(args.dataset_name_or_path, split=args.split)
        sets[f"{Path(args.dataset_name_or_path).name} [{args.split}]"] = (list(data["input"]), list(data["answer"]))
    for path in args.test_files:
        if not Path(path).is_file():
            raise SystemExit(f"evaluate_models: --test_files {path}: no such file")
        rows = read_icot_text(path)
        sets[str(path)] = ([r["input"] for r in rows], [r["answer"] for r in rows])
    if not sets:
        raise ValueError("nothing to evaluate: give --dataset_name_or_path and/or --test_files")
    return sets


def _device(args: EvalArguments) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load(model_class, path, device):
    return model_class.from_pretrained(path).to(device).eval(), AutoTokenizer.from_pretrained(path)


def load_answerers(args: EvalArguments) -> dict:
    device = _device(args)

    def load(model_class, path):
        return _load(model_class, path, device)

    # Check every folder's kind before loading any, so a swapped path fails at once, by name.
    continuous = {"coconut": ("--coconut_model", "CoconutForCausalLM"), "codi": ("--codi_model", "CODIForCausalLM")}
    for flag, path, implicit in (("--no_cot_model", args.no_cot_model, False), ("--teacher_model", args.teacher_model, False),
                                 ("--implicit_model", args.implicit_model, True), ("--stepwise_model", args.stepwise_model, False),
                                 ("--coconut_model", args.coconut_model, "coconut"), ("--codi_model", args.codi_model, "codi")):
        if path is None:
            continue
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except (OSError, ValueError) as error:
            raise SystemExit(f"evaluate_models: {flag} {path}: not a model folder or Hub id ({error})") from None
        if isinstance(implicit, str):  # a continuous-thought method: its own model type
            if model_type != implicit:
                raise SystemExit(f"evaluate_models: {flag} {path} holds a {model_type} model; it needs a {continuous[implicit][1]} (the "
                                 f"{implicit} recipe's output, e.g. outputs/4x4_mult/{implicit})")
            continue
        if model_type in continuous:
            raise SystemExit(f"evaluate_models: {flag} {path} holds a {continuous[model_type][1]}; pass it as {continuous[model_type][0]}")
        if implicit and model_type != "icot":
            raise SystemExit(f"evaluate_models: {flag} {path} holds a plain {model_type} model; it needs the coupled ImplicitCoTForCausalLM "
                             "(the couple stage's output, e.g. outputs/4x4_mult/coupled)")
        if not implicit and model_type == "icot":
            raise SystemExit(f"evaluate_models: {flag} {path} holds an ImplicitCoTForCausalLM; pass it as --implicit_model")

    answerers = {}
    if args.no_cot_model:
        answerers["no_cot"] = DirectAnswerer(*load(AutoModelForCausalLM, args.no_cot_model))
    if args.teacher_model:
        answerers["explicit_cot"] = ExplicitCoTAnswerer(*load(AutoModelForCausalLM, args.teacher_model))
    if args.implicit_model:
        answerers["implicit_cot"] = ImplicitCoTAnswerer(*load(ImplicitCoTForCausalLM, args.implicit_model))
    if args.stepwise_model:
        # ICoT-SI keeps the explicit format with an empty CoT (`input S S answer`): the explicit
        # answerer reads it (and the position gap of a keep_positions model); a model whose CoT
        # was only partly removed still writes the rest, so it gets the teacher's budget.
        answerers["stepwise_cot"] = ExplicitCoTAnswerer(*load(AutoModelForCausalLM, args.stepwise_model))
    if args.coconut_model:
        from icot_hf.coconut import CoconutForCausalLM

        answerers["coconut"] = CoconutAnswerer(*load(CoconutForCausalLM, args.coconut_model))
    if args.codi_model:
        from icot_hf.codi import CODIForCausalLM

        answerers["codi"] = CODIAnswerer(*load(CODIForCausalLM, args.codi_model))
    if not answerers:
        raise ValueError("no model to evaluate: give --no_cot_model, --teacher_model, --implicit_model, --stepwise_model, --coconut_model "
                         "and/or --codi_model")
    return answerers


def frontier_points(frontier_dir: str) -> list[dict]:
    """The points an ICoT-SI run listed in its frontier index (only its own, in step order)."""
    index = Path(frontier_dir) / "index.json"
    if not index.is_file():
        raise SystemExit(f"evaluate_models: --frontier_dir {frontier_dir}: no index.json (train ICoT-SI with save_frontier_points: true)")
    points = json.loads(index.read_text())["points"]
    missing = [p["model_dir"] for p in points if not (Path(frontier_dir) / p["model_dir"]).is_dir()]
    if missing:
        raise SystemExit(f"evaluate_models: --frontier_dir {frontier_dir}: index.json lists {', '.join(missing)}, which are not there")
    return points


def evaluate_frontier(args: EvalArguments, sets: dict, progress: "PartialResults") -> list[dict]:
    """Each frontier point answers every set (exact match at the largest batch size, CoT tokens
    it writes per answer) and the primary set (the first test file, else the split) at batch 1."""
    primary = next((name for name in sets if name in args.test_files), next(iter(sets)))
    largest, device, results = max(args.batch_sizes), _device(args), []
    for point in frontier_points(args.frontier_dir):
        folder = Path(args.frontier_dir) / point["model_dir"]
        if str(folder) in progress.done["frontier"]:
            results.append(progress.done["frontier"][str(folder)])
            continue
        answerer = ExplicitCoTAnswerer(*_load(AutoModelForCausalLM, folder, device))
        entry = {"model_dir": str(folder), "cot_tokens_removed": point["cot_tokens_removed"], "cot_tokens_total": point["cot_tokens_total"],
                 "step": point["step"], "examples_seen": point["examples_seen"], "stage_ended_by": point["reason"], "by_set": {}}
        for set_name, (questions, references) in sets.items():
            run = evaluate_answerer(answerer, questions, references, largest, description=f"{point['model_dir']} bs={largest}",
                                    max_examples=args.max_examples)
            entry["by_set"][set_name] = {"exact_match": run["accuracy"], "cot_tokens_generated": run["cot_tokens_generated"],
                                         "num_examples": run["num_examples"]}
        questions, references = sets[primary]
        single = evaluate_answerer(answerer, questions, references, 1, description=f"{point['model_dir']} bs=1",
                                   max_examples=min(args.max_examples or 10**9, args.frontier_batch1_examples))
        entry |= {"exact_match": entry["by_set"][primary]["exact_match"], "cot_tokens_generated": entry["by_set"][primary]["cot_tokens_generated"],
                  "examples_per_second_batch1": single["examples_per_second"], "primary_set": primary}
        logger.info("frontier %s: exact match %s, %.1f CoT tokens, %.1f examples/s at batch 1", point["model_dir"],
                    ", ".join(f"{v['exact_match']:.3f}" for v in entry["by_set"].values()), entry["cot_tokens_generated"],
                    entry["examples_per_second_batch1"])
        results.append(entry)
        progress.keep("frontier", str(folder), entry)
    return results


class PartialResults:
    """What an interrupted evaluation had finished, kept in `output_dir/results.partial.json`
    with the inputs it was measured on: a re-run with the same inputs measures only the rest,
    so it ends with the same table. Removed once results.json is written."""

    def __init__(self, output_dir: Path, inputs: dict):
        self.path, self.inputs, self.started = output_dir / "results.partial.json", inputs, time.time()
        saved = read_json(self.path)
        fresh = {"methods": {}, "frontier": {}}
        self.done = saved["done"] if saved and saved.get("inputs") == inputs else fresh
        self.seconds_before = saved.get("seconds", 0) if self.done is not fresh else 0  # the interrupted attempts' measuring time
        if saved and self.done is fresh:
            logger.warning("%s was measured on other models or settings: starting the evaluation afresh", self.path)
        elif saved:
            logger.warning("%s: resuming an interrupted evaluation (%d entries done)", self.path,
                           len(self.done["methods"]) + len(self.done["frontier"]))

    def keep(self, kind: str, key: str, entry: dict) -> None:
        self.done[kind][key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path, {"inputs": self.inputs, "done": self.done, "seconds": self.seconds()})

    def seconds(self) -> int:
        """Time spent measuring these results, the interrupted attempts' included."""
        return round(self.seconds_before + time.time() - self.started)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def read_stage_seconds(path: Path) -> dict[str, int]:
    """`make reproduce`'s wall time per stage: lines `name seconds marker sha256`, kept only while
    that stage's marker (its completion marker, or its data's settings) is still the one the timed
    run wrote, so a table never shows an earlier run's time beside models trained since. The
    latest line of a stage wins; lines without a marker (an older format) are not shown."""
    if not path.is_file():
        return {}
    times = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) != 4 or not fields[1].isdigit():
            continue
        name, seconds, marker, digest = fields
        try:
            current = hashlib.sha256(Path(marker).read_bytes()).hexdigest()
        except OSError:
            current = None
        if current == digest:
            times[name] = int(seconds)
        else:
            times.pop(name, None)
    return times


def evaluation_inputs(args: EvalArguments) -> dict:
    """What the numbers depend on: the arguments (less where they are written) and a fingerprint
    of every model, data set, test file and frontier point they read. The same inputs give the
    same table (the speeds within their noise), so a re-run with them evaluates nothing."""
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "output_dir"}
    paths = [args.dataset_name_or_path, *args.test_files, args.no_cot_model, args.teacher_model, args.implicit_model,
             args.coconut_model, args.codi_model, args.stepwise_model]
    if args.frontier_dir:
        paths += [str(Path(args.frontier_dir) / "index.json")]
        paths += [str(Path(args.frontier_dir) / p["model_dir"]) for p in frontier_points(args.frontier_dir)]
    return {"settings": settings, "fingerprints": {p: artefact_fingerprint(p) for p in paths if p}, "torch_threads": torch.get_num_threads()}


def run_settings(args: EvalArguments) -> dict:
    """How the numbers were measured, and in what precision each model was trained (its
    completion marker's `precision`; the evaluation itself runs in fp32)."""
    from icot_hf.precision import cpu_description

    device = _device(args)
    trained = {}
    for name, path in (("no_cot", args.no_cot_model), ("explicit_cot", args.teacher_model), ("implicit_cot", args.implicit_model),
                       ("stepwise_cot", args.stepwise_model), ("coconut", args.coconut_model),
                       ("codi", args.codi_model)):
        marker = read_json(Path(path) / "training_complete.json") if path else None
        if marker and marker.get("precision"):
            trained[name] = marker["precision"]
    return {"batch_sizes": args.batch_sizes, "max_examples_batch1": args.max_examples_batch1, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description(),
            "evaluation_precision": "fp32", "training_precision": trained}


def evaluate_all(args: EvalArguments, progress: PartialResults) -> dict:
    """Every model on every set (and the frontier): the evaluations part of results.json."""
    answerers, sets = load_answerers(args), evaluation_sets(args)
    largest = max(args.batch_sizes)
    results = {"task": args.task, "evaluations": {}}
    for set_name, (questions, references) in sets.items():
        per_method = results["evaluations"].setdefault(set_name, {})
        for method, answerer in answerers.items():
            key = json.dumps([set_name, method])
            if key in progress.done["methods"]:
                per_method[method] = progress.done["methods"][key]
                continue
            entry = {"throughput": {}}
            for batch_size in sorted(args.batch_sizes, reverse=True):
                limit = args.max_examples if batch_size == largest else min(args.max_examples or 10**9, args.max_examples_batch1)
                run = evaluate_answerer(answerer, questions, references, batch_size, description=f"{method} bs={batch_size}", max_examples=limit)
                entry["throughput"][str(batch_size)] = run["examples_per_second"]
                if batch_size == largest:
                    entry.update(accuracy=run["accuracy"], num_examples=run["num_examples"], sample_predictions=run["predictions"][:5],
                                 cot_tokens_generated=run["cot_tokens_generated"])
                logger.info("%s | %s | batch %d: exact match %.3f, %.1f examples/s", set_name, method, batch_size, run["accuracy"], run["examples_per_second"])
            per_method[method] = entry
            progress.keep("methods", key, entry)
    if args.frontier_dir:
        results["frontier"] = evaluate_frontier(args, sets, progress)
    return results


def main():
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    inputs = evaluation_inputs(args)
    previous, progress = read_json(output_dir / "results.json"), None
    if previous and previous.get("inputs") == inputs and previous.get("evaluations"):
        logger.warning("%s holds the results of these models and settings: nothing is evaluated again", output_dir)
        results = {k: v for k, v in previous.items() if k not in ("stage_wall_seconds", "stage_lanes")}
        evaluate_seconds = (previous.get("stage_wall_seconds") or {}).get("evaluate")
    else:
        progress = PartialResults(output_dir, inputs)
        results = evaluate_all(args, progress) | {"inputs": inputs}
        evaluate_seconds = progress.seconds()
    results["settings"] = run_settings(args)
    stage_times = read_stage_seconds(output_dir / "stage_seconds.txt")
    if stage_times:  # make reproduce's stages; the evaluation times itself (it writes the table its time goes in)
        results["stage_wall_seconds"] = stage_times | ({"evaluate": evaluate_seconds} if evaluate_seconds is not None else {})
        results["stage_lanes"] = args.stage_lanes
    if results == previous:
        print(f"{output_dir}/results.json is unchanged (same models, settings and stage times): nothing written")
        return
    paths = write_results(results, output_dir)
    if progress is not None:
        progress.finish()
    print(Path(paths["markdown"]).read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
