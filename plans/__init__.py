"""plan.md files: parse, validate, substitute variables, expand foreach.

The package is pure: text and data in, typed results out. Only
``load_plan`` and ``read_foreach_items`` (in ``plans.files``) read files.
The format is described in PLAN_FORMAT.md; this package is its reference
implementation.
"""

from llmo.plans.expand import (
    batch_name,
    chain_commands,
    expand_foreach,
    expanded_dependencies,
    item_names,
    items_from_json,
    resolve_task,
    safe_name,
)
from llmo.plans.files import (
    load_plan,
    outside_roots,
    read_confined,
    read_foreach_items,
    split_foreach,
)
from llmo.plans.goal import resolve_goal
from llmo.plans.graph import dependency_levels, dependents_of, task_edges
from llmo.plans.model import (
    BUILTIN_VARIABLES,
    DEFAULT_VRAM_MB,
    EXECUTORS,
    META_COMMANDS,
    PRIORITIES,
    TASK_CLASSES,
    ForeachError,
    Goal,
    Plan,
    PlanError,
    Problem,
    Task,
    has_errors,
    split_problems,
)
from llmo.plans.parser import parse_plan
from llmo.plans.variables import (
    builtin_variables,
    config_llm_cache,
    config_placeholders,
    config_priority,
    config_run_mode,
    config_variables,
    placeholders,
    run_variables,
    substitute,
    undefined_placeholders,
)

__all__ = [
    "BUILTIN_VARIABLES",
    "DEFAULT_VRAM_MB",
    "EXECUTORS",
    "META_COMMANDS",
    "PRIORITIES",
    "TASK_CLASSES",
    "ForeachError",
    "Goal",
    "Plan",
    "PlanError",
    "Problem",
    "Task",
    "batch_name",
    "builtin_variables",
    "chain_commands",
    "config_llm_cache",
    "config_placeholders",
    "config_priority",
    "config_run_mode",
    "config_variables",
    "dependency_levels",
    "dependents_of",
    "expand_foreach",
    "expanded_dependencies",
    "has_errors",
    "item_names",
    "items_from_json",
    "load_plan",
    "outside_roots",
    "parse_plan",
    "placeholders",
    "read_confined",
    "read_foreach_items",
    "resolve_goal",
    "resolve_task",
    "run_variables",
    "safe_name",
    "split_foreach",
    "split_problems",
    "substitute",
    "task_edges",
    "undefined_placeholders",
]
