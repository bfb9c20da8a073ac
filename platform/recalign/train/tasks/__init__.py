"""Training tasks: what varies between model families behind the one trainer."""

from recalign.train.tasks.base import Task, get_task, task_of, with_task_defaults

__all__ = ["Task", "get_task", "task_of", "with_task_defaults"]
