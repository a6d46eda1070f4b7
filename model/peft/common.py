"""Small pieces every method file shares: the task names this repo uses, mapped to peft's."""
from peft import TaskType

from utils import ConfigError

# 'reward': reward model or PPO critic
TASKS = {"causal": TaskType.CAUSAL_LM, "reward": TaskType.SEQ_CLS}


def peft_task_type(task: str) -> TaskType:
    if task not in TASKS:
        raise ConfigError(f"task={task!r}: expected one of {sorted(TASKS)}")
    return TASKS[task]
