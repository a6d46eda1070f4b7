"""Training loops: `base.Trainer` owns the loop; `sft`, `rm` and `ppo` define what one step computes."""
