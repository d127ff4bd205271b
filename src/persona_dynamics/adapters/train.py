"""Train LoRA persona adapters with trl's SFT trainer (loss on the persona's turns only).

Each adapter is a standard PEFT directory `<output_root>/adapters/<run>/<name>/` (adapter weights,
adapter_config.json, the tokenizer it was trained with) plus `card.json` (base model, revision,
data digest, hyper-parameters, losses) and `heldout.jsonl` (survey items kept out of training).
A directory appears only when training finished (built under a temporary name, then renamed), and
an adapter whose card already matches its base, data and hyper-parameters is not trained again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.adapters.data import Example, PersonaData, load_data
from persona_dynamics.chat import encode
from persona_dynamics.config import Adapters, AdapterTraining, Checkpoint, Study
from persona_dynamics.errors import Interrupted, PersonaDynamicsError, require
from persona_dynamics.files import write_text
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.models import load_model, load_tokenizer, pick_device

log = logging.getLogger(__name__)

CARD = "card.json"
HELDOUT = "heldout.jsonl"
PROBE = 64  # training examples whose completion loss is measured before and after training


def adapter_dir(cfg: Study, name: str) -> Path:
    """Where adapter `name` of this run lives: `<output_root>/adapters/<run>/<name>`."""
    return cfg.path("adapters") / name


def hyperparameters(spec: AdapterTraining) -> dict:
    """The settings that change the weights (everything but name, data files and base)."""
    return spec.model_dump(mode="json", exclude={"name", "data", "base"})


def read_card(path: Path) -> dict:
    """An adapter's card, or an error naming the directory when it has none."""
    card = Path(path) / CARD
    if not card.exists():
        raise PersonaDynamicsError(f"{path}: not a trained persona adapter (no {CARD})")
    return json.loads(card.read_text(encoding="utf-8"))


def _base(ckpt: Checkpoint) -> dict:
    return {"label": ckpt.label, "model": ckpt.model, "revision": ckpt.revision}


def _current(out: Path, base: Checkpoint, digest: str, hp: dict) -> bool:
    if not (out / CARD).exists():
        return False
    card = read_card(out)
    return (
        {k: card["base"][k] for k in ("label", "model", "revision")} == _base(base)
        and card["data"]["digest"] == digest
        and card["hyperparameters"] == hp
    )


def sft_trainer(model, tok, data: PersonaData, spec: AdapterTraining, opts: Adapters, device, work):
    """trl's SFT trainer over prompt-completion chat records, LoRA on the chosen projections."""
    import torch

    peft = require("train", "peft")
    trl = require("train", "trl")
    datasets = require("train", "datasets")
    records = [ex.to_record() for ex in data.examples]
    lora = peft.LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
    )
    half = model.dtype == torch.bfloat16
    args = trl.SFTConfig(
        output_dir=str(work),
        completion_only_loss=True,
        max_length=spec.max_length,
        packing=False,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        activation_checkpointing=opts.activation_checkpointing,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        warmup_steps=spec.warmup if spec.warmup < 1 else int(spec.warmup),
        lr_scheduler_type="linear",
        logging_steps=0.05,
        save_strategy="no",
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=half,
        fp16=False,
        use_cpu=device == "cpu",
    )
    return trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=tok,
        peft_config=lora,
    )


