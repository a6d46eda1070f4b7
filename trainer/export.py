"""What a stage leaves in out_dir: the trained model as a Hugging Face checkpoint (or its PEFT
adapter), the tokenizer, run_config.json and summary.json, written aside and renamed in (never a cut
model file)."""
import os

from model.peft import save_peft
from trainer import fsdp, guard, outdir
from utils import peak_rss_mb, write_json


class Exports:
    """Mixed into Trainer: uses its accelerator, model, out_dir, run_config and check_weights()."""

    def save_model(self, out_dir: str, tokenizer=None) -> None:
        """An HF-format checkpoint (save_pretrained) plus the resolved run config."""
        self.check_weights("weights to save")
        state = self.full_state(self.model)  # a collective under FSDP / ZeRO-3: gathers the shards
        if self.accelerator.is_main_process:
            self.unwrap(self.model).save_pretrained(out_dir, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir)
            write_json(os.path.join(out_dir, "run_config.json"), self.run_config)
        # other ranks may read it next (train_rm.py reloads out_dir/best)
        self.accelerator.wait_for_everyone()

    def finish(self, tokenizer, peft: str, summary: dict) -> None:
        """The end of every stage: save_stage of the trained model. A collective under FSDP / ZeRO-3
        (the state dict is gathered); the main process writes."""
        self.check_weights("final weights")
        state = self.full_state(self.model) if peft == "none" else None
        if self.accelerator.is_main_process:
            print(save_stage(self.out_dir, self.unwrap(self.model), tokenizer, self.run_config, peft, summary,
                             state))
        self.accelerator.wait_for_everyone()

    def full_state(self, model) -> dict:
        """The model's full state dict for an HF checkpoint (gathered once under FSDP / ZeRO-3)."""
        if self.loop.fsdp:
            return fsdp.full_state_dict(model)
        return self.accelerator.get_state_dict(model)


def save_stage(out_dir: str, model, tokenizer, run_config: dict, peft: str, summary: dict,
               state_dict=None) -> str:
    """Write what a stage leaves in out_dir: the model as an HF checkpoint (peft != 'none':
    model/peft's save_peft, the adapter in out_dir/adapter and the merged model where the method
    merges), the tokenizer, run_config.json and summary.json (peak_rss_mb added). Returns a line
    saying what was written. Trainer.finish and the head-only reward model (trainer/rm.py) both end
    here."""
    tensors = state_dict.values() if state_dict is not None else model.parameters()
    if not guard.all_finite([t for t in tensors if t.is_floating_point()]):
        raise guard.NonFiniteError(f"{out_dir}: the weights to save hold NaN or inf; nothing was "
                                   "written (lower LR, or check the data)")
    with outdir.staged(out_dir) as staging:  # written aside, renamed in: never a cut model file
        if peft == "none":
            model.save_pretrained(staging, state_dict=state_dict)
            tokenizer.save_pretrained(staging)
            what = "HF checkpoint"
        else:
            what = save_peft(model, staging, tokenizer).replace(staging, out_dir)
        write_json(os.path.join(staging, "run_config.json"), run_config)
        summary = {**summary, "peak_rss_mb": peak_rss_mb()}
        write_json(os.path.join(staging, "summary.json"), summary)
    return f"wrote {out_dir}/ ({what}, run_config.json, summary.json)"
