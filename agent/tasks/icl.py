"""In-context learning of linear functions (docs/ovq.md section 9).

Each function f has its own id and y = b + a * P x with integers 0 < a < 5, 0 < b < 5 and P a
permutation of the entries ((P x)[i] = x[perm[i]]). Examples of all functions are interleaved:

    f3: 1 4 2 -> 7 11 6     <- the y part is the answer span
    f41: 0 2 2 -> 3 7 7

Accuracy is reported per example index within its function (meta["examples"][k]["index"]).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import Example, Task, check_positive, register

A_RANGE = B_RANGE = (1, 4)  # 0 < a < 5, 0 < b < 5


@dataclass(frozen=True)
class ICLConfig:
    num_functions: int = 4
    examples_per_function: int = 8
    dim: int = 3  # length of x and y
    x_max: int = 9  # entries of x uniform in [0, x_max]
    max_id: int = 99  # function ids distinct in [0, max_id]

    def __post_init__(self) -> None:
        for name in ("num_functions", "examples_per_function", "dim"):
            check_positive(name, getattr(self, name))
        check_positive("x_max", self.x_max, minimum=0)
        check_positive("max_id", self.max_id, minimum=0)
        if self.max_id + 1 < self.num_functions:
            raise ValueError(f"{self.num_functions} functions need distinct ids, but max_id={self.max_id}")


PRESETS = {
    "default": ICLConfig(),
    "tiny": ICLConfig(num_functions=2, examples_per_function=4),  # tests and smoke runs
    "train_4k": ICLConfig(num_functions=8, examples_per_function=24),
    "test_long": ICLConfig(num_functions=16, examples_per_function=64),
}


def apply(function: dict, x: list[int]) -> list[int]:
    return [function["b"] + function["a"] * x[p] for p in function["perm"]]


def generate(config: ICLConfig, seed: int) -> Example:
    """One ICL sequence. meta["functions"]: id, a, b, perm. meta["examples"]: per line, function id,
    index (how many examples of that function came before), x, y and the span of y."""
    rng = random.Random(seed)
    functions = []
    for fid in rng.sample(range(config.max_id + 1), config.num_functions):
        perm = list(range(config.dim))
        rng.shuffle(perm)
        functions.append({"id": fid, "a": rng.randint(*A_RANGE), "b": rng.randint(*B_RANGE), "perm": perm})

    order = [f for f in range(config.num_functions) for _ in range(config.examples_per_function)]
    rng.shuffle(order)
    shown = [0] * config.num_functions
    parts, spans, examples, cur = [], [], [], 0
    for f in order:
        x = [rng.randint(0, config.x_max) for _ in range(config.dim)]
        y = apply(functions[f], x)
        prefix = f"f{functions[f]['id']}: {' '.join(map(str, x))} -> "
        answer = " ".join(map(str, y))
        span = (cur + len(prefix), cur + len(prefix) + len(answer))
        parts.append(f"{prefix}{answer}\n")
        spans.append(span)
        examples.append(
            {"function": functions[f]["id"], "index": shown[f], "x": x, "y": y, "span": list(span)}
        )
        shown[f] += 1
        cur = span[1] + 1
    meta = {"task": "icl", "functions": functions, "examples": examples}
    return Example("".join(parts), tuple(spans), meta)


TASK = register(Task("icl", ICLConfig, generate, PRESETS))