def completion_loss(model, tok, examples: list[Example]) -> float:
    """Mean negative log-likelihood per completion token (the response span), in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            enc = encode(tok, list(ex.prompt), ex.completion)
            ids = torch.tensor([enc.input_ids], device=device)
            logits = model(input_ids=ids).logits[0, enc.start - 1 : enc.end - 1].float()
            target = ids[0, enc.start : enc.end]
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            count += enc.n_response
    model.train(was_training)
    return total / count


def fit(model, tok, data: PersonaData, spec: AdapterTraining, opts: Adapters, device, work):
    """Train LoRA on the examples; return the PEFT model and its losses (probe before/after)."""
    probe = data.examples[:PROBE]
    before = completion_loss(model, tok, probe)
    trainer = sft_trainer(model, tok, data, spec, opts, device, work)
    result = trainer.train()
    after = completion_loss(trainer.model, tok, probe)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    losses = {
        "final": logged[-1] if logged else None,
        "train_mean": result.training_loss,
        "probe_before": before,
        "probe_after": after,
        "n_probe": len(probe),
        "steps": trainer.state.global_step,
    }
    return trainer.model, losses


def train_adapter(cfg: Study, spec: AdapterTraining) -> Path:
    """Train one adapter on its base checkpoint; return its directory (skipped when current)."""
    base = cfg.checkpoint(spec.base or cfg.reference_label)
    if base.adapter:
        raise PersonaDynamicsError(
            f"adapters.training '{spec.name}': base checkpoint '{base.label}' already has an "
            "adapter; train on plain weights"
        )
    data = load_data(spec.data, spec.holdout, spec.seed)
    hp = hyperparameters(spec)
    out = adapter_dir(cfg, spec.name)
    if _current(out, base, data.digest, hp):
        log.info("adapter %s is up to date in %s; not retraining", spec.name, out)
        return out
    opts = cfg.adapters or Adapters()
    device = pick_device(opts.device)
    ref = cfg.checkpoint(cfg.reference_label)
    tok = load_tokenizer(ref.model, ref.revision)  # the chat format every stage reads text with
    loaded = load_model(base, device, opts.dtype)  # at one resolved commit, recorded below
    model = loaded.model
    log.info(
        "training adapter %s on %s: %d examples from %d conversations (%d personas), %d held out",
        spec.name,
        base.label,
        len(data.examples),
        data.n_conversations,
        len(data.personas),
        len(data.heldout),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        adapted, losses = fit(model, tok, data, spec, opts, device, tmp / "trainer")
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        adapted.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        card = {
            "adapter": spec.name,
            "base": {**_base(base), "commit": loaded.commit},
            "tokenizer": {"model": ref.model, "revision": ref.revision},
            "data": {
                "files": [str(p) for p in spec.data],
                "digest": data.digest,
                "personas": data.personas,
                "n_conversations": data.n_conversations,
                "n_examples": len(data.examples),
                "n_heldout": len(data.heldout),
            },
            "hyperparameters": hp,
            "loss": losses,
            "device": device,
            "dtype": str(model.dtype).removeprefix("torch."),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_text(tmp / CARD, json.dumps(card, indent=2) + "\n")
        write_text(
            tmp / HELDOUT, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.heldout)
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "adapter %s: probe loss %.4f -> %.4f; saved to %s",
        spec.name,
        losses["probe_before"],
        losses["probe_after"],
        out,
    )
    return out


def _versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {
        "persona_dynamics": __version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def selected(cfg: Study, names: list[str] | None = None) -> list[AdapterTraining]:
    """The config's adapters, or the named ones (in config order); unknown names are errors."""
    specs = cfg.adapters.training if cfg.adapters else []
    if not specs:
        raise PersonaDynamicsError("the config has no [[adapters.training]] entries")
    known = [s.name for s in specs]
    missing = [n for n in names or [] if n not in known]
    if missing:
        raise PersonaDynamicsError(f"unknown adapter(s): {', '.join(missing)} (known: {known})")
    return [s for s in specs if not names or s.name in names]


def adapter_checkpoint(cfg: Study, name: str) -> Checkpoint:
    """A trained adapter as a checkpoint: its base's weights plus the adapter directory."""
    spec = selected(cfg, [name])[0]
    base = cfg.checkpoint(spec.base or cfg.reference_label)
    return base.model_copy(update={"label": name, "adapter": str(adapter_dir(cfg, name))})


def run_adapters(cfg: Study, names: list[str] | None = None) -> Path:
    """Train every adapter of the config (or the named ones); return the adapters directory.

    Ctrl-C keeps the adapters already saved (each is written whole, then renamed into place) and
    says which one was in training: a re-run trains only what is missing.
    """
    specs, out = selected(cfg, names), cfg.path("adapters")
    with hold(lock_file(out, "adapters")):
        for k, spec in enumerate(specs):
            try:
                train_adapter(cfg, spec)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"{k} of {len(specs)} adapters trained, kept in {out}; "
                    f"'{spec.name}' was in training and starts over"
                ) from None
    return out
