"""The model card (model/README.md) every exported model carries, in the Hugging Face format.

Pure ring: the resolved config and the run's summary in, Markdown with YAML front matter out. What
it holds is what reproduces and describes the run; never an environment value or secret (it reads
no environment), and never a local absolute path: a local model or data path shows as its last
folder or file name only, and the command reruns the config.yaml written next to model/.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from dpo_ray.config import Config
from dpo_ray.paths import is_remote, looks_like_hub_id

PAPERS = {  # loss.type -> the paper it follows (../shared/DPO-LOSSES.md)
    "sigmoid": "DPO, Rafailov et al. 2023, arXiv:2305.18290", "hinge": "SLiC, arXiv:2305.10425; RSO, arXiv:2309.06657",
    "ipo": "IPO, arXiv:2310.12036", "exo_pair": "EXO, arXiv:2402.00856", "nca_pair": "NCA, arXiv:2402.05369",
    "robust": "Robust DPO, arXiv:2403.00409", "bco_pair": "BCO, arXiv:2404.04656", "sppo_hard": "SPPO, arXiv:2405.00675",
    "aot": "AOT, arXiv:2406.05882", "aot_unpaired": "AOT, arXiv:2406.05882", "apo_zero": "APO, arXiv:2408.06266",
    "apo_down": "APO, arXiv:2408.06266", "discopop": "DiscoPOP, arXiv:2406.08414",
    "sigmoid_norm": "length-normalised DPO (Tulu 3, arXiv:2411.15124)", "sft": "NLL term of RPO, arXiv:2404.19733",
    "simpo": "SimPO, arXiv:2405.14734", "orpo": "ORPO, arXiv:2403.07691", "cpo": "CPO, arXiv:2401.08417",
}
EVAL_COLUMNS = ("loss", "rewards/accuracies", "rewards/margins", "num_pairs")


def is_hub_id(path: str) -> bool:
    """A hub repo id, not a local folder that happens to look like one (``outputs/model``)."""
    return looks_like_hub_id(path) and not Path(path).exists()


def shown_path(path: str) -> str:
    """How a model or data path appears on the card: a hub id or URI as is, a local path by its name."""
    return path if is_hub_id(path) or is_remote(path) else f"a local {'folder' if Path(path).is_dir() else 'file'} ({Path(path).name})"


def base_model_license(name_or_path: str) -> str | None:
    """The ``license`` of the base model's own card, where one is on disk (a local folder, or the
    hub cache's copy of a hub model's README.md); None when it is not known."""
    card: Path | None = Path(name_or_path) / "README.md"
    if is_hub_id(name_or_path):
        from huggingface_hub import try_to_load_from_cache  # no network: the cache or nothing

        cached = try_to_load_from_cache(name_or_path, "README.md")
        card = Path(cached) if isinstance(cached, str) else None
    if card is None or not card.is_file():
        return None
    match = re.match(r"---\n(.*?)\n---", card.read_text(errors="replace"), re.S)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _sources(cfg: Config) -> list[tuple[str, str, float, bool]]:
    """(name, path, weight, held out) for each data source; one unnamed source without data.sources."""
    if cfg.data.sources:
        return [(s.name, s.path, s.weight, s.eval) for s in cfg.data.sources]
    return [("data", cfg.data.path, 1.0, False)]


def _dpo_ray_version() -> str:
    try:
        return version("dpo_ray")
    except PackageNotFoundError:  # a checkout run without pip install
        return "unknown"


def _eval_rows(summary: dict[str, Any], cfg: Config) -> list[str]:
    """The final eval metrics, all pairs and per source, as Markdown table rows."""
    prefixes = [("all", "eval/")] + [(s.name, f"eval/{s.name}/") for s in cfg.data.sources
                                     if f"eval/{s.name}/loss" in summary]
    rows = []
    for name, prefix in prefixes:
        cells = [f"{summary[prefix + c]:.4g}" if isinstance(summary.get(prefix + c), (int, float)) else "" for c in EVAL_COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def model_card(cfg: Config, summary: dict[str, Any]) -> str:
    """model/README.md for the run ``cfg`` (resolved) that ended with ``summary`` (metrics.json's)."""
    m, lora, loss, t = cfg.model, cfg.model.lora, cfg.loss, cfg.train
    sources = _sources(cfg)
    meta: dict[str, Any] = {}
    if is_hub_id(m.name_or_path):
        meta["base_model"] = m.name_or_path
    meta["library_name"] = "peft" if lora.r > 0 and lora.export == "adapter" else "transformers"
    meta["tags"] = ["dpo", "dpo_ray", *loss.type]
    if license_ := base_model_license(m.name_or_path):
        meta["license"] = license_
    if hub_data := [path for _, path, _, _ in sources if is_hub_id(path)]:
        meta["datasets"] = hub_data
    kind = ("a LoRA adapter" if meta["library_name"] == "peft" else "a LoRA fine-tune merged into the base weights"
            if lora.r > 0 else "a full fine-tune")
    losses = ", ".join(f"`{name}` x {w:g} ({PAPERS[name]})" for name, w in zip(loss.type, loss.loss_weights()))
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        "# DPO fine-tune trained with dpo_ray", "",
        f"This model is {kind} of {('`' + m.name_or_path + '`') if is_hub_id(m.name_or_path) else shown_path(m.name_or_path)}, "
        "trained on preference pairs with dpo_ray.", "",
        "## Training", "",
        f"- loss: {losses}; beta {loss.beta:g}",
        f"- learning rate {t.learning_rate:g} ({t.lr_scheduler} schedule), batch {t.batch_size} pairs, "
        f"{summary.get('train/steps', 0):.0f} steps, {summary.get('train/pairs_seen', 0):.0f} pairs seen, "
        f"stopped by {summary.get('stop_reason', 'unknown')}",
        *([f"- LoRA r {lora.r}, alpha {lora.alpha:g}, on {', '.join(lora.target_modules)}"] if lora.r > 0 else []),
        f"- {summary.get('perf/num_workers', t.num_workers):.0f} workers, DeepSpeed ZeRO stage {t.resolved_zero_stage()}, "
        f"max length {cfg.data.max_length} tokens",
        "- data:", *[f"  - `{name}`: {shown_path(path)}, weight {weight:g}{', held out for evaluation' if held else ''}"
                     for name, path, weight, held in sources],
        "", "## Evaluation (held-out pairs, at the last step)", "",
        "| pairs | " + " | ".join(EVAL_COLUMNS) + " |", "|---" * (len(EVAL_COLUMNS) + 1) + "|", *_eval_rows(summary, cfg), "",
        "`rewards/accuracies`: the share of pairs whose chosen reward beat the rejected one (TRL's name).", "",
        "## Reproduce", "",
        f"Trained with dpo_ray {_dpo_ray_version()}. The run's folder holds the resolved `config.yaml` next to `model/`:",
        "", "```", "python pipelines/dpo.py --config config.yaml", "```", "",
    ]
    return "\n".join(lines)
