"""One TRL DPOTrainer run on CPU, the peer arm of bench/sweep.py: wall time and final eval metrics as JSON.

python bench/trl_dpo.py --beta 0.1 --learning-rate 1e-3 --max-steps 60 --out run.json   (needs `pip install -e .[bench]`)

The same pairs as dpo_ray trains on: exact duplicates dropped and the eval split taken by the prompt
hash (dpo_ray.data.parse.is_eval_prompt), so both hold out the very same pairs. The model is loaded with
from_pretrained; TRL keeps a frozen copy as the reference and scores it on every batch (its default,
precompute_ref_log_probs=False), unless --precompute-ref.

Throughput as bench/throughput.py compares it with dpo_ray's perf/steady_*: the wall time at the end of
every optimizer step (a TrainerCallback) and the real tokens of every train micro-batch (the collator's
attention mask, the tokens dpo_ray counts) give pairs/s and tokens/s over the steps after the first
WARMUP_STEPS, and first_step_time is the Unix time at which step 1 ended.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dpo_ray.data.parse import is_eval_prompt, row_id  # noqa: E402  (pure ring: no Ray import)

WARMUP_STEPS = 2  # as dpo_ray.train.loop.WARMUP_STEPS (not imported: that module imports Ray and DeepSpeed)


class StepClock:
    """Step-end times and train micro-batch token counts of one Trainer run."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.batch_tokens: list[int] = []
        self.training = False
        self.first_step_time = 0.0

    def wrap(self, collator: Any, model: Any) -> Any:
        def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = collator(examples)
            # the train loader's batches, in order: precompute and the step-0 eval come before training
            # starts, and an eval inside training collates with the model in eval mode
            if self.training and model.training:
                self.batch_tokens.append(int(batch["attention_mask"].sum()))
            return batch
        return collate

    def steady(self, batch_size: int, accumulation: int) -> dict[str, float]:
        """pairs/s and tokens/s over the steps after WARMUP_STEPS (wall time between step ends, so an
        eval inside that window would count: bench/throughput.py evaluates at step 0 and the last step)."""
        ends = self.step_ends
        if len(ends) <= WARMUP_STEPS:
            return {}
        seconds = ends[-1] - ends[WARMUP_STEPS - 1]
        steps = len(ends) - WARMUP_STEPS
        tokens = sum(self.batch_tokens[WARMUP_STEPS * accumulation:len(ends) * accumulation])
        return {"steady_pairs_per_second": steps * batch_size / seconds, "steady_tokens_per_second": tokens / seconds,
                "steady_seconds": seconds}


def step_callback(clock: StepClock) -> Any:
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.training = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.step_ends.append(time.perf_counter())
            if state.global_step == 1:
                clock.first_step_time = time.time()

    return Callback()


def split_pairs(path: str, eval_fraction: float) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """prompt/chosen/rejected rows of a JSONL file -> (train, eval), deduplicated, split as dpo_ray splits."""
    seen: set[str] = set()
    train, held_out = [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        row = {"prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"]}
        rid = row_id(row["prompt"], row["chosen"], row["rejected"])
        if rid in seen:
            continue
        seen.add(rid)
        (held_out if is_eval_prompt(row["prompt"], eval_fraction) else train).append(row)
    return train, held_out


def eval_batch_size(pairs: int, micro_batch_size: int, cap: int = 64) -> int:
    """An eval batch size that divides the eval set when one of at least micro_batch_size exists
    (TRL averages per-batch means, so a short last batch would weigh its pairs more than dpo_ray,
    which counts every eval pair once), else micro_batch_size."""
    divisors = [d for d in range(micro_batch_size, cap + 1) if pairs % d == 0]
    return max(divisors) if divisors else micro_batch_size


def eval_metrics(logged: dict[str, float]) -> dict[str, float]:
    """TRL's eval log ('eval_rewards/accuracies', 'eval_loss') under dpo_ray's names ('eval/...')."""
    return {"eval/" + k.removeprefix("eval_"): v for k, v in logged.items()
            if k.startswith("eval_") and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "pipelines" / "assets" / "tiny-llama"))
    parser.add_argument("--data", default=str(REPO / "pipelines" / "assets" / "quickstart_pairs.jsonl"))
    parser.add_argument("--beta", type=float, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="pairs per forward/backward")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--lr-scheduler", default="cosine", choices=["linear", "cosine", "constant"])
    parser.add_argument("--loss-type", default="sigmoid")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default (every core)")
    parser.add_argument("--precompute-ref", action="store_true", help="TRL's precompute_ref_log_probs=True")
    parser.add_argument("--output-dir", default=None, help="where the model is saved (default: next to --out)")
    parser.add_argument("--out", required=True, help="JSON file for the result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    train_rows, eval_rows = split_pairs(args.data, args.eval_fraction)
    accumulation = args.batch_size // args.micro_batch_size
    output_dir = args.output_dir or str(Path(args.out).with_suffix("")) + "-model"
    config = DPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        max_steps=args.max_steps, per_device_train_batch_size=args.micro_batch_size,
        per_device_eval_batch_size=eval_batch_size(len(eval_rows), args.micro_batch_size), gradient_accumulation_steps=accumulation,
        learning_rate=args.learning_rate, lr_scheduler_type=args.lr_scheduler if args.lr_scheduler != "constant" else "constant_with_warmup",
        warmup_steps=int(round(args.warmup_ratio * args.max_steps)),  # dpo_ray's TrainConfig.warmup_steps
        weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type=[args.loss_type],
        max_length=args.max_length, eval_strategy="steps", eval_steps=args.eval_every,
        logging_steps=args.logging_steps, save_strategy="no", seed=args.seed, dataloader_num_workers=0,
        precompute_ref_log_probs=args.precompute_ref, disable_dropout=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.model_dtype))
    clock = StepClock()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(eval_rows), processing_class=tokenizer,
                         callbacks=[step_callback(clock)])
    trainer.data_collator = clock.wrap(trainer.data_collator, trainer.model)
    initial = eval_metrics(trainer.evaluate())  # step 0, as dpo_ray evaluates before the first step
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    evals = [row for row in trainer.state.log_history if "eval_loss" in row and row.get("step") == args.max_steps]
    final = eval_metrics(evals[-1] if evals else trainer.evaluate())  # the last step is an eval step when eval_every divides it
    trainer.save_model(output_dir)
    result = {
        "beta": args.beta, "learning_rate": args.learning_rate, "max_steps": args.max_steps,
        "train_pairs": len(train_rows), "eval_pairs": len(eval_rows),
        "eval_batch_size": config.per_device_eval_batch_size, "torch_threads": torch.get_num_threads(),
        "trl": version("trl"), "precompute_ref_log_probs": args.precompute_ref,
        **{f"initial_{k}": v for k, v in initial.items()}, **final,
        "train_seconds": train_seconds, "seconds": time.perf_counter() - started,
        "first_step_time": clock.first_step_time, **clock.steady(args.batch_size, accumulation),
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
